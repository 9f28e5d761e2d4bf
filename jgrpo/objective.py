"""The unified GRPO-style objective (Eq. 1) and ``jgrpo.loss``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrpo.advantages import centred_advantages
from jgrpo.batch import GroupBatch, check_inputs
from jgrpo.methods import Advantage, MethodSpec, Regularizer, Scale
from jgrpo.ratios import masked, surrogate, token_log_ratio
from jgrpo.regularizers import kl_estimate, regularizer_terms
from jgrpo.weights import policy_weights


class Terms(NamedTuple):
    """Every per-token piece of Eq. 1, so that any part of J can be taken apart.

    J_b = sum_{i,t} alpha * term - beta * sum_{i,t} reg_weight * reg_value  (per prompt b).

    Attributes:
      advantages: ``[..., G]`` A_i (Eq. 2; scales such as 1/sigma are in alpha).
      alpha: ``[..., G, T]`` policy token weights.
      term: ``[..., G, T]`` surrogate terms min(sA, clip(s)A) (or the method's form).
      ratio: ``[..., G, T]`` s_{i,t} values.
      clipped_high, clipped_low: ``[..., G, T]`` bool clip activity.
      reg_value, reg_weight: ``[..., G, T]`` the regularizer's per-token value and weight.
    """

    advantages: jax.Array
    alpha: jax.Array
    term: jax.Array
    ratio: jax.Array
    clipped_high: jax.Array
    clipped_low: jax.Array
    reg_value: jax.Array
    reg_weight: jax.Array


def _compute_dtype(logp):
    return jnp.promote_types(jnp.result_type(logp), jnp.float32)


def validate(spec: MethodSpec, logp, batch: GroupBatch) -> None:
    """Trace-time checks of ``logp`` and ``batch`` for ``spec`` (see :func:`jgrpo.batch.check_inputs`)."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a jgrpo.MethodSpec (from jgrpo.methods.get), got {type(spec).__name__}")
    if not isinstance(batch, GroupBatch):
        raise TypeError(f"batch must be a jgrpo.GroupBatch, got {type(batch).__name__}")
    needs_two = (spec.scale == Scale.GROUP_STD or spec.advantage == Advantage.RLOO) and not spec.single_sample_unit
    uses_reg = spec.regularizer != Regularizer.NONE and spec.beta > 0
    check_inputs(
        logp,
        batch,
        need_ref=uses_reg and spec.regularizer in (Regularizer.KL, Regularizer.KL_IMPORTANCE),
        need_tokens=spec.gtpo_conflicts or spec.prefix_debias,
        need_entropy=spec.entropy_threshold is not None or (uses_reg and spec.regularizer == Regularizer.GTPO_ENTROPY),
        min_group=2 if needs_two and batch.advantages is None else 1,
    )


def advantages(spec: MethodSpec, batch: GroupBatch, dtype=jnp.float32):
    """A_i ``[..., G]``: ``batch.advantages`` if given, else Eq. 2 (see :func:`centred_advantages`)."""
    if batch.advantages is not None:
        return jnp.asarray(batch.advantages, dtype)
    return centred_advantages(spec, jnp.asarray(batch.rewards, dtype))


def terms(spec: MethodSpec, logp, batch: GroupBatch) -> Terms:
    """All per-token pieces of Eq. 1 for the current policy's ``logp`` ``[..., G, T]``.

    Log-probabilities of any float dtype are reduced in float32 (float64 stays float64).
    """
    validate(spec, logp, batch)
    dtype = _compute_dtype(logp)
    logp = logp.astype(dtype)
    logp_old = jnp.asarray(batch.logp_old).astype(dtype)
    mask = jnp.asarray(batch.mask)
    batch = GroupBatch(
        mask=mask,
        logp_old=logp_old,
        rewards=jnp.asarray(batch.rewards, dtype),
        logp_ref=None if batch.logp_ref is None else jnp.asarray(batch.logp_ref),
        tokens=None if batch.tokens is None else jnp.asarray(batch.tokens),
        entropy=None if batch.entropy is None else jnp.asarray(batch.entropy, dtype),
        advantages=batch.advantages,
    )
    adv = advantages(spec, batch, dtype)
    sur = surrogate(spec, logp, logp_old, mask, adv)
    alpha = policy_weights(spec, batch, adv, jax.lax.stop_gradient(token_log_ratio(logp, logp_old, mask)))
    if spec.regularizer == Regularizer.NONE or spec.beta == 0:
        reg_value = reg_weight = jnp.zeros(mask.shape, dtype)
    else:
        reg_value, reg_weight = regularizer_terms(spec, logp, batch, adv)
    return Terms(
        advantages=adv,
        alpha=alpha.astype(dtype),
        term=sur.term,
        ratio=sur.ratio,
        clipped_high=sur.clipped_high,
        clipped_low=sur.clipped_low,
        reg_value=reg_value,
        reg_weight=reg_weight.astype(dtype),
    )


