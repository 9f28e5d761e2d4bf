"""Token weights alpha_{i,t} of Eq. 1 (Table 1, column alpha).

alpha = normaliser (Agg/Scope) * reward scale (1/sigma) * method factors
(CPPO pruning, V3.2 off-policy mask, GTPO delta*lambda, GPG alpha-hat/F_norm).
Each factor is a separate function so analyses can take any of them apart.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jgrpo.advantages import group_all_equal, reward_scale, reward_std, standardised_advantages
from jgrpo.methods import Agg, FNorm, GpgRescale, MethodSpec, Objective, PruneOn, Scope, SequenceTerms


def lengths(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``[..., G, T] -> [..., G]`` completion lengths L_i = sum_t m_{i,t} (float ``dtype``)."""
    return jnp.sum(mask.astype(dtype), axis=-1)


def num_prompts(mask: jax.Array) -> int:
    """B: the number of groups (product of the leading dims; 1 for ``[G, T]``)."""
    return math.prod(mask.shape[:-2])


def _safe_inv(x):
    return jnp.where(x > 0, 1.0 / jnp.where(x > 0, x, 1.0), 0.0)


def normaliser(spec: MethodSpec, mask: jax.Array, dtype=jnp.float32) -> jax.Array:
    """The aggregation part of alpha, ``[..., G, T]``, zero on padding.

    Implements the token normalisers of Table 1 (1/(G|o_i|), 1/sum_j|o_j|, 1/G,
    1/(G L)) and verl's ``agg_loss`` modes; see :class:`jgrpo.methods.Agg`.
    It is :func:`row_normaliser` of the completion lengths times the mask.

    Note:
      The loss is the mean over prompts of -J_b. With ``Scope.BATCH`` the
      counts run over the whole batch and alpha is multiplied by B, so that the
      mean over prompts equals verl's single batch-wide sum.
    """
    m = mask.astype(dtype)
    return row_normaliser(spec, lengths(mask, dtype), mask.shape[-1])[..., None] * m


def row_normaliser(spec: MethodSpec, length: jax.Array, width: int) -> jax.Array:
    """The aggregation part of alpha per completion, ``[..., G]``, from the lengths L_i ``[..., G]`` (float).

    ``normaliser(spec, mask) = row_normaliser(spec, lengths(mask), T)[..., None] * mask``: every
    normaliser of :class:`jgrpo.methods.Agg` is constant along a completion. ``width`` is the padded
    width T (the L of ``seq-mean-token-sum-norm`` when ``norm_length`` is 0).
    """
    dtype = length.dtype
    g = length.shape[-1]
    if spec.scope == Scope.GROUP:
        n_rows = jnp.asarray(g, dtype)
        n_tokens = jnp.sum(length, axis=-1, keepdims=True)  # [..., 1]
        factor = 1.0
    else:
        n_rows = jnp.sum((length > 0).astype(dtype))
        n_tokens = jnp.sum(length)
        factor = float(math.prod(length.shape[:-1]))
    norm_length = spec.norm_length if spec.norm_length > 0 else float(width)
    if spec.agg == Agg.SEQ_MEAN_TOKEN_MEAN:
        w = _safe_inv(n_rows * length)
    elif spec.agg == Agg.SEQ_MEAN_TOKEN_SUM:
        w = _safe_inv(n_rows) * jnp.ones_like(length)
    elif spec.agg == Agg.SEQ_MEAN_TOKEN_SUM_NORM:
        w = _safe_inv(n_rows * norm_length) * jnp.ones_like(length)
    elif spec.agg == Agg.TOKEN_MEAN:
        w = _safe_inv(n_tokens) * jnp.ones_like(length)
    else:  # TOKEN_SUM
        w = jnp.ones_like(length)
    return factor * w


def prune_factor(spec: MethodSpec, advantages: jax.Array, rewards: jax.Array | None = None) -> jax.Array:
    """CPPO: ``[..., G]`` 1{|A_i| > gamma} (1 everywhere when pruning is off).

    ``prune_on='centred'`` compares the centred A_i of Eq. 2 (Table 1's alpha^S 1{|A_i| > gamma});
    ``'standardised'`` compares A_i / (sigma + std_eps) as the CPPO paper (arXiv 2503.22342), whose
    advantages are GRPO's standardised ones (needs ``rewards``).
    """
    if spec.prune_gamma is None:
        return jnp.ones_like(advantages)
    stat = advantages
    if spec.prune_on == PruneOn.STANDARDISED:
        stat = standardised_advantages(spec, advantages, rewards)
    return (jnp.abs(stat) > spec.prune_gamma).astype(advantages.dtype)


