"""Group-relative advantages (Eq. 2) and the per-group reward scale (1/sigma of Table 1)."""

from __future__ import annotations

import jax.numpy as jnp

from jgrpo.methods import Advantage, MethodSpec, Scale


def group_all_equal(rewards):
    """``[..., G] -> [..., 1]`` bool: whether every reward of the group is the same."""
    return jnp.max(rewards, axis=-1, keepdims=True) == jnp.min(rewards, axis=-1, keepdims=True)


def reward_std(rewards, *, ddof: int, axis=-1):
    """Standard deviation of rewards along ``axis`` with ``ddof`` (kept dims)."""
    n = 1
    for a in axis if isinstance(axis, tuple) else (axis,):
        n *= rewards.shape[a]
    mean = jnp.mean(rewards, axis=axis, keepdims=True)
    var = jnp.sum(jnp.square(rewards - mean), axis=axis, keepdims=True) / max(n - ddof, 1)
    return jnp.sqrt(var)


def centred_advantages(spec: MethodSpec, rewards):
    """A_i = r_i - mean_j r_j (Eq. 2), or the leave-one-out form for ``rloo``.

    Args:
      spec: the method (uses ``advantage`` and ``single_sample_unit``).
      rewards: ``[..., G]`` float rewards.

    Returns:
      ``[..., G]`` advantages. A group whose rewards are all equal gets exactly
      zero (never a rounding residue of the mean).

    Note:
      RLOO: A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_j r_j).
      With ``single_sample_unit`` (verl), a group of one keeps A = r (mean 0).
    """
    g = rewards.shape[-1]
    if g == 1 and spec.single_sample_unit:
        return rewards
    centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    centred = jnp.where(group_all_equal(rewards), 0.0, centred)
    if spec.advantage == Advantage.RLOO:
        centred = centred * (g / max(g - 1, 1))
    return centred


def reward_scale(spec: MethodSpec, rewards):
    """Per-completion scale ``[..., G]`` that multiplies alpha: 1/(sigma + std_eps) or 1.

    Implements the 1/sigma(r) of alpha^S in Table 1. ``group_std`` uses the
    group's rewards; ``batch_std`` the std of all rewards of the batch (TRL's
    ``scale_rewards="batch"``). A zero denominator gives a zero scale (the
    group's advantages are exactly zero then, so nothing is lost).
    """
    if spec.scale == Scale.NONE:
        return jnp.ones_like(rewards)
    g = rewards.shape[-1]
    if spec.scale == Scale.GROUP_STD:
        if g == 1 and spec.single_sample_unit:
            sigma = jnp.ones_like(rewards)
        else:
            sigma = reward_std(rewards, ddof=spec.std_ddof)
    else:
        axes = tuple(range(rewards.ndim))
        sigma = reward_std(rewards, ddof=spec.std_ddof, axis=axes)
    denom = sigma + spec.std_eps
    safe = jnp.where(denom > 0, denom, 1.0)
    return jnp.broadcast_to(jnp.where(denom > 0, 1.0 / safe, 0.0), rewards.shape)
