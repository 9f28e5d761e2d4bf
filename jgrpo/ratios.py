"""Importance ratios s_{i,t} and the per-token surrogate terms of Eq. 1 (Table 1, column s)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jgrpo.methods import CispoClip, MethodSpec, Objective, RatioLevel

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


def masked(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``x`` where ``mask`` else 0 (a NaN on padding never leaks)."""
    return jnp.where(mask.astype(bool), x, jnp.zeros((), x.dtype))


def token_log_ratio(logp: jax.Array, logp_old: jax.Array, mask: jax.Array) -> jax.Array:
    """log I_{i,t} = logp - logp_old (Eq. 3), zero on padding."""
    return masked(logp, mask) - masked(logp_old, mask)


def _safe_len(mask):
    return jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1, keepdims=True), 1.0)


def sequence_log_ratio(log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
    """log s_i = mean_t log I_{i,t} over the completion's tokens, ``[..., G, 1]`` (0 for an empty completion)."""
    return jnp.sum(log_ratio, axis=-1, keepdims=True) / _safe_len(mask).astype(log_ratio.dtype)


def level_ratio(spec: MethodSpec, logp: jax.Array, log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
    """The ratio s_{i,t} ``[..., G, T]`` at ``spec.ratio_level``, log-ratio clamped to [log_ratio_min, log_ratio_max].

    - objective ``gspo`` (Table 1's GSPO-token form): value s_i = exp(mean_t log I) on every
      token, gradient s_i * dlogp_t (sg[s_i / pi] * pi).
    - ``ratio_level='token'``: I_{i,t} = exp(log I_{i,t}).
    - ``ratio_level='sequence'`` (TRL's ``importance_sampling_level='sequence'``): s_i broadcast
      over the tokens with its gradient through the mean, d s_i / dlogp_t = s_i / |o_i|. With
      token weights constant within a completion this has the GSPO-token form's value and gradient.
    """
    clamp = lambda x: jnp.clip(x, spec.log_ratio_min, spec.log_ratio_max)  # noqa: E731
    if spec.objective == Objective.GSPO:
        lp = masked(logp, mask)
        return jnp.exp(clamp(lp - sg(lp) + sg(sequence_log_ratio(log_ratio, mask))))
    if spec.ratio_level == RatioLevel.SEQUENCE:
        return jnp.broadcast_to(jnp.exp(clamp(sequence_log_ratio(log_ratio, mask))), log_ratio.shape)
    return jnp.exp(clamp(log_ratio))


# VESPO's own clamps (TRL ``get_gamma_weights``, from the VESPO reference code): token log-ratios to
# +-20, the sequence log-ratio to [log 1e-8, 20], lambda >= 1e-4.
VESPO_TOKEN_CLAMP = 20.0
VESPO_SEQ_MIN = math.log(1e-8)
VESPO_SEQ_MAX = 20.0


def vespo_weight(
    spec: MethodSpec, log_ratio: jax.Array, mask: jax.Array, adv: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """VESPO's gamma weight phi(w_i) = exp(lambda + k log w_i - lambda w_i) ``[..., G, 1]`` (no gradient).

    w_i = exp(sum_t clamp(log I_{i,t}, +-20)) clamped to [1e-8, e^20] (a sequence product, not a mean);
    (k, lambda) = (k_pos, lambda_pos) for A_i >= 0, else (k_neg, lambda_neg); phi(1) = 1. A non-finite
    phi is 0 (TRL's ``nan_to_num``).
    """
    x = jnp.clip(log_ratio, -VESPO_TOKEN_CLAMP, VESPO_TOKEN_CLAMP)
    log_w = jnp.clip(jnp.sum(masked(x, mask), axis=-1, keepdims=True), VESPO_SEQ_MIN, VESPO_SEQ_MAX)
    pos = adv >= 0
    k = jnp.where(pos, spec.vespo_k_pos, spec.vespo_k_neg)
    lam = jnp.maximum(jnp.where(pos, spec.vespo_lambda_pos, spec.vespo_lambda_neg), 1e-4)
    phi = jnp.exp(lam + k * log_w - lam * jnp.exp(log_w))
    return sg(jnp.where(jnp.isfinite(phi), phi, 0.0)), jnp.exp(log_w)


def ppo_clip_term(spec: MethodSpec, ratio: jax.Array, adv: jax.Array) -> jax.Array:
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


def surrogate(
    spec: MethodSpec, logp: jax.Array, logp_old: jax.Array, mask: jax.Array, advantages: jax.Array
) -> Surrogate:
    """Per-token surrogate terms of every objective kind.

    Args:
      spec: the method; ``spec.objective`` chooses the ratio:
        ``ppo_clip`` s = I; ``gspo`` value s_i = exp(mean_t log I) with gradient
        s_i * dlogp_t (GSPO-token); ``sequence`` s_i = exp(sum_t log I) (GCPO);
        ``geo_mean`` GMPO's exp(mean_t of sign-aware clamped log I);
        ``logp`` s = log pi (GPG); ``cispo`` sg[clip(I)] log pi; ``sapo``
        (4/tau) sigmoid(tau (I - 1)); ``vespo`` sg[phi(w_i)] A log pi (TRL).
        ``spec.ratio_level='sequence'`` replaces I by the sequence ratio s_i in
        ``ppo_clip``, ``cispo`` and ``sapo`` (see :func:`level_ratio`).
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
        if obj == Objective.SEQUENCE:
            seq = jnp.sum(log_ratio, axis=-1, keepdims=True)
            ratio = jnp.broadcast_to(jnp.exp(clamp(seq)), log_ratio.shape)
        else:
            ratio = level_ratio(spec, logp, log_ratio, mask)
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
        ratio = level_ratio(spec, logp, log_ratio, mask)  # only its value is used (sg below)
        if spec.cispo_clip == CispoClip.TWO_SIDED:
            weight = jnp.clip(ratio, lo, hi)
            high, low = ratio > hi, ratio < lo
        else:
            weight = jnp.minimum(ratio, spec.eps_high)
            high, low = ratio > spec.eps_high, jnp.zeros(ratio.shape, bool)
        term = sg(weight) * adv * masked(logp, mask)
    elif obj == Objective.SAPO:
        ratio = level_ratio(spec, logp, log_ratio, mask)
        tau = jnp.where(adv > 0, spec.tau_pos, spec.tau_neg)
        term = (4.0 / tau) * jax.nn.sigmoid(tau * (ratio - 1.0)) * adv
        high = low = jnp.zeros(log_ratio.shape, bool)
    elif obj == Objective.VESPO:
        phi, w = vespo_weight(spec, log_ratio, mask, adv)
        ratio = jnp.broadcast_to(w, log_ratio.shape)
        term = phi * adv * masked(logp, mask)
        high = low = jnp.zeros(log_ratio.shape, bool)
    else:  # pragma: no cover - enums are validated
        raise ValueError(f"unknown objective {obj!r}")
    return Surrogate(
        term=masked(term, mask),
        ratio=masked(ratio, mask),
        clipped_high=high & m,
        clipped_low=low & m,
    )