def offpolicy_mask(spec: MethodSpec, advantages: jax.Array, log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
    """DeepSeek-V3.2: ``[..., G]`` M_i = 0 if A_i < 0 and mean_t log(pi_old/pi) > delta, else 1.

    ``log_ratio`` is log(pi/pi_old), zero on padding. Piecewise constant: no gradient.
    """
    if spec.offpolicy_delta is None:
        return jnp.ones_like(advantages)
    return offpolicy_mask_rows(spec, advantages, jnp.sum(log_ratio, axis=-1), lengths(mask))


def offpolicy_mask_rows(
    spec: MethodSpec, advantages: jax.Array, log_ratio_sum: jax.Array, length: jax.Array
) -> jax.Array:
    """:func:`offpolicy_mask` from the per-completion sums sum_t log(pi/pi_old) and lengths L_i, both ``[..., G]``."""
    if spec.offpolicy_delta is None:
        return jnp.ones_like(advantages)
    mean_kl = -log_ratio_sum * _safe_inv(length)
    masked = (advantages < 0) & (jax.lax.stop_gradient(mean_kl) > spec.offpolicy_delta)
    return jnp.where(masked, 0.0, 1.0).astype(advantages.dtype)


def _conflicts_aligned(tokens, valid, sign):
    """Positions where a completion of opposite advantage sign has the same token.

    tokens, valid: ``[..., G, T]``; sign: ``[..., G]``. Returns bool ``[..., G, T]``.
    """
    same = tokens[..., :, None, :] == tokens[..., None, :, :]  # [..., G, G, T]
    both = valid[..., :, None, :] & valid[..., None, :, :]
    opposite = (sign[..., :, None] * sign[..., None, :]) < 0  # [..., G, G]
    return jnp.any(same & both & opposite[..., None], axis=-2)


def _leading_run(flags):
    """Keeps only the run of True values starting at position 0 along the last axis."""
    return jnp.cumprod(flags.astype(jnp.int32), axis=-1).astype(bool)


def conflict_tokens(tokens: jax.Array, mask: jax.Array, advantages: jax.Array) -> jax.Array:
    """GTPO conflict tokens, bool ``[..., G, T]``.

    A token is a conflict token when a completion of opposite advantage sign
    has the same token at the same position, inside the leading run of such
    positions from the start; or at the same position counted from the end,
    inside the trailing run from the end (GTPO, arXiv 2508.03772).

    Note:
      Completions are right-padded: the mask of each row is a prefix of ones.
    """
    valid = mask.astype(bool)
    sign = jnp.sign(advantages)
    lead = _leading_run(_conflicts_aligned(tokens, valid, sign) & valid)
    # Align every row at its end: rev[p] = row[L - 1 - p].
    t = mask.shape[-1]
    length = jnp.sum(valid, axis=-1, keepdims=True).astype(jnp.int32)
    pos = jnp.arange(t)
    rev_idx = jnp.clip(length - 1 - pos, 0, t - 1)
    rev_valid = pos < length
    rev_tokens = jnp.take_along_axis(tokens, rev_idx, axis=-1)
    trail_rev = _leading_run(_conflicts_aligned(rev_tokens, rev_valid, sign) & rev_valid)
    trail = jnp.take_along_axis(trail_rev, rev_idx, axis=-1) & valid
    return lead | trail


def gtpo_lambda(spec: MethodSpec, tokens: jax.Array, mask: jax.Array, advantages: jax.Array) -> jax.Array:
    """GTPO's lambda_{i,t}: w on conflict tokens of positive completions, 0 on those of negative ones, else 1."""
    conflict = conflict_tokens(tokens, mask, advantages)
    pos = (advantages > 0)[..., None]
    lam = jnp.where(conflict, jnp.where(pos, spec.gtpo_w, 0.0), 1.0)
    return lam * mask.astype(jnp.float32)


def mean_entropy(entropy: jax.Array, mask: jax.Array) -> jax.Array:
    """<H>_i: ``[..., G]`` mean per-token entropy of each completion."""
    dtype = jnp.promote_types(entropy.dtype, jnp.float32)
    h = jnp.where(mask.astype(bool), entropy.astype(dtype), 0.0)
    return jnp.sum(h, axis=-1) * _safe_inv(lengths(mask, dtype))


def entropy_filter(spec: MethodSpec, entropy: jax.Array | None, mask: jax.Array) -> jax.Array:
    """GTPO's delta_i = 1{<H>_i <= threshold} ``[..., G]`` (1 when no threshold)."""
    if spec.entropy_threshold is None or entropy is None:
        return jnp.ones(mask.shape[:-1], jnp.float32)
    return (mean_entropy(entropy, mask) <= spec.entropy_threshold).astype(jnp.float32)


def high_entropy_mask(spec: MethodSpec, entropy: jax.Array, mask: jax.Array) -> jax.Array:
    """TRL's ``top_entropy_quantile`` rho: ``[..., G, T]`` 1 on completion tokens whose entropy is at least
    the (1 - rho)-quantile (linear interpolation, as ``torch.quantile``) of the entropies of all completion
    tokens of the batch, else 0. All ones when rho = 1 (off).
    """
    m = mask.astype(bool)
    if spec.top_entropy_quantile >= 1.0:
        return m.astype(jnp.float32)
    dtype = jnp.promote_types(entropy.dtype, jnp.float32)
    h = jax.lax.stop_gradient(entropy.astype(dtype))
    threshold = jnp.nanquantile(jnp.where(m, h, jnp.nan), 1.0 - spec.top_entropy_quantile)
    return (m & (jnp.where(m, h, 0.0) >= threshold)).astype(jnp.float32)


def gpg_factor(spec: MethodSpec, rewards: jax.Array) -> jax.Array:
    """GPG's alpha-hat / F_norm, a scalar.

    ``groups``: alpha-hat = B / (B - M), M groups whose rewards are all equal.
    ``nonzero``: alpha-hat = (B*G) / max(#non-zero rewards, 1) as in verl.
    F_norm: 1, or the std of all rewards of the batch (+ std_eps; 1 if zero).
    """
    factor = jnp.ones((), rewards.dtype)
    if spec.gpg_rescale == GpgRescale.GROUPS:
        b = num_prompts(rewards[..., None])
        m = jnp.sum(group_all_equal(rewards).astype(rewards.dtype))
        factor = jnp.where(b - m > 0, b / jnp.maximum(b - m, 1.0), 1.0)
    elif spec.gpg_rescale == GpgRescale.NONZERO:
        n = rewards.size
        factor = n / jnp.maximum(jnp.sum((rewards != 0).astype(rewards.dtype)), 1.0)
    if spec.f_norm == FNorm.BATCH_STD:
        sigma = reward_std(rewards, ddof=spec.std_ddof, axis=tuple(range(rewards.ndim))).reshape(())
        denom = sigma + spec.std_eps
        factor = factor * jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 1.0)
    return factor


