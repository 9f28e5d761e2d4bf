"""Momentum-aware clipping as optax transforms (the future work of arXiv 2601.05002, Limitations).

Prop. 3 / Prop. 7 (``analysis.overshoot``): once a token's ratio crosses the clip
boundary its advantage gradient is exactly 0, yet Adam keeps stepping by
C_{T,k} ≈ (β1/√β2)^{k+1} of its last step. Three remedies, each an optax
transform that composes with ``optax.chain`` and ``optax.inject_hyperparams``:

- ``scale_by_adam_with_reset`` / ``reset_on_new_batch``: start every batch with a
  fresh optimizer state (Asadi et al. 2023) or a fresh step count only (Adam-Rel,
  Ellis et al. 2024). Extra arg ``new_batch``.
- ``scale_by_gated_adam``: Adam whose stale momentum is gated by the clip fraction,
  m_{t−1} ← (1 − c_t) m_{t−1}. Extra args ``clip_fraction`` / ``all_clipped``.
- ``trust_region_guard``: halve the final update while it would move ratios out
  of [1 − ε_low, 1 + ε_up] in the advantage-favoured direction. Needs a callable
  ``ratio_fn(params) -> (ratio, advantages[, mask])``.

Extra args are passed to ``update`` as keywords (``optax.GradientTransformationExtraArgs``);
``optax.chain`` forwards them to every member, and each transform here ignores the
ones it does not use. Omitted, they default to "no new batch", "nothing clipped":
each transform then behaves as plain Adam / identity.

Example::

    from jgrpo import optim

    opt = optax.chain(
        optim.scale_by_gated_adam(b1=0.9, b2=0.95),
        optax.add_decayed_weights(0.01),
        optax.scale_by_learning_rate(1e-6),
        optim.trust_region_guard(eps_low=0.2, eps_high=0.28),
    )
    updates, state = opt.update(grads, state, params,
                                clip_fraction=aux["clip_frac"], ratio_fn=ratio_fn)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "GatedAdamState",
    "ResetState",
    "TrustRegionGuardState",
    "adam_with_reset",
    "gated_adam",
    "reset_on_new_batch",
    "scale_by_adam_with_reset",
    "scale_by_gated_adam",
    "trust_region_guard",
    "violation",
]

_RESET_MODES = ("all", "count")


def _is_concrete_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_range(name, value, lo, hi, *, lo_open=False, hi_open=False):
    """Validate a hyperparameter when it is a Python number (traced values pass through)."""
    if not _is_concrete_number(value):
        return
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if bad_lo or bad_hi:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _check_adam(b1, b2, eps, eps_root):
    _check_range("b1", b1, 0.0, 1.0, hi_open=True)
    _check_range("b2", b2, 0.0, 1.0, hi_open=True)
    _check_range("eps", eps, 0.0, float("inf"))
    _check_range("eps_root", eps_root, 0.0, float("inf"))


def _scalar(name, x, dtype=jnp.float32):
    x = jnp.asarray(x)
    if x.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {x.shape}")
    return x.astype(dtype)


# ----------------------------------------------------------------------------- reset


class ResetState(NamedTuple):
    """State of ``reset_on_new_batch`` / ``scale_by_adam_with_reset``.

    Attributes:
      inner_state: the wrapped transform's state (``optax.ScaleByAdamState`` for Adam).
      num_resets: int32 [], number of updates that started a new batch.
    """

    inner_state: Any
    num_resets: jax.Array


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b).astype(b.dtype), on_true, on_false)


def reset_on_new_batch(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wrap any transform so that its state is re-initialised at the first step of each batch.

    On ``update(..., new_batch=True)`` the state becomes ``inner.init(params)``
    *before* ``inner.update`` runs, so the batch's first step is the inner
    transform's very first step (for Adam: m = v = 0, t = 0, hence u_1 = ±η).
    Momentum from the previous batch — whose clip region no longer exists under the
    new π_old — can therefore not overshoot the new one.

    Extra args: ``new_batch`` (bool scalar, traced; default False).

    Note:
      ``inner.init`` is called on ``params`` (on ``updates`` when ``params`` is None):
      fine for Adam-like states that do not depend on parameter values. Put
      ``optax.inject_hyperparams`` *outside* this wrapper so hyperparameters are
      not reset.
    """

    def init_fn(params):
        return ResetState(inner_state=inner.init(params), num_resets=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, new_batch=False, **extra_args):
        new_batch = _scalar("new_batch", new_batch, jnp.bool_)
        fresh = inner.init(updates if params is None else params)
        inner_state = _select(new_batch, fresh, state.inner_state)
        updates, inner_state = optax.with_extra_args_support(inner).update(updates, inner_state, params, **extra_args)
        return updates, ResetState(inner_state=inner_state, num_resets=state.num_resets + new_batch.astype(jnp.int32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_adam_with_reset(
    *,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    mu_dtype=None,
    reset: str = "all",
) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_adam`` that restarts at every new batch.

    With ``new_batch`` true at step t, before the usual Adam update:

    - ``reset="all"``: m_{t−1} = v_{t−1} = 0 and count = 0 (optimizer reset,
      Asadi et al. 2023). The first step of a batch is u = η g/(|g| + ε) and no
      momentum crosses batches.
    - ``reset="count"``: count = 0 only (Adam-Rel, Ellis et al. 2024, "Adam on local
      time"): m, v are kept but bias correction restarts, so
      m̂ = β1 m_{t−1}/(1 − β1) + g, v̂ = β2 v_{t−1}/(1 − β2) + g².

    Otherwise identical to ``optax.scale_by_adam`` (same update, same numbers).

    Args:
      b1, b2, eps, eps_root, mu_dtype: as in ``optax.scale_by_adam``.
      reset: "all" or "count" (static).

    Extra args:
      new_batch: bool scalar (default False).

    Returns:
      ``GradientTransformationExtraArgs`` with state ``ResetState(ScaleByAdamState, num_resets)``.

    Raises:
      ValueError: for an unknown ``reset`` or out-of-range hyperparameters.
    """
    if reset not in _RESET_MODES:
        raise ValueError(f"reset must be one of {_RESET_MODES}, got {reset!r}")
    _check_adam(b1, b2, eps, eps_root)
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)
    if reset == "all":
        return reset_on_new_batch(adam)

    def init_fn(params):
        return ResetState(inner_state=adam.init(params), num_resets=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, new_batch=False, **extra_args):
        del extra_args
        new_batch = _scalar("new_batch", new_batch, jnp.bool_)
        s = state.inner_state
        s = s._replace(count=jnp.where(new_batch, jnp.zeros_like(s.count), s.count))
        updates, s = adam.update(updates, s, params)
        return updates, ResetState(inner_state=s, num_resets=state.num_resets + new_batch.astype(jnp.int32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_with_reset(
    *, learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype=None, reset: str = "all"
) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` with ``scale_by_adam_with_reset``: chain(reset-Adam, scale_by_learning_rate)."""
    return optax.chain(
        scale_by_adam_with_reset(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, reset=reset),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------- gate


class GatedAdamState(NamedTuple):
    """State of ``scale_by_gated_adam``.

    Attributes:
      adam: ``optax.ScaleByAdamState`` (count, mu, nu), exactly as optax keeps it.
      gate: float32 [], the gate γ_t applied at the last update (1 = ungated).
      num_gated: int32 [], number of updates with γ_t < 1.
    """

    adam: optax.ScaleByAdamState
    gate: jax.Array
    num_gated: jax.Array


def scale_by_gated_adam(
    *, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype=None
) -> optax.GradientTransformationExtraArgs:
    """Adam whose first moment is gated by the fraction of clipped tokens.

    With clip fraction c_t ∈ [0, 1] (share of the advantage signal the clip has
    removed at the current parameters) and γ_t = (1 − c_t)·(1 − 1{all_clipped}):

        m_t = β1 γ_t m_{t−1} + (1 − β1) g_t,   v_t = β2 v_{t−1} + (1 − β2) g_t²,
        u_t = m̂_t / (√v̂_t + ε)   (optax's bias correction and ε placement).

    γ = 1 is plain Adam (bit for bit); γ = 0 with g_t = 0 (every token clipped)
    gives u_t = 0, removing the overshoot C_{T,k} of Prop. 3 (Eqs. 32-37). The
    second moment is left untouched so the step scale is preserved when the
    gradient returns.

    Args:
      b1, b2, eps, eps_root, mu_dtype: as in ``optax.scale_by_adam``.

    Extra args:
      clip_fraction: float scalar in [0, 1] (default 0); values outside are clipped
        into [0, 1].
      all_clipped: bool scalar (default False); True forces γ = 0.

    Returns:
      ``GradientTransformationExtraArgs`` with state ``GatedAdamState``.

    Note:
      The gate acts on the whole first moment (one scalar per step). A per-token
      clip fraction does not map to parameters; the scalar is the fraction that
      the caller's objective reports (e.g. ``aux["clip_frac"]`` of ``jgrpo.loss``).
    """
    _check_adam(b1, b2, eps, eps_root)
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)

    def init_fn(params):
        return GatedAdamState(
            adam=adam.init(params), gate=jnp.ones([], jnp.float32), num_gated=jnp.zeros([], jnp.int32)
        )

    def update_fn(updates, state, params=None, *, clip_fraction=0.0, all_clipped=False, **extra_args):
        del extra_args
        c = jnp.clip(_scalar("clip_fraction", clip_fraction), 0.0, 1.0)
        off = _scalar("all_clipped", all_clipped, jnp.bool_)
        gate = jnp.where(off, jnp.zeros([], jnp.float32), 1.0 - c)
        mu = jax.tree.map(lambda m: gate.astype(m.dtype) * m, state.adam.mu)
        updates, s = adam.update(updates, state.adam._replace(mu=mu), params)
        return updates, GatedAdamState(adam=s, gate=gate, num_gated=state.num_gated + (gate < 1).astype(jnp.int32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gated_adam(
    *, learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype=None
) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` with ``scale_by_gated_adam``: chain(gated Adam, scale_by_learning_rate)."""
    return optax.chain(
        scale_by_gated_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------- guard


class TrustRegionGuardState(NamedTuple):
    """State of ``trust_region_guard``: diagnostics only.

    Attributes:
      scale: float32 [], the factor 2^{−j} applied to the last update (0 if rejected).
      num_backtracks: int32 [], halvings at the last update.
      total_backtracks: int32 [], halvings over all updates.
      num_rejected: int32 [], updates where every halving failed (update set to 0).
    """

    scale: jax.Array
    num_backtracks: jax.Array
    total_backtracks: jax.Array
    num_rejected: jax.Array


def violation(ratio, advantages, mask=None, *, eps_low, eps_high):
    """Escape from the trust region in the advantage-favoured direction.

    V = Σ_{i,t} M_{i,t} ( 1{A>0}·max(0, s − (1 + ε_up)) + 1{A<0}·max(0, (1 − ε_low) − s) ).

    These are exactly the tokens on which the clipped branch of Eq. 1 is active
    and the advantage gradient is 0 (Prop. 3); moving the other way is not
    restricted by PPO-style clipping and is not counted.

    Args:
      ratio: s_{i,t}, any shape.
      advantages: A, broadcastable to ``ratio`` (0 means unconstrained).
      mask: optional, broadcastable to ``ratio``; 0 excludes a token.
      eps_low, eps_high: clip widths.

    Returns:
      V ≥ 0, float32 scalar.
    """
    ratio = jnp.asarray(ratio, jnp.float32)
    adv = jnp.broadcast_to(jnp.asarray(advantages, jnp.float32), ratio.shape)
    up = jnp.where(adv > 0, jnp.maximum(ratio - (1.0 + eps_high), 0.0), 0.0)
    down = jnp.where(adv < 0, jnp.maximum((1.0 - eps_low) - ratio, 0.0), 0.0)
    v = up + down
    if mask is not None:
        v = jnp.where(jnp.broadcast_to(jnp.asarray(mask), ratio.shape).astype(bool), v, 0.0)
    return jnp.sum(v)


RatioFn = Callable[[Any], tuple]


def trust_region_guard(
    ratio_fn: RatioFn | None = None, *, eps_low=0.2, eps_high=0.2, max_backtracks: int = 10
) -> optax.GradientTransformationExtraArgs:
    """Backtrack (halve) the final update while it pushes ratios out of the clip region.

    With V the ``violation`` of the ratios, the update returned is 2^{−j}·u for the
    smallest j ∈ {0..max_backtracks} with V(θ + 2^{−j}u) ≤ V(θ), or 0 if none
    qualifies. When θ is inside the region (V(θ) = 0) the step therefore keeps
    every ratio within [1 − ε_low, 1 + ε_up] in its advantage-favoured direction;
    when θ is already outside, the step may not increase the escape.

    This turns the soft clip of Eq. 1 into a hard trust region that Adam's
    momentum (Prop. 3, C_{T,k}) cannot cross. Adam's moments are not changed: pair
    it with ``scale_by_gated_adam`` to also stop the momentum from building up.

    Place it **last** in a chain (it must see the final, learning-rate-scaled
    update) and pass ``params``.

    Args:
      ratio_fn: ``params -> (ratio, advantages)`` or ``(ratio, advantages, mask)``:
        the ratios s_{i,t} of the policy with parameters ``params`` against π_old
        (e.g. ``exp(logp(params) - batch.logp_old)``), and advantages broadcastable
        to them. Usually a closure over the current batch, so pass it per step as
        the extra arg ``ratio_fn`` (which overrides this default). Under
        ``optax.inject_hyperparams`` list it in ``static_args``.
      eps_low, eps_high: clip widths ε_low, ε_up (≥ 0).
      max_backtracks: most halvings before the update is rejected (int ≥ 0).

    Extra args:
      ratio_fn: overrides the factory's ``ratio_fn`` for this step.

    Returns:
      ``GradientTransformationExtraArgs`` with state ``TrustRegionGuardState``.

    Raises:
      ValueError: bad hyperparameters; at update time, ``params`` is None or no
        ``ratio_fn`` was given.

    Note:
      Costs 2 + j evaluations of ``ratio_fn`` per step (a ``lax.while_loop`` that
      stops at the first accepted scale).
    """
    _check_range("eps_low", eps_low, 0.0, float("inf"))
    _check_range("eps_high", eps_high, 0.0, float("inf"))
    if _is_concrete_number(max_backtracks) and (int(max_backtracks) != max_backtracks or max_backtracks < 0):
        raise ValueError(f"max_backtracks must be an int >= 0, got {max_backtracks!r}")
    default_ratio_fn = ratio_fn

    def init_fn(params):
        del params
        zero = jnp.zeros([], jnp.int32)
        return TrustRegionGuardState(jnp.ones([], jnp.float32), zero, zero, zero)

    def update_fn(updates, state, params=None, *, ratio_fn=None, **extra_args):
        del extra_args
        fn = default_ratio_fn if ratio_fn is None else ratio_fn
        if fn is None:
            raise ValueError("trust_region_guard needs ratio_fn (at construction or as the extra arg ratio_fn)")
        if params is None:
            raise ValueError("trust_region_guard needs params: call update(updates, state, params, ...)")

        def viol(p):
            out = fn(p)
            if not isinstance(out, tuple) or len(out) not in (2, 3):
                raise ValueError(f"ratio_fn must return (ratio, advantages[, mask]), got {type(out).__name__}")
            return violation(*out, eps_low=eps_low, eps_high=eps_high)

        v0 = viol(params)
        max_j = jnp.asarray(max_backtracks, jnp.int32)

        def scaled(j):
            return jnp.exp2(-j.astype(jnp.float32))

        def cond(carry):
            j, ok = carry
            return jnp.logical_and(~ok, j <= max_j)

        def body(carry):
            j, _ = carry
            s = scaled(j)
            p_new = optax.apply_updates(params, jax.tree.map(lambda u: (s * u).astype(u.dtype), updates))
            ok = viol(p_new) <= v0
            return jnp.where(ok, j, j + 1), ok

        j, ok = jax.lax.while_loop(cond, body, (jnp.zeros([], jnp.int32), jnp.zeros([], jnp.bool_)))
        scale = jnp.where(ok, scaled(j), 0.0)
        updates = jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates)
        n_back = jnp.where(ok, j, max_j)
        return updates, TrustRegionGuardState(
            scale=scale,
            num_backtracks=n_back,
            total_backtracks=state.total_backtracks + n_back,
            num_rejected=state.num_rejected + (~ok).astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
