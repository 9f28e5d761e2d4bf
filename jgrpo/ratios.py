"""Importance ratios s_{i,t} and the per-token surrogate terms of Eq. 1 (Table 1, column s)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrpo.methods import CispoClip, MethodSpec, Objective

sg = jax.lax.stop_gradient


class Surrogate(NamedTuple):
    """Per-token surrogate values, all ``[..., G, T]`` and zero on padding.

    Attributes:
      term: the clipped term f_{i,t} whose alpha-weighted sum is the policy part of J.
      ratio: the value of s_{i,t} (1 for ``logp``; the clipped weight's input I for CISPO).
      clipped_high: the clip is active above (A > 0 and s > 1 + eps_high): no advantage gradient.
      clipped_low: the clip is active below (A < 0 and s < 1 - eps_low).
    """

    term: jax.Array
    ratio: jax.Array
    clipped_high: jax.Array
    clipped_low: jax.Array


def masked(x, mask):
    """``x`` where ``mask`` else 0 (a NaN on padding never leaks)."""
    return jnp.where(mask.astype(bool), x, jnp.zeros((), x.dtype))


def token_log_ratio(logp, logp_old, mask):
    """log I_{i,t} = logp - logp_old (Eq. 3), zero on padding."""
    return masked(logp, mask) - masked(logp_old, mask)


def _safe_len(mask):
    return jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1, keepdims=True), 1.0)


def ppo_clip_term(spec: MethodSpec, ratio, adv):
    """min(s A, clip(s, 1-eps_low, 1+eps_high) A), with TRL's ``delta`` cap and dual clip.

    Implements the inner term of Eq. 1. Dual clip (c > 1): for A < 0 the term
    is max(term, c A).
    """
    lo, hi = 1.0 - spec.eps_low, 1.0 + spec.eps_high
    unclipped = ratio if spec.ratio_cap is None else jnp.minimum(ratio, spec.ratio_cap)
    term = jnp.minimum(unclipped * adv, jnp.clip(ratio, lo, hi) * adv)
    if spec.dual_clip is not None:
        term = jnp.where(adv < 0, jnp.maximum(term, spec.dual_clip * adv), term)
    return term


def surrogate(spec: MethodSpec, logp, logp_old, mask, advantages) -> Surrogate:
    """Per-token surrogate terms of every objective kind.

    Args:
      spec: the method; ``spec.objective`` chooses the ratio:
        ``ppo_clip`` s = I; ``gspo`` value s_i = exp(mean_t log I) with gradient
        s_i * dlogp_t (GSPO-token); ``sequence`` s_i = exp(sum_t log I) (GCPO);
        ``geo_mean`` GMPO's exp(mean_t of sign-aware clamped log I);
        ``logp`` s = log pi (GPG); ``cispo`` sg[clip(I)] log pi; ``sapo``
        (4/tau) sigmoid(tau (I - 1)).
      logp, logp_old: ``[..., G, T]`` float (already promoted to >= float32).
      mask: ``[..., G, T]``.
      advantages: ``[..., G]`` (A_i, without the 1/sigma scale).

    Returns:
      A :class:`Surrogate`.

    Note:
      Log-ratios are clamped to [log_ratio_min, log_ratio_max] before exp
      (token log-ratio for token objectives, sequence log-ratio for gspo and
      sequence); the gradient is zero beyond the clamp.
    """
    m = mask.astype(bool)
    adv = advantages[..., None].astype(logp.dtype)
    log_ratio = token_log_ratio(logp, logp_old, mask)
    lo, hi = 1.0 - spec.eps_low, 1.0 + spec.eps_high
    clamp = lambda x: jnp.clip(x, spec.log_ratio_min, spec.log_ratio_max)  # noqa: E731
    obj = spec.objective
    if obj in (Objective.PPO_CLIP, Objective.GSPO, Objective.SEQUENCE):
        if obj == Objective.PPO_CLIP:
            ratio = jnp.exp(clamp(log_ratio))
        elif obj == Objective.GSPO:
            seq = jnp.sum(log_ratio, axis=-1, keepdims=True) / _safe_len(mask)
            # value sg[s_i], gradient s_i * dlogp_t (GSPO-token form).
            ratio = jnp.exp(clamp(masked(logp, mask) - sg(masked(logp, mask)) + sg(seq)))
        else:
            seq = jnp.sum(log_ratio, axis=-1, keepdims=True)
            ratio = jnp.broadcast_to(jnp.exp(clamp(seq)), log_ratio.shape)
        term = ppo_clip_term(spec, ratio, adv)
        high = (adv > 0) & (ratio > hi)
        low = (adv < 0) & (ratio < lo)
    elif obj == Objective.GEO_MEAN:
        x = clamp(log_ratio)
        sign = jnp.sign(adv)
        xc = jnp.clip(x, -spec.eps_low, spec.eps_high)
        xm = sign * jnp.minimum(sign * x, sign * xc)
        seq = jnp.sum(masked(xm, mask), axis=-1, keepdims=True) / _safe_len(mask)
        ratio = jnp.broadcast_to(jnp.exp(seq), log_ratio.shape)
        term = adv * ratio
        clipped = x != xc
        high = clipped & (adv > 0)
        low = clipped & (adv < 0)
    elif obj == Objective.LOGP:
        ratio = jnp.ones_like(log_ratio)
        term = adv * masked(logp, mask)
        high = low = jnp.zeros(log_ratio.shape, bool)
    elif obj == Objective.CISPO:
        ratio = jnp.exp(clamp(log_ratio))
        if spec.cispo_clip == CispoClip.TWO_SIDED:
            weight = jnp.clip(ratio, lo, hi)
            high, low = ratio > hi, ratio < lo
        else:
            weight = jnp.minimum(ratio, spec.eps_high)
            high, low = ratio > spec.eps_high, jnp.zeros(ratio.shape, bool)
        term = sg(weight) * adv * masked(logp, mask)
    elif obj == Objective.SAPO:
        ratio = jnp.exp(clamp(log_ratio))
        tau = jnp.where(adv > 0, spec.tau_pos, spec.tau_neg)
        term = (4.0 / tau) * jax.nn.sigmoid(tau * (ratio - 1.0)) * adv
        high = low = jnp.zeros(log_ratio.shape, bool)
    else:  # pragma: no cover - enums are validated
        raise ValueError(f"unknown objective {obj!r}")
    return Surrogate(
        term=masked(term, mask),
        ratio=masked(ratio, mask),
        clipped_high=high & m,
        clipped_low=low & m,
    )
