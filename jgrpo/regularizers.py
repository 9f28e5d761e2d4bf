"""The regularizer R(theta) of Eq. 1: KL estimators and GTPO's entropy term."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jgrpo.methods import KLEstimator, MethodSpec, RatioLevel, Regularizer
from jgrpo.ratios import masked, sequence_log_ratio, token_log_ratio
from jgrpo.weights import entropy_filter, gtpo_lambda, mean_entropy, normaliser


def kl_estimate(spec: MethodSpec, logp: jax.Array, logp_ref: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-token KL estimate ``[..., G, T]``, zero on padding.

    With x = logp_ref - logp: k1 = -x, k2 = x^2/2, k3 = exp(x) - x - 1 (the
    paper's D_KL = pi_ref/pi - log(pi_ref/pi) - 1), abs = |x|.

    Note:
      For k3 only, x is clamped to +-``kl_log_ratio_clamp`` before exp (zero
      gradient beyond) and the value to +-``kl_value_clamp`` when set: verl's
      ``low_var_kl``. k1, k2 and abs have no exp and are never clamped, as in
      verl's ``kl_penalty_forward`` (``kl``/``k1``, ``mse``/``k2``, ``abs``).
    """
    x = masked(logp_ref, mask) - masked(logp, mask)
    if spec.kl == KLEstimator.K1:
        value = -x
    elif spec.kl == KLEstimator.K2:
        value = 0.5 * jnp.square(x)
    elif spec.kl == KLEstimator.ABS:
        value = jnp.abs(x)
    else:
        if spec.kl_log_ratio_clamp is not None:
            x = jnp.clip(x, -spec.kl_log_ratio_clamp, spec.kl_log_ratio_clamp)
        value = jnp.exp(x) - x - 1.0
        if spec.kl_value_clamp is not None:
            value = jnp.clip(value, -spec.kl_value_clamp, spec.kl_value_clamp)
    return masked(value, mask)


def regularizer_terms(spec: MethodSpec, logp: jax.Array, batch, advantages: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token value and weight of R, ``R = sum_t weight * value`` per prompt.

    - ``kl``: value D_KL, weight = the policy normaliser without 1/sigma.
    - ``kl_importance``: value I * D_KL (DeepSeek-V3.2; TRL's ``use_bias_correction_kl``), same
      weight; the gradient flows through I too. With ``ratio_level='sequence'`` I is the
      sequence ratio s_i = exp(mean_t log I) broadcast over the tokens (gradient through the
      mean), as TRL's ``coef_1`` at ``importance_sampling_level='sequence'``.
    - ``gtpo_entropy``: value I, weight delta_i <H>_i / (G |o_i|) lambda_{i,t}.

    Returns:
      ``(value, weight)``, each ``[..., G, T]``; zeros when R is off.
    """
    mask = batch.mask
    if spec.regularizer == Regularizer.NONE:
        zeros = jnp.zeros(mask.shape, logp.dtype)
        return zeros, zeros
    log_ratio = token_log_ratio(logp, batch.logp_old.astype(logp.dtype), mask)
    if spec.regularizer == Regularizer.KL_IMPORTANCE and spec.ratio_level == RatioLevel.SEQUENCE:
        log_ratio = jnp.broadcast_to(sequence_log_ratio(log_ratio, mask), log_ratio.shape)
    ratio = jnp.exp(jnp.clip(log_ratio, spec.log_ratio_min, spec.log_ratio_max))
    if spec.regularizer == Regularizer.GTPO_ENTROPY:
        # Table 1: R = (1/G) sum_i delta_i <H>_i / |o_i| sum_t I lambda. The 1/(G|o_i|) is the preset's token
        # normaliser (agg seq-mean-token-mean); like the KL, R takes the spec's normaliser, so that an agg
        # override changes R's weighting as it changes alpha's.
        m = mask.astype(jnp.float32)
        per = entropy_filter(spec, batch.entropy, mask) * mean_entropy(batch.entropy, mask)
        lam = gtpo_lambda(spec, batch.tokens, mask, advantages) if spec.gtpo_conflicts else m
        weight = normaliser(spec, mask, jnp.promote_types(logp.dtype, jnp.float32)) * per[..., None] * lam
        return masked(ratio, mask), weight.astype(logp.dtype)
    value = kl_estimate(spec, logp, batch.logp_ref.astype(logp.dtype), mask)
    if spec.regularizer == Regularizer.KL_IMPORTANCE:
        value = ratio * value
    return masked(value, mask), normaliser(spec, mask, logp.dtype)
