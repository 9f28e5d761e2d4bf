"""Prop. 4 / Appendix A: the loss is not a progress signal.

At the first inner step of a GRPO-style update the policy is π_old, every
ratio is 1, and the surrogate term of Eq. 1 is linear in A_i:
f_{i,t}(θ_old) = c_{i,t} A_i. With the effective weights ω̃_{i,t} = α_{i,t} c_{i,t}
and their per-completion sums

    Ω_i = Σ_t ω̃_{i,t}                                               (Appendix A)

the objective at the first step is

    J(θ_old) = Σ_i A_i Ω_i − β R(θ_old)                              (Prop. 4)
             = G · Cov_i(A, Ω) − β R(θ_old)      (since Σ_i A_i = 0),

with Cov the population covariance over the G completions of a group. Hence

- length-normalised weights (grpo: α = 1/(G|o_i|σ), so Ω_i = 1/(Gσ) for every
  i): J = −β R exactly — the policy part is 0 whatever the rewards;
- constant weights (dr_grpo: α = 1/G): J = (1/G) Σ_i A_i |o_i| − β R;
- in general (dapo: Ω_i = |o_i|/(σ Σ_j|o_j|); cppo's pruning; GTPO's λ; SAPO's
  sign-dependent temperature): J ∝ Cov(A, Ω), a length/weight statistic of
  the batch, not a measure of how good the policy is.

The factor c_{i,t} (∂f/∂A at ratio 1) is 1 for the clipped-ratio objectives
(ppo_clip, gspo, sequence, geo_mean; dual clip and the ratio cap are inactive
at s = 1), 2/τ_i for SAPO ((4/τ) sigmoid(0), τ = τ_pos if A_i > 0 else τ_neg),
and log π_old(y_{i,t}) for the objectives whose value is A log π (gpg, cispo:
sg[clip(1)] = 1, or min(1, cap) with TRL's absolute cap).

:func:`surrogate_vs_improvement` measures the consequence over a training run:
the correlation between the surrogate value at a step and the change of mean
reward that the step produced (a pooled time series: both series trend with
training, so prefer a cross-sectional test at a fixed θ_old, as
``experiments.loss_proxy`` does).

:func:`snis_gain` is a progress monitor that does work: a held-out,
self-normalised importance-sampling estimate of the expected-reward change
E_{π_θ}[r] − E_{π_old}[r] of an update (beyond the paper).

Note:
  Ω_i is computed here in closed form from the method's weights
  (:func:`jgrpo.weights.policy_weights` at ratio 1), not from ``jgrpo.loss``;
  the identity J = Σ_i A_i Ω_i − β R against ``jgrpo.loss(spec, logp_old,
  batch)`` is what the tests check. Ω_i = 0 for an empty completion, so
  "Ω constant in a group" needs every completion to be non-empty.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

import jgrpo
from jgrpo._validate import check_bool, check_min_rank, check_shape, check_static_int, is_concrete
from jgrpo.batch import value_problems
from jgrpo.methods import CispoClip, MethodSpec, Objective, Regularizer
from jgrpo.objective import validate
from jgrpo.policies import LogprobFn
from jgrpo.regularizers import regularizer_terms
from jgrpo.weights import policy_weights

__all__ = [
    "FirstStep",
    "ProxyStats",
    "SnisGain",
    "advantage_weight_covariance",
    "cumulative_weights",
    "effective_weights",
    "first_step_objective",
    "policy_snis_gain",
    "snis_gain",
    "surrogate_vs_improvement",
]


def _arrays(batch: jgrpo.GroupBatch) -> jgrpo.GroupBatch:
    """Every field as a jax array; log-probabilities in ≥ float32, rewards and advantages in float32."""
    arrays = jax.tree.map(jnp.asarray, batch)  # None fields stay None
    return arrays.replace(
        logp_old=arrays.logp_old.astype(jnp.promote_types(arrays.logp_old.dtype, jnp.float32)),
        rewards=arrays.rewards.astype(jnp.float32),
        advantages=None if arrays.advantages is None else arrays.advantages.astype(jnp.float32),
    )


def _first_step_factor(spec: MethodSpec, advantages, logp_old, mask):
    """c_{i,t} = ∂f_{i,t}/∂A_i at ratio 1, ``[..., G, T]`` (see the module docstring)."""
    m = mask.astype(logp_old.dtype)
    obj = spec.objective
    if obj in (Objective.PPO_CLIP, Objective.GSPO, Objective.SEQUENCE, Objective.GEO_MEAN):
        return m
    if obj == Objective.SAPO:
        tau = jnp.where(advantages > 0, spec.tau_pos, spec.tau_neg).astype(logp_old.dtype)
        return (2.0 / tau)[..., None] * m
    logp = jnp.where(m > 0, logp_old, 0.0)
    if obj == Objective.CISPO and spec.cispo_clip == CispoClip.UPPER_CAP:
        return min(1.0, spec.eps_high) * logp  # sg[min(1, cap)] log pi
    return logp  # gpg: log pi; cispo: sg[clip(1, 1-eps_low, 1+eps_high)] = 1 times log pi


def effective_weights(spec: MethodSpec, batch: jgrpo.GroupBatch) -> jax.Array:
    """ω̃_{i,t} = α_{i,t} · c_{i,t} at the first inner step (ratio 1), ``[..., G, T]``.

    α_{i,t} is the method's token weight of Eq. 1 (Table 1) with every
    ratio-dependent factor at ratio 1 (DeepSeek-V3.2's off-policy mask is 1),
    c_{i,t} = ∂f_{i,t}/∂A_i there (module docstring). Zero on padding.
    """
    validate(spec.replace(beta=0.0), batch.logp_old, batch)
    b = _arrays(batch)
    adv = jgrpo.advantages(spec, b)
    alpha = policy_weights(spec, b, adv, jnp.zeros(b.mask.shape, jnp.float32))
    return alpha.astype(b.logp_old.dtype) * _first_step_factor(spec, adv, b.logp_old, b.mask)


def cumulative_weights(spec: MethodSpec, batch: jgrpo.GroupBatch) -> jax.Array:
    """Ω_i = Σ_t ω̃_{i,t} ``[..., G]`` (Appendix A) at the first inner step.

    For the clipped-ratio objectives this is Σ_t α_{i,t}, i.e. ``aux["omega"]``
    of ``jgrpo.loss``: 1/(Gσ) for grpo/gspo/gcpo, |o_i|/G for dr_grpo,
    |o_i|/(σ Σ_j|o_j|) for dapo.

    Args:
      spec: the method.
      batch: :class:`jgrpo.GroupBatch` ``[..., G, T]`` (``logp_old`` is π_old's; the
        first step is at θ = θ_old).

    Returns:
      ``[..., G]`` float32 (float64 for float64 ``logp_old``).
    """
    return jnp.sum(effective_weights(spec, batch), axis=-1)


class FirstStep(NamedTuple):
    """The surrogate at the first inner step, J = Σ_i A_i Ω_i − β R (Prop. 4).

    Attributes:
      objective: ``[...]`` J per prompt.
      policy: ``[...]`` Σ_i A_i Ω_i.
      regularizer: ``[...]`` R(θ_old) (0 when the method has none or β = 0).
      omega: ``[..., G]`` Ω_i.
      advantages: ``[..., G]`` A_i.
    """

    objective: jax.Array
    policy: jax.Array
    regularizer: jax.Array
    omega: jax.Array
    advantages: jax.Array


def first_step_objective(spec: MethodSpec, batch: jgrpo.GroupBatch) -> FirstStep:
    """J(θ_old) = Σ_i A_i Ω_i − β R(θ_old), per prompt (Prop. 4, Appendix A).

    Computed from Ω (:func:`cumulative_weights`) and A, not from ``jgrpo.loss``;
    it equals ``jgrpo.loss(spec, batch.logp_old, batch)[1]["objective"]`` for
    every preset. R is evaluated at θ_old: for the k3 KL it vanishes only when
    ``logp_ref == logp_old``. Pure: jit it with the spec static,
    ``jax.jit(first_step_objective, static_argnums=0)`` (as every function here that
    takes a spec and a batch).

    Args:
      spec: the method.
      batch: :class:`jgrpo.GroupBatch` ``[..., G, T]``, with ``logp_ref`` for a
        KL regularizer (β > 0).

    Returns:
      :class:`FirstStep`.
    """
    validate(spec, batch.logp_old, batch)
    b = _arrays(batch)
    adv = jgrpo.advantages(spec, b)
    omega = cumulative_weights(spec, batch)
    policy = jnp.sum(adv.astype(omega.dtype) * omega, axis=-1)
    if spec.regularizer == Regularizer.NONE or spec.beta == 0:
        reg = jnp.zeros(policy.shape, policy.dtype)
    else:
        value, weight = regularizer_terms(spec, b.logp_old, b, adv)
        reg = jnp.sum(value * weight, axis=(-2, -1)).astype(policy.dtype)
    return FirstStep(
        objective=policy - spec.beta * reg,
        policy=policy,
        regularizer=reg,
        omega=omega,
        advantages=adv,
    )


def advantage_weight_covariance(spec: MethodSpec, batch: jgrpo.GroupBatch) -> jax.Array:
    """G · Cov(A, Ω) per group, ``[...]`` (Appendix A).

    G · Cov(A, Ω) = Σ_i (A_i − Ā)(Ω_i − Ω̄), with the population covariance over
    the G completions. Because Σ_i A_i = 0 for group-centred advantages (Eq. 2,
    also RLOO's), it equals Σ_i A_i Ω_i, the policy part of the first-step
    objective: J(θ_old) = G · Cov(A, Ω) − β R.

    Note:
      With ``batch.advantages`` that do not sum to zero (or verl's groups of
      one, A = r), Σ_i A_i Ω_i = G · Cov(A, Ω) + G Ā Ω̄; this function returns
      the covariance term only.
    """
    omega = cumulative_weights(spec, batch)
    adv = jgrpo.advantages(spec, _arrays(batch)).astype(omega.dtype)
    da = adv - jnp.mean(adv, axis=-1, keepdims=True)
    dw = omega - jnp.mean(omega, axis=-1, keepdims=True)
    return jnp.sum(da * dw, axis=-1)


class ProxyStats(NamedTuple):
    """How well a surrogate value tracks reward improvement (Prop. 4).

    Attributes:
      pearson: ``[...]`` Pearson correlation of value_n and Δr_n.
      spearman: ``[...]`` Spearman rank correlation (average ranks for ties).
      n: the number of (value, improvement) pairs, N − lag.
    """

    pearson: jax.Array
    spearman: jax.Array
    n: int


def _pearson(x, y):
    """Pearson r along the last axis (``jnp.corrcoef`` per series; NaN for a constant series)."""
    n = x.shape[-1]
    r = jax.vmap(lambda a, b: jnp.corrcoef(a, b)[0, 1])(x.reshape(-1, n), y.reshape(-1, n))
    return r.reshape(x.shape[:-1])


@functools.partial(jax.jit, static_argnames="lag")
def _stats(values, rewards, lag):
    improvement = rewards[..., lag:] - rewards[..., :-lag]
    v = values[..., : values.shape[-1] - lag]
    ranks = functools.partial(jax.scipy.stats.rankdata, method="average", axis=-1)  # ties share their average rank
    return _pearson(v, improvement), _pearson(ranks(v).astype(v.dtype), ranks(improvement).astype(v.dtype))


def surrogate_vs_improvement(values: ArrayLike, rewards: ArrayLike, *, lag: int = 1) -> ProxyStats:
    """Correlation of the per-step surrogate value with the reward improvement it precedes.

    For a training run of N steps, pairs value_n (the surrogate J — or the loss
    −J — reported at step n) with Δr_n = r̄_{n+lag} − r̄_n, the change of mean
    reward over the next ``lag`` steps, n = 0..N−lag−1, and returns their
    Pearson and Spearman correlations. Prop. 4 predicts values near 0 for
    length-normalised methods (J = −βR at each batch's first step, whatever
    the rewards) — the loss curve is not a progress signal.

    Args:
      values: ``[..., N]`` surrogate values per step (leading dims: runs).
      rewards: ``[..., N]`` mean reward per step, same shape.
      lag: ≥ 1, a Python int.

    Returns:
      :class:`ProxyStats`; the correlations are NaN where either series is
      constant (the correlation is undefined there).

    Raises:
      ValueError: shapes differ, rank 0, N − lag < 3, or a bad ``lag``.
    """
    v = jnp.asarray(values)
    r = jnp.asarray(rewards)
    dtype = jnp.promote_types(jnp.result_type(v, r), jnp.float32)
    if np.shape(v) != np.shape(r):
        raise ValueError(f"values and rewards must have the same shape [..., N], got {np.shape(v)} and {np.shape(r)}")
    check_min_rank("values", v, 1, "[..., N]")
    lag = check_static_int("lag", lag, low=1)
    n = v.shape[-1] - lag
    if n < 3:
        raise ValueError(f"need at least 3 (value, improvement) pairs: N - lag = {v.shape[-1]} - {lag} = {n}")
    pearson, spearman = _stats(v.astype(dtype), r.astype(dtype), lag)
    return ProxyStats(pearson=pearson, spearman=spearman, n=n)


# ----------------------------------------------------------------------------- a progress monitor that works


class SnisGain(NamedTuple):
    """Held-out importance-sampling estimate of an update's reward gain (see :func:`snis_gain`).

    Attributes:
      gain: ``[...]`` the estimate of E_{π_θ}[r] − E_{π_old}[r].
      reward_new: ``[...]`` the (self-normalised) estimate of E_{π_θ}[r].
      reward_old: ``[...]`` mean_j r_j, the plain estimate of E_{π_old}[r].
      ess: ``[...]`` effective sample size (Σ_j w_j)² / Σ_j w_j², in [1, N]; far below N
        means a few completions carry the estimate and it is unreliable.
      log_weights: ``[..., N]`` log w_j = Σ_t m_{j,t} (logp_{j,t} − logp_old_{j,t}).
    """

    gain: jax.Array
    reward_new: jax.Array
    reward_old: jax.Array
    ess: jax.Array
    log_weights: jax.Array


def _check_snis(logp, logp_old, rewards, mask) -> None:
    shape = check_min_rank("mask", mask, 2, "[..., N, T]")
    check_shape("logp", logp, shape, "[..., N, T] like mask")
    check_shape("logp_old", logp_old, shape, "[..., N, T] like mask")
    check_shape("rewards", rewards, shape[:-1], "[..., N] (mask without T)")
    if shape[-2] < 1:
        raise ValueError(f"need at least one held-out completion (N >= 1), got mask shape {shape}")
    for name, x in (("logp", logp), ("logp_old", logp_old)):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise TypeError(f"{name} must be a float array, got dtype {jnp.result_type(x)}")
    if is_concrete(logp, logp_old, rewards, mask):  # the value checks of jgrpo.loss, on a held-out "group"
        held_out = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=rewards)
        for ok, message in value_problems(logp, held_out):
            if not ok:
                raise ValueError(message)


@functools.partial(jax.jit, static_argnames="normalize")
def _snis(logp, logp_old, rewards, mask, normalize):
    dtype = jnp.promote_types(jnp.result_type(logp, logp_old, rewards), jnp.float32)
    on = mask > 0
    log_w = jnp.sum(jnp.where(on, logp.astype(dtype) - logp_old.astype(dtype), 0.0), axis=-1)  # [..., N]
    r = rewards.astype(dtype)
    reward_old = jnp.mean(r, axis=-1)
    w_norm = jax.nn.softmax(log_w, axis=-1)  # w_j / Σ_k w_k, stable for large |log w|
    if normalize:  # Σ_j (w_j/Σw − 1/N) r_j: the difference first, so that θ = θ_old gives exactly 0
        gain = jnp.sum((w_norm - 1.0 / r.shape[-1]) * r, axis=-1)
    else:
        gain = jnp.mean(jnp.expm1(log_w) * r, axis=-1)
    ess = 1.0 / jnp.sum(w_norm * w_norm, axis=-1)
    return SnisGain(gain=gain, reward_new=reward_old + gain, reward_old=reward_old, ess=ess, log_weights=log_w)


def snis_gain(
    logp: ArrayLike, logp_old: ArrayLike, rewards: ArrayLike, mask: ArrayLike, *, normalize: bool = True
) -> SnisGain:
    """Held-out self-normalised importance-sampling (SNIS) estimate of the reward gain of an update.

    With N fresh held-out completions o_j ~ π_old (not the batch the update was
    trained on), rewards r_j and sequence weights w_j = π_θ(o_j)/π_old(o_j) =
    exp Σ_t m_{j,t}(log π_θ − log π_old)(y_{j,t}):

        ĝ = Σ_j w_j r_j / Σ_j w_j − (1/N) Σ_j r_j  ≈  ΔE = E_{π_θ}[r] − E_{π_old}[r].

    Unlike the surrogate J of Eq. 1 (Prop. 4: at the first inner step its value is
    −βR or a length/weight covariance, Eqs. 8–11), ĝ estimates the quantity a
    practitioner wants to monitor. Beyond the paper.

    Bias and variance (delta method, N i.i.d. held-out completions, μ_θ = E_θ[r]):

    - consistent; bias O(1/N): E[ĝ] − ΔE ≈ −E_old[w²(r − μ_θ)]/N. Exactly 0 at
      θ = θ_old (every w_j = 1, ĝ = 0 for any sample).
    - variance ≈ Var_old[w (r − μ_θ) − (r − μ_old)]/N. The baseline uses the same
      completions, so the error shrinks with the size of the update (w → 1);
      comparing two independent sample means would have variance 2 Var(r)/N
      however small the update.
    - invariant to a shift of the rewards (Σ_j (w_j/Σw − 1/N) = 0); needs
      π_old > 0 wherever π_θ > 0 (softmax policies: always).
    - ``ess`` = (Σw)²/Σw² diagnoses weight degeneracy (long completions, large
      updates): when ess ≪ N the estimate rests on a few completions.

    With ``normalize=False`` the first term is the plain IS estimate (1/N) Σ_j w_j r_j:
    unbiased, not shift invariant, larger variance (Var_old[w r − r]/N).

    Mask-aware: padding (mask 0) never enters log w (NaN or inf there is ignored);
    an empty completion has w = 1.

    Args:
      logp: ``[..., N, T]`` log π_θ of the held-out tokens under the updated policy.
      logp_old: ``[..., N, T]`` log π_old of the same tokens (the sampling policy).
      rewards: ``[..., N]`` reward of each held-out completion.
      mask: ``[..., N, T]`` 1 on completion tokens, 0 on padding.
      normalize: True (default): self-normalised; False: plain IS (static).

    Returns:
      :class:`SnisGain`, float32 (float64 for float64 inputs).

    Raises:
      ValueError: shapes that do not match, rank < 2, N = 0; and, for concrete
        inputs (not under ``jit``), a mask other than 0/1, non-finite or positive
        log-probabilities on completion tokens, or non-finite rewards.
      TypeError: integer log-probabilities.
    """
    check_bool("normalize", normalize)
    logp, logp_old, rewards, mask = (jnp.asarray(x) for x in (logp, logp_old, rewards, mask))
    _check_snis(logp, logp_old, rewards, mask)
    return _snis(logp, logp_old, rewards, mask, normalize)


def policy_snis_gain(
    logprob_fn: LogprobFn,
    params: Any,
    held_out: jgrpo.GroupBatch,
    *,
    prompt: ArrayLike | None = None,
    normalize: bool = True,
) -> SnisGain:
    """:func:`snis_gain` of the policy ``params`` on held-out completions, through the policy protocol.

    ``snis_gain(logprob_fn(params, held_out.tokens, prompt), held_out.logp_old, held_out.rewards,
    held_out.mask)``: the log-probabilities of the updated policy come from the same
    ``logprob_fn(params, tokens [..., N, T], prompt) -> logp`` as every analysis
    (:mod:`jgrpo.policies`: ``jgrpo.models.logprob_fn(model_fn)``, ``jgrpo.nnx_logprob_fn(graphdef)``,
    ``jgrpo.policies.tabular_logprob``).

    Args:
      logprob_fn: the policy's log-probability function.
      params: the updated parameters θ.
      held_out: a :class:`jgrpo.GroupBatch` of fresh completions of π_old (``tokens``, ``mask``,
        ``logp_old`` of π_old, ``rewards`` ``[..., N]``), not the batch the update trained on.
      prompt: ``[..., P]`` prompts of the held-out completions (None for a policy that ignores them).
      normalize: as in :func:`snis_gain`.

    Raises:
      ValueError: ``held_out.tokens`` missing, a ``logp`` not shaped like the tokens, and :func:`snis_gain`'s.
    """
    if not isinstance(held_out, jgrpo.GroupBatch):
        raise TypeError(f"held_out must be a jgrpo.GroupBatch, got {type(held_out).__name__}")
    if held_out.tokens is None:
        raise ValueError("policy_snis_gain needs held_out.tokens to evaluate the policy")
    tokens = jnp.asarray(held_out.tokens)
    logp = logprob_fn(params, tokens, jax.tree.map(jnp.asarray, prompt))
    if jnp.shape(logp) != tokens.shape:
        raise ValueError(
            f"logprob_fn(params, tokens, prompt) must return logp shaped like held_out.tokens {tuple(tokens.shape)}, "
            f"got {tuple(jnp.shape(logp))}"
        )
    return snis_gain(logp, held_out.logp_old, held_out.rewards, held_out.mask, normalize=normalize)
