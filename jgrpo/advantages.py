"""Group-relative advantages (Eq. 2) and the per-group reward scale (1/sigma of Table 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgrpo.methods import Advantage, MethodSpec, MultiReward, Scale


def rounding_spread(rewards: jax.Array, axis=-1) -> jax.Array:
    """The largest reward spread that rounding alone explains: n * eps(dtype) * max|r| over ``axis`` (kept dims).

    n is the number of rewards reduced. The rounding error of their sum (hence of their mean) is at
    most (n - 1) * eps/2 * sum|r| / n <= n * eps * max|r| (Higham, Accuracy and Stability of Numerical
    Algorithms, Sec. 4.2), so rewards whose spread is within this bound are indistinguishable from
    equal rewards in the compute dtype: e.g. [0.3, nextafter(0.3), 0.3, 0.3] in float32.
    """
    axes = axis if isinstance(axis, tuple) else (axis,)
    n = 1
    for a in axes:
        n *= rewards.shape[a]
    eps = jnp.finfo(rewards.dtype).eps
    return n * eps * jnp.max(jnp.abs(rewards), axis=axis, keepdims=True)


def group_all_equal(rewards: jax.Array, axis=-1) -> jax.Array:
    """``[..., G] -> [..., 1]`` bool: a zero-variance group (reward spread at rounding level).

    See :func:`rounding_spread`; exactly equal rewards are the special case of spread 0.
    """
    spread = jnp.max(rewards, axis=axis, keepdims=True) - jnp.min(rewards, axis=axis, keepdims=True)
    return spread <= rounding_spread(rewards, axis=axis)


def reward_std(rewards: jax.Array, *, ddof: int, axis=-1) -> jax.Array:
    """Standard deviation of rewards along ``axis`` with ``ddof`` (kept dims)."""
    n = 1
    for a in axis if isinstance(axis, tuple) else (axis,):
        n *= rewards.shape[a]
    mean = jnp.mean(rewards, axis=axis, keepdims=True)
    var = jnp.sum(jnp.square(rewards - mean), axis=axis, keepdims=True) / max(n - ddof, 1)
    return jnp.sqrt(var)


def _safe_scale(sigma: jax.Array, eps: float, degenerate: jax.Array) -> jax.Array:
    """1 / (sigma + eps), 0 where the rewards are degenerate or the denominator is 0."""
    denom = sigma + eps
    ok = (denom > 0) & ~degenerate
    return jnp.where(ok, 1.0 / jnp.where(ok, denom, 1.0), 0.0)


def combine_rewards(spec: MethodSpec, rewards: jax.Array, group_rank: int) -> jax.Array:
    """One reward per completion ``[..., G]`` from ``rewards`` ``[..., G]`` or ``[..., G, K]`` (K reward functions).

    ``group_rank`` is the rank of ``[..., G]`` (the mask's rank minus one): rewards of one more
    rank hold K reward functions. ``sum_then_normalize``: r_i = sum_k w_k r_ik (TRL's default).
    ``normalize_then_sum`` (TRL, GDPO): r_i = sum_k w_k (r_ik - mean_j r_jk) / (sigma_k + std_eps),
    sigma_k the group std of reward k (ddof ``std_ddof``; 0 for a zero-variance group).
    """
    if rewards.ndim == group_rank:
        if spec.multi_reward == MultiReward.SUM_THEN_NORMALIZE:
            return rewards
        rewards = rewards[..., None]  # one reward function: still normalised per group first (TRL)
    k = rewards.shape[-1]
    weights = jnp.asarray(spec.reward_weights if spec.reward_weights is not None else (1.0,) * k, rewards.dtype)
    if spec.multi_reward == MultiReward.SUM_THEN_NORMALIZE:
        return jnp.sum(rewards * weights, axis=-1)
    degenerate = group_all_equal(rewards, axis=-2)  # [..., 1, K]
    centred = jnp.where(degenerate, 0.0, rewards - jnp.mean(rewards, axis=-2, keepdims=True))
    scale = _safe_scale(reward_std(rewards, ddof=spec.std_ddof, axis=-2), spec.std_eps, degenerate)
    return jnp.sum(centred * scale * weights, axis=-1)


def centred_advantages(spec: MethodSpec, rewards: jax.Array) -> jax.Array:
    """A_i = r_i - mean_j r_j (Eq. 2), or the leave-one-out form for ``rloo``.

    Args:
      spec: the method (uses ``advantage``, ``single_sample_unit`` and ``multi_reward``).
      rewards: ``[..., G]`` float rewards (one per completion, see :func:`combine_rewards`).

    Returns:
      ``[..., G]`` advantages. A zero-variance group (reward spread at rounding level,
      :func:`group_all_equal`) gets exactly zero (never a rounding residue of the mean).

    Note:
      RLOO: A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_j r_j).
      With ``single_sample_unit`` (verl), a group of one keeps A = r (mean 0).
      ``multi_reward='normalize_then_sum'`` centres by the mean of the whole batch (TRL, GDPO).
    """
    g = rewards.shape[-1]
    if spec.multi_reward == MultiReward.NORMALIZE_THEN_SUM:
        axes = tuple(range(rewards.ndim))
        centred = rewards - jnp.mean(rewards, axis=axes, keepdims=True)
        return jnp.where(group_all_equal(rewards, axis=axes), 0.0, centred)
    if g == 1 and spec.single_sample_unit:
        return rewards
    centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    centred = jnp.where(group_all_equal(rewards), 0.0, centred)
    if spec.advantage == Advantage.RLOO:
        centred = centred * (g / max(g - 1, 1))
    return centred


def reward_scale(spec: MethodSpec, rewards: jax.Array) -> jax.Array:
    """Per-completion scale ``[..., G]`` that multiplies alpha: 1/(sigma + std_eps) or 1.

    Implements the 1/sigma(r) of alpha^S in Table 1. ``group_std`` uses the
    group's rewards; ``batch_std`` the std of all rewards of the batch (TRL's
    ``scale_rewards="batch"``). A zero-variance group (or batch) and a zero
    denominator give a zero scale (the advantages are exactly zero then, so
    nothing is lost and alpha never holds 1/rounding-noise).
    """
    if spec.scale == Scale.NONE:
        return jnp.ones_like(rewards)
    g = rewards.shape[-1]
    if spec.scale == Scale.GROUP_STD:
        if g == 1 and spec.single_sample_unit:  # verl: a group of one has sigma 1 (then 1 / (1 + std_eps))
            sigma, degenerate = jnp.ones_like(rewards), jnp.zeros(rewards.shape, bool)
        else:
            sigma = reward_std(rewards, ddof=spec.std_ddof)
            degenerate = group_all_equal(rewards)
    else:
        axes = tuple(range(rewards.ndim))
        sigma = reward_std(rewards, ddof=spec.std_ddof, axis=axes)
        degenerate = group_all_equal(rewards, axis=axes)
    return jnp.broadcast_to(_safe_scale(sigma, spec.std_eps, degenerate), rewards.shape)


def standardised_advantages(spec: MethodSpec, advantages: jax.Array, rewards: jax.Array) -> jax.Array:
    """A_i / (sigma_group + std_eps) (0 for a zero-variance group): the CPPO paper's pruning statistic."""
    if rewards.shape[-1] == 1 and spec.single_sample_unit:
        return advantages / (1.0 + spec.std_eps)
    sigma = reward_std(rewards, ddof=spec.std_ddof)
    return advantages * _safe_scale(sigma, spec.std_eps, group_all_equal(rewards))