def shared_prefix(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """P[..., i, j, t]: completions i and j have the same tokens at positions 0..t (both valid).

    ``tokens``, ``mask``: ``[..., G, T]``. Returns bool ``[..., G, G, T]`` (P[i, i, t]
    is true on every completion token of i). The prefix tree of the group: the
    node of token (i, t) is {j : P[i, j, t]}.
    """
    valid = mask.astype(bool)
    same = (tokens[..., :, None, :] == tokens[..., None, :, :]) & valid[..., :, None, :] & valid[..., None, :, :]
    return _leading_run(same)


def node_mean(x: jax.Array, prefix: jax.Array) -> jax.Array:
    """Mean of ``x`` [..., G, T] over the prefix-tree node of every token (``prefix`` from :func:`shared_prefix`)."""
    p = prefix.astype(x.dtype)
    count = jnp.sum(p, axis=-2)  # [..., G, T] node sizes (0 on padding)
    total = jnp.einsum("...ijt,...jt->...it", p, x)
    return total * _safe_inv(count)


def policy_weights(spec: MethodSpec, batch, advantages: jax.Array, log_ratio: jax.Array) -> jax.Array:
    """alpha_{i,t} of Eq. 1 for the policy term, ``[..., G, T]`` (zero on padding).

    For objective ``sequence`` (GCPO) every token carries the whole-sequence term, so a
    completion's term counts sum_t alpha_{i,t} = Omega_i times (Table 1 literally: |o_i|/(sigma G));
    with ``sequence_terms='once'`` (or ``prefix_debias``) alpha is divided by |o_i| so that it counts
    once, Omega_i = 1/(sigma G).

    Args:
      spec: the method.
      batch: the :class:`jgrpo.GroupBatch`.
      advantages: ``[..., G]`` centred advantages A_i.
      log_ratio: ``[..., G, T]`` log(pi/pi_old), zero on padding (for V3.2's mask).
    """
    rewards = batch.rewards
    per_completion = reward_scale(spec, rewards)
    per_completion = per_completion * prune_factor(spec, advantages, rewards)
    per_completion = per_completion * offpolicy_mask(spec, advantages, log_ratio, batch.mask)
    per_completion = per_completion * entropy_filter(spec, batch.entropy, batch.mask)
    per_completion = per_completion * gpg_factor(spec, rewards)
    alpha = normaliser(spec, batch.mask, per_completion.dtype) * per_completion[..., None]
    if spec.gtpo_conflicts:
        alpha = alpha * gtpo_lambda(spec, batch.tokens, batch.mask, advantages)
    if spec.top_entropy_quantile < 1.0:
        alpha = alpha * high_entropy_mask(spec, batch.entropy, batch.mask)
    if spec.objective == Objective.SEQUENCE:
        if spec.sequence_terms == SequenceTerms.ONCE or spec.prefix_debias:
            # The completion's term counts once, with the mean of its token weights.
            alpha = alpha * _safe_inv(lengths(batch.mask, alpha.dtype))[..., None]
    elif spec.prefix_debias:
        alpha = node_mean(alpha, shared_prefix(batch.tokens, batch.mask))
    return alpha