def objective_per_prompt(spec: MethodSpec, t: Terms):
    """J_b ``[...]`` of Eq. 1 from the per-token pieces."""
    policy = jnp.sum(t.alpha * t.term, axis=(-2, -1))
    reg = jnp.sum(t.reg_weight * t.reg_value, axis=(-2, -1))
    return policy - spec.beta * reg


def _masked_mean(x, mask):
    m = mask.astype(x.dtype)
    return jnp.sum(masked(x, mask)) / jnp.maximum(jnp.sum(m), 1.0)


def loss(spec: MethodSpec, logp, batch: GroupBatch):
    """The loss -J of Eq. 1, averaged over the prompts of the batch.

    Implements Eq. (1) of arXiv 2601.05002 with the pieces chosen by ``spec``
    (Table 1): J = sum_i sum_t alpha_{i,t} min(s A_i, clip(s) A_i) - beta R.
    Pure and jit-able; pass ``spec`` as a static argument
    (``jax.jit(jgrpo.loss, static_argnums=0)``).

    Args:
      spec: a :class:`jgrpo.MethodSpec` (``jgrpo.methods.get(name)``).
      logp: ``[..., G, T]`` log pi_theta of the sampled tokens (any float dtype).
      batch: a :class:`jgrpo.GroupBatch` with matching shapes.

    Returns:
      ``(loss, aux)``: ``loss`` a scalar (float32, or float64 for float64 input);
      ``aux`` a dict with ``objective`` [...] (J per prompt), ``policy`` and
      ``regularizer`` [...] (the two parts of J), ``advantages`` [..., G],
      ``omega`` [..., G] (Omega_i = sum_t alpha_{i,t}, Appendix A),
      ``clip_frac_high`` / ``clip_frac_low`` (fractions of completion tokens
      whose clip is active above / below), ``ratio_min`` / ``ratio_mean`` /
      ``ratio_max`` (over completion tokens), ``kl`` (mean per-token k3-style
      estimate of the spec's KL estimator when logp_ref is given, else 0) and
      ``finite`` (whether loss and terms are finite).

    Raises:
      TypeError, ValueError: see :func:`validate`.

    Note:
      Sign: ``loss`` = -J (to minimise). Padding (mask 0) never contributes,
      even if ``logp`` holds NaN there.
    """
    t = terms(spec, logp, batch)
    mask = jnp.asarray(batch.mask)
    policy = jnp.sum(t.alpha * t.term, axis=(-2, -1))
    reg = jnp.sum(t.reg_weight * t.reg_value, axis=(-2, -1))
    objective = policy - spec.beta * reg
    value = -jnp.mean(objective)
    m = mask.astype(bool)
    big = jnp.asarray(jnp.inf, t.ratio.dtype)
    if batch.logp_ref is not None:
        dtype = t.ratio.dtype
        kl_tokens = kl_estimate(spec, logp.astype(dtype), jnp.asarray(batch.logp_ref).astype(dtype), mask)
        kl = _masked_mean(kl_tokens, mask)
    else:
        kl = jnp.zeros((), t.ratio.dtype)
    aux = {
        "objective": objective,
        "policy": policy,
        "regularizer": reg,
        "advantages": t.advantages,
        "omega": jnp.sum(t.alpha, axis=-1),
        "clip_frac_high": _masked_mean(t.clipped_high.astype(t.ratio.dtype), mask),
        "clip_frac_low": _masked_mean(t.clipped_low.astype(t.ratio.dtype), mask),
        "ratio_min": jnp.min(jnp.where(m, t.ratio, big)),
        "ratio_mean": _masked_mean(t.ratio, mask),
        "ratio_max": jnp.max(jnp.where(m, t.ratio, -big)),
        "kl": jax.lax.stop_gradient(kl),
        "finite": jnp.isfinite(value) & jnp.all(jnp.isfinite(t.term)),
    }
    aux = {k: jax.lax.stop_gradient(v) if k != "objective" else v for k, v in aux.items()}
    return value, aux
