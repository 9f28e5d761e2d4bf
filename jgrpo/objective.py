"""The unified GRPO-style objective (Eq. 1) and ``jgrpo.loss``."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify
from jax.typing import ArrayLike

from jgrpo import fused as fused_path
from jgrpo.advantages import centred_advantages, combine_rewards
from jgrpo.batch import GroupBatch, as_array, check_inputs, checkify_inputs
from jgrpo.methods import Advantage, MethodSpec, Objective, Regularizer, Scale
from jgrpo.ratios import masked, surrogate, token_log_ratio
from jgrpo.regularizers import kl_estimate, regularizer_terms
from jgrpo.weights import high_entropy_mask, policy_weights


class Terms(NamedTuple):
    """Every per-token piece of Eq. 1, so that any part of J can be taken apart.

    J_b = sum_{i,t} alpha * term - beta * sum_{i,t} reg_weight * reg_value + bonus  (per prompt b).

    Attributes:
      advantages: ``[..., G]`` A_i (Eq. 2; scales such as 1/sigma are in alpha).
      alpha: ``[..., G, T]`` policy token weights.
      term: ``[..., G, T]`` surrogate terms min(sA, clip(s)A) (or the method's form).
      ratio: ``[..., G, T]`` s_{i,t} values.
      clipped_high, clipped_low: ``[..., G, T]`` bool clip activity.
      reg_value, reg_weight: ``[..., G, T]`` the regularizer's per-token value and weight.
      bonus: ``[]`` TRL's entropy bonus entropy_coef * mean entropy (0 when off), added to every J_b.
    """

    advantages: jax.Array
    alpha: jax.Array
    term: jax.Array
    ratio: jax.Array
    clipped_high: jax.Array
    clipped_low: jax.Array
    reg_value: jax.Array
    reg_weight: jax.Array
    bonus: Any = 0.0


def _compute_dtype(logp):
    return jnp.promote_types(jnp.result_type(logp), jnp.float32)


def validate(spec: MethodSpec, logp: ArrayLike, batch: GroupBatch) -> None:
    """Trace-time checks of ``logp`` and ``batch`` for ``spec`` (see :func:`jgrpo.batch.check_inputs`)."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a jgrpo.MethodSpec (from jgrpo.methods.get), got {type(spec).__name__}")
    if not isinstance(batch, GroupBatch):
        raise TypeError(f"batch must be a jgrpo.GroupBatch, got {type(batch).__name__}")
    std = spec.scale == Scale.GROUP_STD and not spec.single_sample_unit
    rloo = spec.advantage == Advantage.RLOO and not spec.single_sample_unit
    if rloo:
        reason = "rloo's leave-one-out baseline mean_{j != i} r_j needs another completion in the group"
    else:
        reason = "this method divides by a group reward std"
    uses_reg = spec.regularizer != Regularizer.NONE and spec.beta > 0
    check_inputs(
        logp,
        batch,
        need_ref=uses_reg and spec.regularizer in (Regularizer.KL, Regularizer.KL_IMPORTANCE),
        need_tokens=spec.gtpo_conflicts or spec.prefix_debias,
        need_entropy=spec.needs_entropy,
        min_group=2 if (std or rloo) and batch.advantages is None else 1,
        min_group_reason=reason,
    )


def advantages(spec: MethodSpec, batch: GroupBatch, dtype=jnp.float32) -> jax.Array:
    """A_i ``[..., G]``: ``batch.advantages`` if given, else Eq. 2 (see :func:`centred_advantages`)."""
    if batch.advantages is not None:
        return jnp.asarray(batch.advantages, dtype)
    rewards = combine_rewards(spec, jnp.asarray(batch.rewards, dtype), jnp.ndim(batch.mask) - 1)
    return centred_advantages(spec, rewards)


def _prepare(spec: MethodSpec, logp: ArrayLike, batch: GroupBatch) -> tuple[jax.Array, GroupBatch]:
    logp = as_array("logp", logp)
    validate(spec, logp, batch)
    dtype = _compute_dtype(logp)
    mask = jnp.asarray(batch.mask)
    rewards = combine_rewards(spec, jnp.asarray(batch.rewards, dtype), mask.ndim - 1)
    batch = GroupBatch(
        mask=mask,
        logp_old=jnp.asarray(batch.logp_old).astype(dtype),
        rewards=rewards,
        logp_ref=None if batch.logp_ref is None else jnp.asarray(batch.logp_ref),
        tokens=None if batch.tokens is None else jnp.asarray(batch.tokens),
        entropy=None if batch.entropy is None else jnp.asarray(batch.entropy, dtype),
        advantages=batch.advantages,
    )
    return jnp.asarray(logp).astype(dtype), batch


