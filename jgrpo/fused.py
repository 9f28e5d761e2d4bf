"""The fused loss: Eq. 1 for the clipped-ratio family with a hand-written gradient (``jax.custom_vjp``).

For every method whose token weights are constant along a completion,
alpha_{i,t} = c_i m_{i,t} (Table 1's alpha^S, 1/(G|o_i|), 1/sum_j|o_j|, 1/G, ... times
1/sigma, CPPO's 1{|A_i| > gamma}, V3.2's M_i, GPG's alpha-hat), Eq. 1 is a sum of
per-completion reductions:

    J_b = sum_i c_i S_i - beta sum_i kappa_i K_i,   S_i = sum_t m_{i,t} f(s_{i,t}, A_i),   K_i = sum_t m_{i,t} D_{i,t}

with f(s, A) = min(s A, clip(s, 1 - eps_low, 1 + eps_high) A) (dual clip and ratio cap
included) and D the KL estimate. The reductions are the only part that touches the
``[..., G, T]`` arrays. :func:`row_stats` computes them (and every aux statistic of
``jgrpo.loss``) in one pass over logp, logp_old, mask (and logp_ref), processed in
blocks of rows that stay in cache; its VJP is one elementwise pass that recomputes each
token's derivative from the same inputs (closed forms below, nothing stored) and writes
dJ/dlogp. Everything per completion (c_i, A_i, sigma, the sequence ratios of GSPO and
GCPO) is ordinary JAX on ``[..., G]`` arrays, differentiated by autodiff.

``jgrpo.loss`` uses this path wherever :func:`supports` allows (``fused=None``); the
autodiff path (``fused=False``) stays the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jgrpo.advantages import centred_advantages, reward_scale
from jgrpo.batch import GroupBatch
from jgrpo.methods import KLEstimator, MethodSpec, Objective, RatioLevel, Regularizer, SequenceTerms
from jgrpo.weights import _safe_inv, gpg_factor, offpolicy_mask_rows, prune_factor, row_normaliser

__all__ = ["RowStats", "loss", "row_stats", "supports"]

sg = lax.stop_gradient

# Elements of one [..., G, T] input per block of rows (2^18 float32 = 1 MiB): the 3-4 inputs of a
# block and its temporaries stay in the L2/L3 cache while every statistic of the block is reduced.
BLOCK_ELEMENTS = 2**18


def supports(spec: MethodSpec, batch: GroupBatch) -> str | None:
    """Why the fused path does not apply to ``spec`` and ``batch`` (None when it does).

    It applies to objectives ``ppo_clip`` (token or sequence ratio), ``gspo`` (GSPO-token form)
    and ``sequence`` (GCPO), with any aggregation, scope, reward scale, CPPO pruning, V3.2
    off-policy mask, GPG rescaling, dual clip, ratio cap and log-ratio clamp, and a KL
    regularizer (``kl`` or ``kl_importance``, any estimator) or none. Not: token weights that
    vary along a completion (GTPO's lambda, ``top_entropy_quantile``, ``prefix_debias``), GTPO's
    entropy filter and regularizer, the entropy bonus, and the other objectives.
    """
    if spec.objective not in (Objective.PPO_CLIP, Objective.GSPO, Objective.SEQUENCE):
        return f"objective {spec.objective.value!r} is not a clipped-ratio objective"
    if spec.gtpo_conflicts:
        return "GTPO's conflict-token lambda varies along a completion"
    if spec.prefix_debias:
        return "prefix_debias gives token weights that vary along a completion"
    if spec.top_entropy_quantile < 1.0:
        return "top_entropy_quantile masks tokens inside a completion"
    if spec.entropy_threshold is not None:
        return "GTPO's entropy filter reads batch.entropy"
    if spec.entropy_coef != 0:
        return "the entropy bonus reads batch.entropy"
    if spec.beta > 0 and spec.regularizer == Regularizer.GTPO_ENTROPY:
        return "GTPO's entropy regularizer reads batch.entropy"
    del batch  # every GroupBatch field combination is supported
    return None


# ----------------------------------------------------------------------------- what one pass computes


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of the reductions (a ``nondiff`` argument of the custom VJP)."""

    spec: MethodSpec
    token_term: bool  # S_i = sum_t m f(I_t, A_i) (ppo_clip at token level)
    kl_importance: bool  # KI_i = sum_t m I_t D_t (kl_importance at token level)
    kl_clamp: float | None  # c of |logp_ref - logp| > c counted in clamp_frac (k3 KL in use)


class RowStats(NamedTuple):
    """Per-completion reductions ``[..., G]`` of one fused pass.

    Differentiable (hand-written VJP): ``term_sum`` S_i = sum_t m f(I_t, A_i) (ppo_clip, token ratio;
    0 otherwise), ``length`` L_i = sum_t m (as ``jgrpo.weights.lengths``: d/dm = 1 on every position),
    ``tokens`` the same count as the weight of a per-completion term (d/dm = 1 on completion tokens
    only, as the masked terms of the autodiff path), ``log_ratio_sum`` R_i = sum_t m log I_t, ``probe`` P_i
    = sum_t m u_t and ``curvature`` Q_i = sum_t m u_t^2 / 2 with u_t = logp_t - sg[logp_t] (values 0; w.r.t.
    logp only: P has gradient m and no curvature, Q gradient 0 and Hessian diag(m); GSPO-token's
    sg[s_i / pi] pi to second order), ``kl_sum`` K_i = sum_t m D_t,
    ``kl_importance_sum`` KI_i = sum_t m I_t D_t (0 unless needed).
    Statistics (no gradient): ``clip_count`` tokens whose clip is active (above for A_i > 0, below
    for A_i < 0), ``clamp_count`` tokens with the token log-ratio beyond [log_ratio_min,
    log_ratio_max] or (k3 KL in use) |logp_ref - logp| > kl_log_ratio_clamp, ``kl_clamp_count`` the
    latter alone, ``ratio_sum`` / ``ratio_min`` / ``ratio_max`` of I_t over completion tokens.
    """

    term_sum: jax.Array
    length: jax.Array
    tokens: jax.Array
    log_ratio_sum: jax.Array
    probe: jax.Array
    curvature: jax.Array
    kl_sum: jax.Array
    kl_importance_sum: jax.Array
    clip_count: jax.Array
    clamp_count: jax.Array
    kl_clamp_count: jax.Array
    ratio_sum: jax.Array
    ratio_min: jax.Array
    ratio_max: jax.Array


_DIFFERENTIABLE = (
    "term_sum",
    "length",
    "tokens",
    "log_ratio_sum",
    "probe",
    "curvature",
    "kl_sum",
    "kl_importance_sum",
)


# ----------------------------------------------------------------------------- per-token closed forms


def _wmin(x, y):
    """d min(x, y) / dx as JAX defines it: 1 if x < y, 1/2 on a tie, 0 otherwise (in the arrays' dtype)."""
    dtype = jnp.result_type(x, y)
    return jnp.where(x < y, 1.0, jnp.where(x == y, 0.5, 0.0)).astype(dtype)


def _wmax(x, y):
    """d max(x, y) / dx as JAX defines it: 1 if x > y, 1/2 on a tie, 0 otherwise."""
    return _wmin(y, x)


def _clip_and_slope(x, lo, hi):
    """``jnp.clip(x, lo, hi)`` = min(max(x, lo), hi) and its derivative (1/2 on a bound, as JAX's min/max).

    With static bounds ``lo < hi`` the slope d max/dx * d min/dy (y = max(x, lo)) is 1 strictly inside,
    1/2 on either bound and 0 outside or at NaN: written so, it costs four compares and two selects per
    element instead of two tie-aware derivatives and their product (same values).
    """
    y = jnp.maximum(x, lo)
    value = jnp.minimum(y, hi)
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi:
        dtype = jnp.result_type(x)
        one, half, zero = (jnp.asarray(v, dtype) for v in (1.0, 0.5, 0.0))
        inside = (x > lo) & (x < hi)
        on_bound = (x == lo) | (x == hi)
        return value, jnp.where(inside, one, jnp.where(on_bound, half, zero))
    return value, _wmax(x, lo) * _wmin(y, hi)


def _wmin_pair(x, y):
    """(d min(x, y)/dx, d min(x, y)/dy) with JAX's tie rule, sharing the tie compare."""
    dtype = jnp.result_type(x, y)
    one, half, zero = (jnp.asarray(v, dtype) for v in (1.0, 0.5, 0.0))
    tie = jnp.where(x == y, half, zero)
    return jnp.where(x < y, one, tie), jnp.where(y < x, one, tie)


class _Token(NamedTuple):
    """Per-token values (and derivatives) of one block ``[r, T]``; zero on padding."""

    x: jax.Array  # log I = logp - logp_old
    ratio: jax.Array  # I = exp(clip(log I)) (on padding: 1)
    ratio_slope: jax.Array  # dI / dlog I
    term: jax.Array | None  # f(I, A)
    dterm_dratio: jax.Array | None
    dterm_dadv: jax.Array | None
    kl: jax.Array | None  # D
    dkl_dx: jax.Array | None  # dD / d(logp_ref - logp)


def _ppo_term(spec: MethodSpec, ratio, adv):
    """f(s, A) = min(u A, clip(s) A), u = min(s, cap); dual clip for A < 0 (:func:`jgrpo.ratios.ppo_clip_term`).

    Returns ``(f, df/ds, df/dA)`` with JAX's tie rule (1/2 to each side of a tied min or max).
    """
    lo, hi = 1.0 - spec.eps_low, 1.0 + spec.eps_high
    if spec.ratio_cap is None:
        u, du = ratio, jnp.ones_like(ratio)
    else:
        u, du = jnp.minimum(ratio, spec.ratio_cap), _wmin(ratio, spec.ratio_cap)
    c, dc = _clip_and_slope(ratio, lo, hi)
    p, q = u * adv, c * adv
    term = jnp.minimum(p, q)
    wp, wq = _wmin_pair(p, q)
    d_ratio = adv * (wp * du + wq * dc) if spec.ratio_cap is not None else adv * (wp + wq * dc)
    d_adv = wp * u + wq * c
    if spec.dual_clip is not None:
        floor = spec.dual_clip * adv
        wt, wf = _wmax(term, floor), _wmax(floor, term)
        neg = adv < 0
        d_ratio = jnp.where(neg, wt * d_ratio, d_ratio)
        d_adv = jnp.where(neg, wt * d_adv + wf * spec.dual_clip, d_adv)
        term = jnp.where(neg, jnp.maximum(term, floor), term)
    return term, d_ratio, d_adv


def _kl(spec: MethodSpec, x):
    """The KL estimate D(x), x = logp_ref - logp (:func:`jgrpo.regularizers.kl_estimate`), and dD/dx."""
    if spec.kl == KLEstimator.K1:
        return -x, -jnp.ones_like(x)
    if spec.kl == KLEstimator.K2:
        return 0.5 * jnp.square(x), x
    if spec.kl == KLEstimator.ABS:
        return jnp.abs(x), jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    dx = jnp.ones_like(x)
    if spec.kl_log_ratio_clamp is not None:
        c = spec.kl_log_ratio_clamp
        x, dx = _clip_and_slope(x, -c, c)
    e = jnp.exp(x)
    value, dvalue = e - x - 1.0, (e - 1.0) * dx
    if spec.kl_value_clamp is not None:
        c = spec.kl_value_clamp
        value, dv = _clip_and_slope(value, -c, c)
        dvalue = dvalue * dv
    return value, dvalue


def _token(plan: _Plan, logp, logp_old, mb, logp_ref, adv) -> _Token:
    """Values and derivatives of every per-token piece (XLA keeps the ones that are used)."""
    spec = plan.spec
    zero = jnp.zeros((), logp.dtype)
    x = jnp.where(mb, logp - logp_old, zero)
    xc, dxc = _clip_and_slope(x, spec.log_ratio_min, spec.log_ratio_max)
    ratio = jnp.exp(xc)
    term = dterm = dadv = kl = dkl = None
    if plan.token_term:
        term, dterm, dadv = _ppo_term(spec, ratio, adv[:, None])
    if logp_ref is not None:
        kl, dkl = _kl(spec, jnp.where(mb, logp_ref, zero) - jnp.where(mb, logp, zero))
    return _Token(x, ratio, ratio * dxc, term, dterm, dadv, kl, dkl)


# ----------------------------------------------------------------------------- the forward pass


def _block_stats(plan: _Plan, logp, logp_old, mask, logp_ref, adv) -> RowStats:
    """:class:`RowStats` of a block of rows ``[r, T]`` (``adv`` ``[r]``).

    The statistics of the log-ratio alone (L_i, R_i, the clamp counts: no exp) are one variadic
    ``lax.reduce``, which XLA's CPU backend emits as one loop fusion reading the inputs directly (no
    ``[r, T]`` temporary; separate ``jnp.sum`` calls each become a library reduction of a materialised
    operand). Those of the ratio (S_i, K_i, the ratio statistics) stay separate reductions: a variadic
    reduction fusion that holds the exp runs scalar on that backend, several times slower than the
    vectorised library reduction of its in-cache operand. XLA prunes what the caller does not use.
    """
    spec = plan.spec
    dtype = logp.dtype
    mb = mask != 0
    tok = _token(plan, logp, logp_old, mb, logp_ref, adv)
    zero = jnp.zeros((), dtype)
    zeros = jnp.zeros(mask.shape[:-1], dtype)
    inf = jnp.asarray(jnp.inf, dtype)

    def masked(v):
        return jnp.where(mb, v, zero)

    def flag(flags):
        return (mb & flags).astype(dtype)

    a = adv[:, None]
    lo, hi = 1.0 - spec.eps_low, 1.0 + spec.eps_high
    clipped = ((a > 0) & (tok.ratio > hi)) | ((a < 0) & (tok.ratio < lo))
    clamped = (tok.x < spec.log_ratio_min) | (tok.x > spec.log_ratio_max)
    has_kl_clamp = plan.kl_clamp is not None and logp_ref is not None
    kl_clamped = None
    if has_kl_clamp:
        xr = jnp.where(mb, logp_ref, zero) - jnp.where(mb, logp, zero)
        kl_clamped = jnp.abs(xr) > plan.kl_clamp
    # Summed per-token operands (None: the statistic is identically zero for this plan).
    sums = {
        "term_sum": masked(tok.term) if plan.token_term else None,
        "length": mask.astype(dtype),
        "log_ratio_sum": tok.x,
        "kl_sum": masked(tok.kl) if tok.kl is not None else None,
        "kl_importance_sum": masked(tok.ratio * tok.kl) if plan.kl_importance and tok.kl is not None else None,
        "clip_count": flag(clipped),
        "clamp_count": flag(clamped | kl_clamped) if has_kl_clamp else flag(clamped),
        "kl_clamp_count": flag(kl_clamped) if has_kl_clamp else None,
        "ratio_sum": masked(tok.ratio),
    }
    cheap = ("length", "log_ratio_sum", "clamp_count", "kl_clamp_count")
    names = [k for k in cheap if sums[k] is not None]
    reduced = _row_sums(tuple(sums[k] for k in names))
    out = dict(zip(names, reduced, strict=True))
    out.update({k: jnp.sum(v, axis=-1) for k, v in sums.items() if v is not None and k not in cheap})
    return RowStats(
        term_sum=out.get("term_sum", zeros),
        length=out["length"],
        tokens=out["length"],
        log_ratio_sum=out["log_ratio_sum"],
        probe=zeros,
        curvature=zeros,
        kl_sum=out.get("kl_sum", zeros),
        kl_importance_sum=out.get("kl_importance_sum", zeros),
        clip_count=out["clip_count"],
        clamp_count=out["clamp_count"],
        kl_clamp_count=out.get("kl_clamp_count", zeros),
        ratio_sum=out["ratio_sum"],
        ratio_min=jnp.min(jnp.where(mb, tok.ratio, inf), axis=-1),
        ratio_max=jnp.max(jnp.where(mb, tok.ratio, -inf), axis=-1),
    )


def _add_all(xs, ys):
    """The combiner of a variadic sum."""
    return tuple(x + y for x, y in zip(xs, ys, strict=True))


@jax.custom_jvp
def _row_sums(xs: tuple) -> tuple:
    """Sums over the last axis of every array in ``xs`` as one variadic reduce (one loop over the inputs).

    Its JVP is the sums of the tangents: JAX's own JVP of a variadic ``lax.reduce`` fails on symbolic-zero
    tangents, which reach it when the fused loss is differentiated twice (e.g. ``analysis.prefix``'s
    coefficients inside a gradient w.r.t. the parameters).
    """
    zeros = tuple(jnp.zeros((), x.dtype) for x in xs)
    return tuple(lax.reduce(xs, zeros, _add_all, (xs[0].ndim - 1,)))


@_row_sums.defjvp
def _row_sums_jvp(primals, tangents):
    (xs,), (ts,) = primals, tangents
    return _row_sums(xs), tuple(jnp.sum(t, axis=-1) for t in ts)


def _block_rows(rows: int, width: int) -> int:
    return max(1, min(rows, BLOCK_ELEMENTS // max(width, 1)))


def _forward(plan: _Plan, logp, logp_old, mask, logp_ref, adv) -> RowStats:
    """The one pass: rows in blocks of ~``BLOCK_ELEMENTS`` (a ``lax.map`` over blocks), the rest in one block."""
    lead, width = logp.shape[:-1], logp.shape[-1]
    rows = math.prod(lead)
    flat = [None if z is None else z.reshape(rows, width) for z in (logp, logp_old, mask, logp_ref)]
    flat_adv = adv.reshape(rows)
    rb = _block_rows(rows, width)
    nb = rows // rb
    if nb <= 1:
        out = _block_stats(plan, *flat, flat_adv)
    else:

        def block(i):
            start = i * rb
            part = [None if z is None else lax.dynamic_slice_in_dim(z, start, rb) for z in flat]
            return _block_stats(plan, *part, lax.dynamic_slice_in_dim(flat_adv, start, rb))

        out = lax.map(block, jnp.arange(nb))
        out = jax.tree.map(lambda v: v.reshape(nb * rb), out)
        if nb * rb < rows:
            rest = _block_stats(plan, *[None if z is None else z[nb * rb :] for z in flat], flat_adv[nb * rb :])
            out = jax.tree.map(lambda u, v: jnp.concatenate([u, v]), out, rest)
    return jax.tree.map(lambda v: v.reshape(lead), out)


# ----------------------------------------------------------------------------- the custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def row_stats(plan: _Plan, logp, logp_old, mask, logp_ref, adv) -> RowStats:
    """Every per-completion reduction of Eq. 1 in one pass (see :class:`RowStats`), with a hand-written VJP.

    Args:
      plan: what to reduce (static).
      logp, logp_old, mask: ``[..., G, T]`` in the compute dtype (mask 0/1 as a float).
      logp_ref: ``[..., G, T]`` or None.
      adv: ``[..., G]`` A_i.
    """
    return _forward(plan, logp, logp_old, mask, logp_ref, adv)


def _row_stats_fwd(plan, logp, logp_old, mask, logp_ref, adv):
    args = (logp, logp_old, mask, logp_ref, adv)
    values = tuple(None if a is None else a.value for a in args)
    # Which inputs are differentiated, as pytree structure (a static fact): () yes, None no.
    wanted = tuple(() if a is not None and a.perturbed else None for a in args)
    return _forward(plan, *values), (values, wanted)


@jax.custom_jvp
def _curvature_term(g: jax.Array, logp: jax.Array) -> jax.Array:
    """g u with u = logp - sg[logp]: zeros in value (XLA drops the term), derivative g dlogp (Q's Hessian g diag(m))."""
    return jnp.zeros(jnp.broadcast_shapes(g.shape, logp.shape), logp.dtype)


@_curvature_term.defjvp
def _curvature_term_jvp(primals, tangents):
    g, logp = primals
    _, dlogp = tangents
    return _curvature_term(g, logp), g * dlogp


def _row_stats_bwd(plan, residuals, ct: RowStats):
    """One elementwise pass: each token's derivative recomputed from logp, logp_old, mask, logp_ref.

    With g_X the cotangent of the per-completion sum X and m the mask:
      d/dlogp     = m (g_S f_s I' + g_P + g_Q u - g_K D' + g_KI (I' D - I D')) + g_R
      d/dlogp_old = -m (g_S f_s I' + g_KI I' D) - g_R
      d/dlogp_ref = m (g_K D' + g_KI I D')
      d/dmask     = g_L + m (g_S f + g_N + g_K D + g_KI I D)   (the mask multiplies each token's term)
      d/dA_i      = g_S sum_t m f_A
    where f_s, f_A are the partial derivatives of f(s, A) (:func:`_ppo_term`), I' = dI/dlog I
    (zero where the log-ratio clamp is active) and D' = dD/d(logp_ref - logp). Cotangents that are
    symbolically zero, and inputs that are not differentiated, cost nothing. Every term is zero on
    padding. The pass is differentiable JAX on the residuals (the inputs), so differentiating it again
    gives the autodiff path's second derivatives w.r.t. logp and mixed with logp_old, logp_ref and the
    rewards (tests/test_fused.py): u = logp - sg[logp] is 0 in value (:func:`_curvature_term`) and
    carries Q's curvature; the explicit factor m of the terms weighted by the mask (alpha = c m, the
    KL's weight) gives the mixed derivatives w.r.t. the mask too, except where a sequence-level ratio
    has a gradient (TRL's sequence level, GCPO, GSPO's sequence-level KL importance weight): there
    the mixed logp-mask derivatives differ.
    """
    values, wanted = residuals
    want_lp, want_lpo, want_mask, want_ref, want_adv = (w is not None for w in wanted)
    # A barrier keeps XLA from merging this pass with the forward one (which would store I_t).
    logp, logp_old, mask, logp_ref, adv = lax.optimization_barrier(values)
    dtype = logp.dtype
    shape = logp.shape
    rows = math.prod(shape[:-1])

    def col(name):
        g = getattr(ct, name)
        return None if isinstance(g, SymbolicZero) else g.astype(dtype).reshape(rows, 1)

    g_s, g_l, g_n, g_r, g_p, g_q, g_k, g_ki = (col(name) for name in _DIFFERENTIABLE)
    if not plan.token_term:
        g_s = None
    if logp_ref is None:
        g_k = g_ki = None
    if not plan.kl_importance:
        g_ki = None
    flat = lambda z: None if z is None else z.reshape(rows, shape[-1])  # noqa: E731
    mb = flat(mask) != 0
    tok = _token(plan, flat(logp), flat(logp_old), mb, flat(logp_ref), adv.reshape(rows))
    zero = jnp.zeros((), dtype)

    def total(weighted, plain=()):
        """where(m, m * sum(weighted) + sum(plain), 0): the terms whose token weight is m (alpha = c m, the
        KL's weight) times m, so that their derivatives w.r.t. the mask are those of the autodiff path."""
        weighted = [p for p in weighted if p is not None]
        plain = [p for p in plain if p is not None]
        if not weighted and not plain:
            return None
        out = None
        if weighted:
            out = functools.reduce(jnp.add, weighted) * flat(mask)
        if plain:
            out = functools.reduce(jnp.add, plain, zero if out is None else out)
        return jnp.where(mb, out, zero).reshape(shape)

    def times(g, v):
        return None if g is None else g * v

    d_lp = d_lpo = d_ref = d_mask = d_adv = None
    if want_lp:
        d_lp = total(
            [
                g_p,
                None if g_q is None else _curvature_term(g_q, flat(logp)),
                times(g_s, tok.dterm_dratio * tok.ratio_slope if g_s is not None else None),
                times(g_k, -tok.dkl_dx if g_k is not None else None),
                times(g_ki, tok.ratio_slope * tok.kl - tok.ratio * tok.dkl_dx if g_ki is not None else None),
            ],
            [g_r],
        )
    if want_lpo:
        d_lpo = total(
            [
                times(g_s, -tok.dterm_dratio * tok.ratio_slope if g_s is not None else None),
                times(g_ki, -tok.ratio_slope * tok.kl if g_ki is not None else None),
            ],
            [times(g_r, -1.0)],
        )
    if want_ref:
        d_ref = total(
            [
                times(g_k, tok.dkl_dx if g_k is not None else None),
                times(g_ki, tok.ratio * tok.dkl_dx if g_ki is not None else None),
            ]
        )
    if want_mask:
        d_mask = total(
            [],
            [
                times(g_s, tok.term if g_s is not None else None),
                g_n,
                times(g_k, tok.kl if g_k is not None else None),
                times(g_ki, tok.ratio * tok.kl if g_ki is not None else None),
            ],
        )
        if g_l is not None:
            d_mask = jnp.broadcast_to(g_l.reshape(shape[:-1] + (1,)), shape) + (0.0 if d_mask is None else d_mask)
        if d_mask is not None:
            d_mask = d_mask.astype(mask.dtype)
    if want_adv and g_s is not None:
        d_adv = jnp.sum(jnp.where(mb, tok.dterm_dadv, zero), axis=-1) * g_s[:, 0]
        d_adv = d_adv.reshape(adv.shape).astype(adv.dtype)
    return d_lp, d_lpo, d_mask, d_ref, d_adv


row_stats.defvjp(_row_stats_fwd, _row_stats_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------- Eq. 1 per completion


def _plan(spec: MethodSpec, has_ref: bool) -> _Plan:
    uses_kl = spec.beta > 0 and spec.regularizer in (Regularizer.KL, Regularizer.KL_IMPORTANCE)
    token_level = spec.objective == Objective.PPO_CLIP and spec.ratio_level == RatioLevel.TOKEN
    kl_importance = uses_kl and spec.regularizer == Regularizer.KL_IMPORTANCE and spec.ratio_level == RatioLevel.TOKEN
    kl_clamp = spec.kl_log_ratio_clamp if uses_kl and has_ref and spec.kl == KLEstimator.K3 else None
    return _Plan(spec=spec, token_term=token_level, kl_importance=kl_importance, kl_clamp=kl_clamp)


def loss(spec: MethodSpec, logp: jax.Array, batch: GroupBatch) -> tuple[jax.Array, dict]:
    """``jgrpo.loss`` on the fused path: the same value, gradient and ``aux`` for a supported ``spec``.

    Implements Eq. (1) of arXiv 2601.05002 as J_b = sum_i c_i S_i - beta sum_i kappa_i K_i (module
    docstring): the token sums come from :func:`row_stats` (one pass; a hand-written VJP), the
    per-completion factors from the same functions as the autodiff path (``jgrpo.weights``,
    ``jgrpo.advantages``, ``jgrpo.ratios.ppo_clip_term``).

    Args:
      spec: a supported :class:`jgrpo.MethodSpec` (:func:`supports`).
      logp: ``[..., G, T]`` already in the compute dtype (``jgrpo.objective._prepare``).
      batch: the prepared :class:`jgrpo.GroupBatch` (rewards combined, logp_old in the compute dtype).

    Returns:
      ``(loss, aux)`` as :func:`jgrpo.loss`.

    Note:
      Reverse-over-reverse second derivatives (``jax.grad`` of a gradient: Hessian-vector products)
      equal the autodiff path's (:func:`_row_stats_bwd`). Forward-mode differentiation (``jax.jvp``,
      ``jax.hessian``) of a ``custom_vjp`` is not available: use ``jgrpo.loss(..., fused=False)``.
    """
    from jgrpo.ratios import ppo_clip_term  # the same f(s, A) as the autodiff path, per completion

    dtype = logp.dtype
    mask = batch.mask
    width = mask.shape[-1]
    maskf = mask.astype(dtype)
    logp_old = batch.logp_old
    logp_ref = None if batch.logp_ref is None else jnp.asarray(batch.logp_ref).astype(dtype)
    adv = centred_advantages(spec, batch.rewards) if batch.advantages is None else jnp.asarray(batch.advantages, dtype)
    adv = adv.astype(dtype)
    plan = _plan(spec, logp_ref is not None)
    st = row_stats(plan, logp, logp_old, maskf, logp_ref, adv)
    length = st.length
    rewards = batch.rewards

    # alpha_{i,t} = c_i m_{i,t} (jgrpo.weights.policy_weights, per completion).
    per = reward_scale(spec, rewards) * prune_factor(spec, adv, rewards)
    per = per * offpolicy_mask_rows(spec, adv, sg(st.log_ratio_sum), length.astype(jnp.float32))
    per = per * gpg_factor(spec, rewards)
    norm = row_normaliser(spec, length, width)
    coef = (norm * per).astype(dtype)
    if spec.objective == Objective.SEQUENCE and spec.sequence_terms == SequenceTerms.ONCE:
        coef = coef * _safe_inv(length).astype(dtype)

    clamp = lambda v: jnp.clip(v, spec.log_ratio_min, spec.log_ratio_max)  # noqa: E731
    safe_len = jnp.maximum(length, 1.0)
    lo, hi = 1.0 - spec.eps_low, 1.0 + spec.eps_high
    if plan.token_term:
        term_sum = st.term_sum
        clip_high = jnp.where(adv > 0, st.clip_count, 0.0)
        clip_low = jnp.where(adv < 0, st.clip_count, 0.0)
        clamp_count = st.clamp_count
        ratio_sum, ratio_min, ratio_max = st.ratio_sum, st.ratio_min, st.ratio_max
        seq_ratio = None
    else:
        # One ratio per completion: GSPO-token (value s_i, gradient s_i dlogp_t through the probes),
        # TRL's sequence level (gradient through the mean), GCPO (whole-sequence product).
        if spec.objective == Objective.GSPO:
            x = sg(st.log_ratio_sum / safe_len)
        elif spec.objective == Objective.SEQUENCE:
            x = st.log_ratio_sum
        else:
            x = st.log_ratio_sum / safe_len
        seq_ratio = jnp.exp(clamp(x))
        term = ppo_clip_term(spec, seq_ratio, adv)
        term_sum = st.tokens * term
        if spec.objective == Objective.GSPO:
            # GSPO-token: each token's term is f(exp(clamp(u_t + x_i)), A_i), u_t = logp_t - sg[logp_t] = 0,
            # so J_i = sum_t m f depends on logp through u alone, token by token: its gradient is
            # phi'(x_i) m and its Hessian phi''(x_i) diag(m), phi(z) = f(exp(clamp(z)), A_i) (derivatives by
            # JAX, ties included). The probes P (gradient m) and Q (Hessian diag(m)) carry exactly these;
            # x_i is constant (sg), so phi' and phi'' vary with A_i only (the mixed derivatives).
            def phi(z):
                return ppo_clip_term(spec, jnp.exp(clamp(z)), adv)

            ones = jnp.ones_like(x)
            slope, curve = jax.jvp(lambda z: jax.jvp(phi, (z,), (ones,))[1], (x,), (ones,))
            term_sum = term_sum + slope * st.probe + curve * st.curvature
        nonempty = length > 0
        clip_high = jnp.where((adv > 0) & (seq_ratio > hi), length, 0.0)
        clip_low = jnp.where((adv < 0) & (seq_ratio < lo), length, 0.0)
        if spec.objective == Objective.PPO_CLIP:
            clamp_count = st.clamp_count  # jgrpo.objective.clamp_active reads the token log-ratio here
        else:
            row_clamped = (x < spec.log_ratio_min) | (x > spec.log_ratio_max)
            clamp_count = jnp.where(row_clamped, length, st.kl_clamp_count)
        ratio_value = sg(seq_ratio)
        ratio_sum = length * ratio_value
        ratio_min = jnp.where(nonempty, ratio_value, jnp.inf)
        ratio_max = jnp.where(nonempty, ratio_value, -jnp.inf)

    policy = jnp.sum(coef * term_sum, axis=-1)
    reg_rows = jnp.zeros_like(length)
    if spec.beta > 0 and spec.regularizer in (Regularizer.KL, Regularizer.KL_IMPORTANCE):
        if spec.regularizer == Regularizer.KL:
            reg_rows = st.kl_sum
        elif plan.kl_importance:
            reg_rows = st.kl_importance_sum
        else:  # sequence-level importance weight s_i = exp(clip(mean_t log I)), gradient through the mean
            reg_rows = jnp.exp(clamp(st.log_ratio_sum / safe_len)) * st.kl_sum
        kappa = row_normaliser(spec, length, width).astype(dtype)
        reg = jnp.sum(kappa * reg_rows, axis=-1)
    else:
        reg = jnp.zeros_like(policy)
    bonus = jnp.zeros((), dtype)
    objective = policy - spec.beta * reg + bonus
    value = -jnp.mean(objective)

    n = jnp.maximum(jnp.sum(length), 1.0)
    if logp_ref is not None:
        kl = jnp.sum(st.kl_sum) / n
    else:
        kl = jnp.zeros((), dtype)
    aux = {
        "objective": objective,
        "policy": policy,
        "regularizer": reg,
        "bonus": bonus,
        "advantages": adv,
        "omega": coef * length,
        "clip_frac_high": jnp.sum(clip_high) / n,
        "clip_frac_low": jnp.sum(clip_low) / n,
        "clamp_frac": jnp.sum(clamp_count) / n,
        "ratio_min": jnp.min(ratio_min),
        "ratio_mean": jnp.sum(ratio_sum) / n,
        "ratio_max": jnp.max(ratio_max),
        "kl": kl,
        "finite": jnp.isfinite(value) & jnp.all(jnp.isfinite(term_sum)),
    }
    aux = {k: sg(v).astype(dtype) if k not in ("objective", "finite") else v for k, v in aux.items()}
    return value, aux