def entropy_bonus(spec: MethodSpec, batch: GroupBatch, dtype=jnp.float32) -> jax.Array:
    """TRL's entropy bonus: entropy_coef * mean entropy over the batch's completion tokens ``[]``.

    The tokens are those kept by ``top_entropy_quantile`` (all completion tokens when it is 1),
    as TRL's ``effective_mask``; the mean runs over the whole batch, whatever the aggregation.
    """
    if spec.entropy_coef == 0:
        return jnp.zeros((), dtype)
    keep = high_entropy_mask(spec, batch.entropy, batch.mask).astype(dtype)
    h = masked(jnp.asarray(batch.entropy, dtype), keep)
    return spec.entropy_coef * jnp.sum(h) / jnp.maximum(jnp.sum(keep), 1.0)


def terms(spec: MethodSpec, logp: ArrayLike, batch: GroupBatch) -> Terms:
    """All per-token pieces of Eq. 1 for the current policy's ``logp`` ``[..., G, T]``.

    Log-probabilities of any float dtype are reduced in float32 (float64 stays float64).
    """
    return _terms(spec, *_prepare(spec, logp, batch))


def _terms(spec: MethodSpec, logp: jax.Array, batch: GroupBatch) -> Terms:
    dtype = logp.dtype
    mask, logp_old = batch.mask, batch.logp_old
    # batch.rewards are combined already (one per completion).
    adv = centred_advantages(spec, batch.rewards) if batch.advantages is None else jnp.asarray(batch.advantages, dtype)
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
        bonus=entropy_bonus(spec, batch, dtype),
    )


def objective_parts(t: Terms) -> tuple[jax.Array, jax.Array]:
    """``(sum_{i,t} alpha * term, sum_{i,t} reg_weight * reg_value)`` per prompt ``[...]``: Eq. 1's two sums."""
    return jnp.sum(t.alpha * t.term, axis=(-2, -1)), jnp.sum(t.reg_weight * t.reg_value, axis=(-2, -1))


def objective_per_prompt(spec: MethodSpec, t: Terms) -> jax.Array:
    """J_b ``[...]`` of Eq. 1 from the per-token pieces."""
    policy, reg = objective_parts(t)
    return policy - spec.beta * reg + t.bonus


def _masked_mean(x, mask):
    m = mask.astype(x.dtype)
    return jnp.sum(masked(x, mask)) / jnp.maximum(jnp.sum(m), 1.0)


def clamp_active(spec: MethodSpec, logp: jax.Array, batch: GroupBatch) -> jax.Array:
    """``[..., G, T]`` bool: a documented clamp is active on this completion token (zero gradient there).

    The log-ratio clamp [log_ratio_min, log_ratio_max] (of the token log-ratio, or of the sequence
    log-ratio for ``gspo``/``sequence``) and, with a KL in use, the k3 clamp |logp_ref - logp| > c.
    """
    mask = jnp.asarray(batch.mask)
    x = token_log_ratio(logp, batch.logp_old, mask)
    if spec.objective == Objective.SEQUENCE:
        x = jnp.broadcast_to(jnp.sum(x, axis=-1, keepdims=True), x.shape)
    elif spec.objective == Objective.GSPO:
        n = jnp.maximum(jnp.sum(mask.astype(x.dtype), axis=-1, keepdims=True), 1.0)
        x = jnp.broadcast_to(jnp.sum(x, axis=-1, keepdims=True) / n, x.shape)
    active = (x < spec.log_ratio_min) | (x > spec.log_ratio_max)
    uses_kl = spec.regularizer in (Regularizer.KL, Regularizer.KL_IMPORTANCE) and spec.beta > 0
    if uses_kl and batch.logp_ref is not None and spec.kl.value == "k3" and spec.kl_log_ratio_clamp is not None:
        xr = masked(jnp.asarray(batch.logp_ref, logp.dtype), mask) - masked(logp, mask)
        active = active | (jnp.abs(xr) > spec.kl_log_ratio_clamp)
    return active & mask.astype(bool)


def loss(
    spec: MethodSpec, logp: ArrayLike, batch: GroupBatch, *, checked: bool = False, fused: bool | None = None
) -> tuple[jax.Array, dict]:
    """The loss -J of Eq. 1, averaged over the prompts of the batch.

    Implements Eq. (1) of arXiv 2601.05002 with the pieces chosen by ``spec``
    (Table 1): J = sum_i sum_t alpha_{i,t} min(s A_i, clip(s) A_i) - beta R.
    Pure and jit-able; pass ``spec`` as a static argument
    (``jax.jit(jgrpo.loss, static_argnums=0)``).

    Args:
      spec: a :class:`jgrpo.MethodSpec` (``jgrpo.methods.get(name)``).
      logp: ``[..., G, T]`` log pi_theta of the sampled tokens (any float dtype).
      batch: a :class:`jgrpo.GroupBatch` with matching shapes.
      checked: also emit ``checkify`` checks of the values (mask 0/1, finite
        log-probabilities <= 0, finite entropies and rewards); use through
        :func:`checked_loss`, which functionalises them (under jit too).
      fused: ``None`` (default): the fused path (:mod:`jgrpo.fused`: one pass over the
        ``[..., G, T]`` inputs for the value and aux, one for the gradient, a hand-written VJP)
        wherever :func:`jgrpo.fused.supports` allows, autodiff elsewhere; ``False``: always
        autodiff (the reference; also the path for forward-mode ``jax.jvp`` / ``jax.hessian``,
        which a ``custom_vjp`` does not support; ``jax.grad`` of a gradient, e.g. Hessian-vector
        products, works on both paths and agrees); ``True``: the fused path or a ValueError saying
        why it does not apply. Static (``static_argnames="fused"`` under jit).

    Returns:
      ``(loss, aux)``: ``loss`` a scalar (float32, or float64 for float64 input);
      ``aux`` a dict with ``objective`` [...] (J per prompt), ``policy`` and
      ``regularizer`` [...] (the two parts of J), ``bonus`` (TRL's entropy bonus),
      ``advantages`` [..., G], ``omega`` [..., G] (Omega_i = sum_t alpha_{i,t},
      Appendix A), ``clip_frac_high`` / ``clip_frac_low`` (fractions of completion
      tokens whose clip is active above / below), ``clamp_frac`` (fraction of
      completion tokens where a documented clamp is active: log-ratio beyond
      [log_ratio_min, log_ratio_max] or KL log-ratio beyond kl_log_ratio_clamp),
      ``ratio_min`` / ``ratio_mean`` / ``ratio_max`` (over completion tokens), ``kl``
      (mean per-token estimate of the spec's KL estimator when logp_ref is given,
      else 0) and ``finite`` (whether loss and terms are finite).

    Raises:
      TypeError, ValueError: see :func:`validate`; with concrete inputs also bad
        values (a mask other than 0/1, NaN/inf or positive log-probabilities on
        completion tokens, non-finite rewards); ``fused=True`` for a spec the fused
        path does not support.

    Note:
      Sign: ``loss`` = -J (to minimise). Padding (mask 0) never contributes,
      even if ``logp`` holds NaN there.
    """
    if fused not in (None, True, False):
        raise TypeError(f"fused must be None, True or False; got {fused!r}")
    if checked:
        checkify_inputs(jnp.asarray(as_array("logp", logp)), batch)
    logp, batch = _prepare(spec, logp, batch)
    if fused is not False:
        reason = fused_path.supports(spec, batch)
        if reason is None:
            return fused_path.loss(spec, logp, batch)
        if fused:
            raise ValueError(f"fused=True: the fused loss does not apply to method {spec.name!r}: {reason}")
    t = _terms(spec, logp, batch)
    mask = batch.mask
    policy, reg = objective_parts(t)
    objective = policy - spec.beta * reg + t.bonus
    value = -jnp.mean(objective)
    m = mask.astype(bool)
    dtype = t.ratio.dtype
    big = jnp.asarray(jnp.inf, dtype)
    if batch.logp_ref is not None:
        kl_tokens = kl_estimate(spec, logp, jnp.asarray(batch.logp_ref).astype(dtype), mask)
        kl = _masked_mean(kl_tokens, mask)
    else:
        kl = jnp.zeros((), dtype)
    aux = {
        "objective": objective,
        "policy": policy,
        "regularizer": reg,
        "bonus": jnp.asarray(t.bonus, dtype),
        "advantages": t.advantages,
        "omega": jnp.sum(t.alpha, axis=-1),
        "clip_frac_high": _masked_mean(t.clipped_high.astype(dtype), mask),
        "clip_frac_low": _masked_mean(t.clipped_low.astype(dtype), mask),
        "clamp_frac": _masked_mean(clamp_active(spec, logp, batch).astype(dtype), mask),
        "ratio_min": jnp.min(jnp.where(m, t.ratio, big)),
        "ratio_mean": _masked_mean(t.ratio, mask),
        "ratio_max": jnp.max(jnp.where(m, t.ratio, -big)),
        "kl": jax.lax.stop_gradient(kl),
        "finite": jnp.isfinite(value) & jnp.all(jnp.isfinite(t.term)),
    }
    aux = {k: jax.lax.stop_gradient(v) if k != "objective" else v for k, v in aux.items()}
    return value, aux


def checked_loss(spec: MethodSpec, logp: ArrayLike, batch: GroupBatch) -> tuple[checkify.Error, tuple[jax.Array, dict]]:
    """:func:`loss` with its value checks functionalised by ``jax.experimental.checkify``.

    Returns ``(error, (loss, aux))``; ``error.throw()`` raises a ``JaxRuntimeError`` naming the
    first failed check (NaN/inf or positive log-probabilities on completion tokens, a mask
    other than 0/1, non-finite rewards or entropies) instead of a bare ``nan`` loss. Works
    under ``jax.jit(jgrpo.checked_loss, static_argnums=0)``.
    """
    f = checkify.checkify(functools.partial(loss, spec, checked=True), errors=checkify.user_checks)
    return f(logp, batch)
