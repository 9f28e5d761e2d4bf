"""Momentum-aware clipping as optax transforms (the future work of arXiv 2601.05002, Limitations).

Prop. 3 / Prop. 7 (``analysis.overshoot``): once a token's ratio crosses the clip
boundary its advantage gradient is exactly 0 (Eq. 28), yet Adam keeps stepping by
C_{T,k} ≈ (β1/√β2)^{k+1} of its last step (Eqs. 29-37). Remedies, each an optax
transform that composes with ``optax.chain`` and ``optax.inject_hyperparams``:

- ``project_clipped``: remove from each update the component that moves the
  clipped tokens further out (a JVP and a VJP of ``ratio_fn`` on the clipped set).
- ``scale_by_clip_gated_adam``: Adam that drops, before each step, the stale
  momentum coordinates that push the clipped set outward (the strong gate; per
  parameter or global).
- ``trust_region_guard``: halve the final update while it would move ratios out
  of [1 − ε_low, 1 + ε_up] in the advantage-favoured direction (zero escape by
  construction, paid for in progress).
- ``scale_by_adam_with_reset`` / ``reset_on_new_batch``: start every batch with a
  fresh optimizer state (Asadi et al. 2023) or a fresh step count only (Adam-Rel,
  Ellis et al. 2024). Extra arg ``new_batch``.
- ``scale_by_gated_adam``: Adam whose stale momentum is scaled by a caller-given
  scalar, m_{t−1} ← (1 − c_t) m_{t−1}. With c_t the global clip fraction the gate
  is ≈ 1 whenever few tokens are clipped (≥ 0.98 in the overshoot experiment):
  kept for ``jgrpo.train``; the strong gate above is the working version.

The clipped set C is {A > 0, s > 1 + ε_up} ∪ {A < 0, s < 1 − ε_low}, read from a
callable ``ratio_fn(params) -> (ratio, advantages[, mask])`` (``clipped_weights``).
With C empty the projection, the strong gate and the guard are exactly Adam.

Extra args are passed to ``update`` as keywords (``optax.GradientTransformationExtraArgs``);
``optax.chain`` forwards them to every member, and each transform here ignores the
ones it does not use. Like optax's, the factories take their hyperparameters as
keywords (``b1``, ``b2``, ``eps``, ...), and the full optimizers take the learning
rate first: ``gated_adam(1e-3)`` as ``optax.adam(1e-3)``.

Example: two tokens whose ratios are ``exp(params)``; token 0 (A > 0) is beyond
1 + ε_up, so its advantage gradient is 0 and every step that would push it further
out is projected away, while token 1 (A < 0) keeps being optimised.

>>> import jax
>>> import jax.numpy as jnp
>>> import optax
>>> from jgrpo import optim
>>> def ratio_fn(params):  # -> (ratio s, advantages A[, mask])
...     return jnp.exp(params), jnp.array([1.0, -1.0])
>>> opt = optax.chain(
...     optim.scale_by_clip_gated_adam(b1=0.9, b2=0.95, eps_low=0.2, eps_high=0.28),
...     optax.scale_by_learning_rate(0.1),
...     optim.project_clipped(eps_low=0.2, eps_high=0.28),
... )
>>> params = jnp.array([0.5, 0.0])  # s = (1.65, 1.0): token 0 is clipped
>>> state = opt.init(params)
>>> grads = jnp.array([-1.0, 1.0])  # a descent direction that pushes token 0 further out, token 1 down
>>> update = jax.jit(lambda g, s, p: opt.update(g, s, p, ratio_fn=ratio_fn))  # extra args: keywords
>>> updates, state = update(grads, state, params)
>>> [round(u, 6) for u in updates.tolist()]  # token 0 no longer moves out; token 1: Adam's first step −η
[0.0, -0.1]
>>> optim.violation(*ratio_fn(params + updates), eps_low=0.2, eps_high=0.28) <= optim.violation(
...     *ratio_fn(params), eps_low=0.2, eps_high=0.28)
Array(True, dtype=bool)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jgrpo._validate import check_adam, check_choice, check_number, check_static_int, scalar

__all__ = [
    "ClipExcess",
    "ClipGatedAdamState",
    "GatedAdamState",
    "ProjectionState",
    "RatioFn",
    "ResetState",
    "TrustRegionGuardState",
    "adam_with_reset",
    "clip_excess",
    "clip_gated_adam",
    "clipped_weights",
    "gated_adam",
    "project_clipped",
    "reset_on_new_batch",
    "scale_by_adam_with_reset",
    "scale_by_clip_gated_adam",
    "scale_by_gated_adam",
    "trust_region_guard",
    "violation",
]

_RESET_MODES = ("all", "count")

ScalarOrSchedule = float | jax.Array | optax.Schedule
RatioFn = Callable[[Any], tuple]
"""``params -> (ratio, advantages)`` or ``(ratio, advantages, mask)``: the policy's ratios against π_old."""


def _count_if(count: jax.Array, pred: ArrayLike) -> jax.Array:
    """``count + 1`` where ``pred`` (``optax.safe_increment``: saturates instead of overflowing), else ``count``."""
    return jnp.where(pred, optax.safe_increment(count), count)


# ----------------------------------------------------------------------------- reset


class ResetState(NamedTuple):
    """State of ``reset_on_new_batch`` / ``scale_by_adam_with_reset``.

    Attributes:
      inner_state: the wrapped transform's state (``optax.ScaleByAdamState`` for Adam).
      num_resets: int32 [], number of updates that started a new batch.
    """

    inner_state: Any
    num_resets: jax.Array


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
        new_batch = scalar("new_batch", new_batch, jnp.bool_)
        fresh = inner.init(updates if params is None else params)
        inner_state = optax.tree.where(new_batch, fresh, state.inner_state)
        updates, inner_state = optax.with_extra_args_support(inner).update(updates, inner_state, params, **extra_args)
        return updates, ResetState(inner_state=inner_state, num_resets=_count_if(state.num_resets, new_batch))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_adam_with_reset(
    *,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
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
    check_choice("reset", reset, _RESET_MODES)
    check_adam(b1, b2, eps, eps_root)
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)
    if reset == "all":
        return reset_on_new_batch(adam)

    def init_fn(params):
        return ResetState(inner_state=adam.init(params), num_resets=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, new_batch=False, **extra_args):
        del extra_args
        new_batch = scalar("new_batch", new_batch, jnp.bool_)
        s = state.inner_state
        s = s._replace(count=jnp.where(new_batch, jnp.zeros_like(s.count), s.count))
        updates, s = adam.update(updates, s, params)
        return updates, ResetState(inner_state=s, num_resets=_count_if(state.num_resets, new_batch))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_with_reset(
    learning_rate: ScalarOrSchedule,
    *,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    reset: str = "all",
) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` with ``scale_by_adam_with_reset``: chain(reset-Adam, scale_by_learning_rate).

    Called like ``optax.adam``: ``adam_with_reset(1e-3, b1=0.9, reset="count")``; the extra
    arg ``new_batch`` of ``update`` starts a new batch.
    """
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
    *,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
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
      The gate acts on the whole first moment (one scalar per step). With the
      global clip fraction of ``jgrpo.loss`` as c_t it is ≥ 1 − c_t ≈ 0.98 whenever a
      few percent of the tokens are clipped, so it barely changes Adam (measured in
      the overshoot experiment of an earlier version). ``scale_by_clip_gated_adam``
      gates exactly the momentum coordinates that push the clipped tokens outward.
    """
    check_adam(b1, b2, eps, eps_root)
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)

    def init_fn(params):
        return GatedAdamState(
            adam=adam.init(params), gate=jnp.ones([], jnp.float32), num_gated=jnp.zeros([], jnp.int32)
        )

    def update_fn(updates, state, params=None, *, clip_fraction=0.0, all_clipped=False, **extra_args):
        del extra_args
        c = jnp.clip(scalar("clip_fraction", clip_fraction), 0.0, 1.0)
        off = scalar("all_clipped", all_clipped, jnp.bool_)
        gate = jnp.where(off, jnp.zeros([], jnp.float32), 1.0 - c)
        mu = jax.tree.map(lambda m: gate.astype(m.dtype) * m, state.adam.mu)
        updates, s = adam.update(updates, state.adam._replace(mu=mu), params)
        return updates, GatedAdamState(adam=s, gate=gate, num_gated=_count_if(state.num_gated, gate < 1))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gated_adam(
    learning_rate: ScalarOrSchedule,
    *,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` with ``scale_by_gated_adam``: chain(gated Adam, scale_by_learning_rate).

    Called like ``optax.adam``; without the extra args it *is* Adam:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> p, g = jnp.array([1.0, -2.0]), jnp.array([0.5, -0.25])
    >>> ours, ref = gated_adam(1e-3), optax.adam(1e-3)
    >>> u, _ = ours.update(g, ours.init(p), p)
    >>> bool(jnp.all(u == ref.update(g, ref.init(p), p)[0]))
    True
    >>> u, _ = ours.update(g, ours.init(p), p, clip_fraction=0.5)  # the gate only scales stale momentum
    """
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


class ClipExcess(NamedTuple):
    """How far each token's ratio lies beyond the clip bound in its advantage-favoured direction.

    Attributes:
      high: s − (1 + ε_up) on the tokens with A > 0, −inf elsewhere (and on masked tokens).
      low: (1 − ε_low) − s on the tokens with A < 0, −inf elsewhere (and on masked tokens).

    A token is in the clipped set C of Prop. 3 exactly when ``high > 0`` or ``low > 0``.
    """

    high: jax.Array
    low: jax.Array


def clip_excess(
    ratio: ArrayLike, advantages: ArrayLike, mask: ArrayLike | None = None, *, eps_low: ArrayLike, eps_high: ArrayLike
) -> ClipExcess:
    """The one definition of "beyond the clip bound in the advantage-favoured direction" (Eq. 1, Prop. 3).

    C = {A > 0, s > 1 + ε_up} ∪ {A < 0, s < 1 − ε_low}: where Eq. 1's clipped branch is
    active, so that the advantage gradient is exactly 0 (Eq. 28), yet Adam's momentum
    keeps moving the ratio (Prop. 3/7). Moving the other way is not restricted by
    PPO-style clipping and is not counted. :func:`violation`, :func:`clipped_weights`
    and ``analysis.overshoot.escape`` are reductions of this.

    Args:
      ratio: s_{i,t}, any shape (its dtype is kept).
      advantages: A, broadcastable to ``ratio`` (0 means unconstrained).
      mask: optional, broadcastable to ``ratio``; 0 excludes a token.
      eps_low, eps_high: clip widths ε_low, ε_up.

    Returns:
      :class:`ClipExcess`, both fields shaped like ``ratio``.

    >>> import jax.numpy as jnp
    >>> e = clip_excess(jnp.array([1.5, 1.5, 0.5, 0.9]), jnp.array([1.0, -1.0, -1.0, -1.0]), eps_low=0.2, eps_high=0.2)
    >>> (e.high > 0).tolist(), (e.low > 0).tolist()
    ([True, False, False, False], [False, False, True, False])
    """
    ratio = jnp.asarray(ratio)
    adv = jnp.broadcast_to(jnp.asarray(advantages), ratio.shape)
    on = jnp.ones(ratio.shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask), ratio.shape).astype(bool)
    none = jnp.asarray(-jnp.inf, ratio.dtype)
    high = jnp.where(on & (adv > 0), ratio - (1.0 + eps_high), none)
    low = jnp.where(on & (adv < 0), (1.0 - eps_low) - ratio, none)
    return ClipExcess(high=high, low=low)


def violation(
    ratio: ArrayLike, advantages: ArrayLike, mask: ArrayLike | None = None, *, eps_low: ArrayLike, eps_high: ArrayLike
) -> jax.Array:
    """Escape from the trust region in the advantage-favoured direction.

    V = Σ_{i,t} M_{i,t} ( 1{A>0}·max(0, s − (1 + ε_up)) + 1{A<0}·max(0, (1 − ε_low) − s) ),

    the total :func:`clip_excess` over the clipped set C of Prop. 3.

    Args:
      ratio: s_{i,t}, any shape.
      advantages: A, broadcastable to ``ratio`` (0 means unconstrained).
      mask: optional, broadcastable to ``ratio``; 0 excludes a token.
      eps_low, eps_high: clip widths.

    Returns:
      V ≥ 0, float32 scalar.

    >>> import jax.numpy as jnp
    >>> round(float(violation(jnp.array([1.5, 0.5]), jnp.array([1.0, -1.0]), eps_low=0.2, eps_high=0.2)), 6)
    0.6
    """
    e = clip_excess(jnp.asarray(ratio, jnp.float32), advantages, mask, eps_low=eps_low, eps_high=eps_high)
    return jnp.sum(jnp.maximum(e.high, 0.0) + jnp.maximum(e.low, 0.0))


def trust_region_guard(
    ratio_fn: RatioFn | None = None, *, eps_low: ArrayLike = 0.2, eps_high: ArrayLike = 0.2, max_backtracks: int = 10
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
    _check_eps_pair(eps_low, eps_high)
    check_number("max_backtracks", max_backtracks, lo=0.0, integer=True)
    default_ratio_fn = ratio_fn

    def init_fn(params):
        del params
        zero = jnp.zeros([], jnp.int32)
        return TrustRegionGuardState(jnp.ones([], jnp.float32), zero, zero, zero)

    def update_fn(updates, state, params=None, *, ratio_fn=None, **extra_args):
        del extra_args
        fn = _resolve_ratio_fn(default_ratio_fn, ratio_fn, params, "trust_region_guard")

        def viol(p):
            return violation(*_unpack_ratio_fn(fn, p), eps_low=eps_low, eps_high=eps_high)

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
            num_rejected=_count_if(state.num_rejected, ~ok),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- clipped set, outward direction


def clipped_weights(
    ratio: ArrayLike, advantages: ArrayLike, mask: ArrayLike | None = None, *, eps_low: ArrayLike, eps_high: ArrayLike
) -> jax.Array:
    """w_j = sign(A_j) on the tokens beyond the bound in the advantage-favoured direction, 0 elsewhere.

    The clipped set C = {A > 0, s > 1 + ε_up} ∪ {A < 0, s < 1 − ε_low} (:func:`clip_excess`:
    where Eq. 1's clipped branch is active and the advantage gradient is 0). Moving a
    token of C "further out" means increasing z_j = sign(A_j)·s_j, so Σ_j w_j ∇s_j is the
    aggregate outward direction of C.

    Returns:
      float32 array shaped like ``ratio``.
    """
    ratio = jnp.asarray(ratio, jnp.float32)
    adv = jnp.broadcast_to(jnp.asarray(advantages, jnp.float32), ratio.shape)
    e = clip_excess(ratio, adv, mask, eps_low=eps_low, eps_high=eps_high)
    return jnp.where((e.high > 0) | (e.low > 0), jnp.sign(adv), 0.0)


def _unpack_ratio_fn(fn, params):
    out = fn(params)
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise ValueError(f"ratio_fn must return (ratio, advantages[, mask]), got {type(out).__name__}")
    ratio, adv = out[0], out[1]
    mask = out[2] if len(out) == 3 else None
    return ratio, adv, mask


def _linear_ratio_maps(fn, params, *, eps_low, eps_high):
    """(w, jvp, vjp) at ``params``: clipped weights, u ↦ (∂s/∂θ)·u and c ↦ (∂s/∂θ)ᵀc, one linearisation."""

    def ratio_only(p):
        return jnp.asarray(_unpack_ratio_fn(fn, p)[0], jnp.float32)

    ratio, adv, mask = _unpack_ratio_fn(fn, params)
    w = jax.lax.stop_gradient(clipped_weights(ratio, adv, mask, eps_low=eps_low, eps_high=eps_high))
    _, jvp = jax.linearize(ratio_only, params)
    transpose = jax.linear_transpose(jvp, params)
    return w, jvp, lambda c: transpose(c)[0]


def _remove(u, d, coef):
    """u − coef·d leaf by leaf; u itself (bit for bit) where coef is 0."""
    return jax.tree.map(lambda x, y: jnp.where(coef > 0, x - (coef * y).astype(x.dtype), x), u, d)


def _resolve_ratio_fn(default, given, params, who):
    fn = default if given is None else given
    if fn is None:
        raise ValueError(f"{who} needs ratio_fn (at construction or as the extra arg ratio_fn)")
    if params is None:
        raise ValueError(f"{who} needs params: call update(updates, state, params, ...)")
    return fn


def _check_eps_pair(eps_low, eps_high):
    check_number("eps_low", eps_low, lo=0.0)
    check_number("eps_high", eps_high, lo=0.0)


# ----------------------------------------------------------------------------- projection


class ProjectionState(NamedTuple):
    """State of ``project_clipped``: diagnostics of the last update only.

    Attributes:
      num_clipped: int32 [], tokens in the clipped set C at the last update.
      outward_before: float32 [], Σ_{j∈C} max(0, δz_j) of the update received (first order).
      outward_after: float32 [], the same for the update returned.
      removed: float32 [], ‖u − u_returned‖ / ‖u‖ (0 when nothing was projected).
      num_projected: int32 [], updates (so far) from which a component was removed.
    """

    num_clipped: jax.Array
    outward_before: jax.Array
    outward_after: jax.Array
    removed: jax.Array
    num_projected: jax.Array


def project_clipped(
    ratio_fn: RatioFn | None = None, *, eps_low: ArrayLike = 0.2, eps_high: ArrayLike = 0.2, rounds: int = 1
) -> optax.GradientTransformationExtraArgs:
    """Remove from the update the component that moves clipped tokens further out of the clip region.

    Prop. 3 / Eq. 29: once a token is in the clipped set C (beyond 1 + ε_up with A > 0,
    below 1 − ε_low with A < 0) its advantage gradient is 0, but Adam's step u still
    moves it. With z_j = sign(A_j)·s_j and J = ∂s/∂θ at the current parameters, the
    first-order outward motion of token j is δz_j = sign(A_j)(J u)_j. Each round

        a_j = 1{j ∈ C, δz_j > 0},   d = Jᵀ(a ⊙ sign(A)) = Σ_j a_j ∇z_j,
        u ← u − (⟨d, u⟩ / ‖d‖²) d     (⟨d, u⟩ = Σ_j a_j δz_j > 0),

    projects u onto the half-space where the tokens that were moving out no longer
    move out in aggregate. One round removes the aggregate outward direction; more
    rounds repeat it on the tokens still moving out (each round: one JVP and one VJP
    of ``ratio_fn``, one linearisation for all). With C empty, or no clipped token
    moving out, the update is returned unchanged (bit for bit): the transform is
    exactly the identity, so ``chain(adam, lr, project_clipped)`` is exactly Adam.

    Place it **after** ``scale_by_learning_rate`` (it must see the actual parameter
    step) and pass ``params``. Adam's moments are not touched: the stale momentum is
    removed from each step, not from the state (see ``scale_by_clip_gated_adam``).

    Args:
      ratio_fn: ``params -> (ratio, advantages[, mask])`` as for ``trust_region_guard``;
        usually passed per step as the extra arg ``ratio_fn``.
      eps_low, eps_high: clip widths ε_low, ε_up (≥ 0).
      rounds: projection rounds, a static int ≥ 1.

    Extra args:
      ratio_fn: overrides the factory's ``ratio_fn`` for this step.

    Returns:
      ``GradientTransformationExtraArgs`` with state :class:`ProjectionState`.

    Raises:
      ValueError: bad hyperparameters; at update time, no ``params`` or no ``ratio_fn``.
    """
    _check_eps_pair(eps_low, eps_high)
    rounds = check_static_int("rounds", rounds, low=1)
    default_ratio_fn = ratio_fn

    def init_fn(params):
        del params
        zi, zf = jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32)
        return ProjectionState(zi, zf, zf, zf, zi)

    def update_fn(updates, state, params=None, *, ratio_fn=None, **extra_args):
        del extra_args
        fn = _resolve_ratio_fn(default_ratio_fn, ratio_fn, params, "project_clipped")
        w, jvp, vjp = _linear_ratio_maps(fn, params, eps_low=eps_low, eps_high=eps_high)
        clipped = w != 0

        def outward(u):
            return jnp.where(clipped, w * jvp(u), 0.0)

        u = updates
        dz0 = outward(u)
        dz = dz0
        for _ in range(rounds):
            active = dz > 0
            d = vjp(jnp.where(active, w, 0.0).astype(jnp.float32))
            du = jnp.sum(jnp.where(active, dz, 0.0))
            dd = optax.tree.vdot(d, d)
            coef = jnp.where((du > 0) & (dd > 0), du / jnp.where(dd > 0, dd, 1.0), 0.0)
            u = _remove(u, d, coef)
            dz = outward(u)
        diff = optax.tree.norm(optax.tree.sub(updates, u))
        norm = optax.tree.norm(updates)
        removed = jnp.where(norm > 0, diff / jnp.where(norm > 0, norm, 1.0), 0.0)
        return u, ProjectionState(
            num_clipped=jnp.sum(clipped).astype(jnp.int32),
            outward_before=jnp.sum(jnp.maximum(dz0, 0.0)),
            outward_after=jnp.sum(jnp.maximum(dz, 0.0)),
            removed=removed.astype(jnp.float32),
            num_projected=_count_if(state.num_projected, diff > 0),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- strong gate


class ClipGatedAdamState(NamedTuple):
    """State of ``scale_by_clip_gated_adam``.

    Attributes:
      adam: ``optax.ScaleByAdamState`` (count, mu, nu), as optax keeps it.
      gated_frac: float32 [], share of first-moment coordinates gated at the last update.
      gated_mass: float32 [], ‖m_{t−1} on the gated coordinates‖ / ‖m_{t−1}‖ at the last update (0 if m = 0).
      num_gated: int32 [], updates (so far) at which some momentum was dropped.
    """

    adam: optax.ScaleByAdamState
    gated_frac: jax.Array
    gated_mass: jax.Array
    num_gated: jax.Array


_GATE_MODES = ("parameter", "global")
_GATE_DROPS = ("restart", "zero")


def scale_by_clip_gated_adam(
    ratio_fn: RatioFn | None = None,
    *,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    eps_low: ArrayLike = 0.2,
    eps_high: ArrayLike = 0.2,
    mode: str = "parameter",
    drop: str = "restart",
) -> optax.GradientTransformationExtraArgs:
    """Adam that drops the stale momentum pushing the clipped tokens further out (a strong gate).

    With d = Σ_{j∈C} sign(A_j) ∇s_j the aggregate outward direction of the clipped set C
    (see ``clipped_weights``; one VJP of ``ratio_fn``), the stale momentum's step
    −P ⊙ β1 m_{t−1} (P > 0 the preconditioner, Eq. 29) moves C outward through
    coordinate i when d_i·m_{t−1,i} < 0. Before Adam's update, the gated coordinates are

    - ``mode="parameter"``: every coordinate i with d_i·m_{t−1,i} < 0;
    - ``mode="global"``: all of them, when Σ_i d_i m_{t−1,i}/(√v̂_{t−1,i} + ε) < 0
      (the stale step moves C outward in aggregate);

    and their stale momentum is dropped:

    - ``drop="restart"``: m_{t−1,i} ← (1 − β1^{t−1}) g_{t,i}, so that m̂_{t,i} = g_{t,i}: the
      coordinate restarts from the fresh gradient at full step size (bias correction
      stays consistent);
    - ``drop="zero"``: m_{t−1,i} ← 0 (literal, but then m̂_{t,i} = (1 − β1) g_{t,i}/(1 − β1^t):
      Adam's bias correction shrinks the step by up to 1 − β1).

    v is not gated. With C empty d = 0 and nothing is gated: the update is optax's Adam
    exactly. Unlike ``scale_by_gated_adam`` (a scalar 1 − clip fraction, ≈ 1 when few
    tokens are clipped), the gate removes the momentum that Prop. 3 says overshoots.

    Args:
      ratio_fn: ``params -> (ratio, advantages[, mask])``; usually the extra arg.
      b1, b2, eps, eps_root, mu_dtype: as in ``optax.scale_by_adam``.
      eps_low, eps_high: clip widths.
      mode: "parameter" or "global" (static).
      drop: "restart" or "zero" (static).

    Extra args:
      ratio_fn: overrides the factory's ``ratio_fn`` for this step.

    Returns:
      ``GradientTransformationExtraArgs`` with state :class:`ClipGatedAdamState`.

    Note:
      The sign convention is that of descent: the chain negates this transform's
      output (``scale_by_learning_rate``), as every optax optimizer does.

    Raises:
      ValueError: bad hyperparameters, mode or drop; at update time, no params or no ratio_fn.
    """
    check_choice("mode", mode, _GATE_MODES)
    check_choice("drop", drop, _GATE_DROPS)
    check_adam(b1, b2, eps, eps_root)
    _check_eps_pair(eps_low, eps_high)
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype)
    default_ratio_fn = ratio_fn

    def init_fn(params):
        zf = jnp.zeros([], jnp.float32)
        return ClipGatedAdamState(
            adam=adam.init(params), gated_frac=zf, gated_mass=zf, num_gated=jnp.zeros([], jnp.int32)
        )

    def update_fn(updates, state, params=None, *, ratio_fn=None, **extra_args):
        del extra_args
        fn = _resolve_ratio_fn(default_ratio_fn, ratio_fn, params, "scale_by_clip_gated_adam")
        ratio, adv, mask = _unpack_ratio_fn(fn, params)
        w = jax.lax.stop_gradient(clipped_weights(ratio, adv, mask, eps_low=eps_low, eps_high=eps_high))
        _, vjp = jax.vjp(lambda p: jnp.asarray(_unpack_ratio_fn(fn, p)[0], jnp.float32), params)
        (d,) = vjp(w)
        mu, count = state.adam.mu, state.adam.count.astype(jnp.float32)
        if mode == "parameter":
            gate = jax.tree.map(lambda di, m: di.astype(m.dtype) * m < 0, d, mu)
        else:
            bc2 = jnp.where(count > 0, 1 - jnp.asarray(b2, jnp.float32) ** count, 1.0)
            score = sum(
                jnp.sum(di * m / (jnp.sqrt(v / bc2 + eps_root) + eps))
                for di, m, v in zip(
                    jax.tree.leaves(d), jax.tree.leaves(mu), jax.tree.leaves(state.adam.nu), strict=True
                )
            )
            gate = jax.tree.map(lambda m: jnp.broadcast_to(score < 0, m.shape), mu)
        if drop == "restart":
            keep = 1 - jnp.asarray(b1, jnp.float32) ** count  # m_{t-1} that makes m̂_t = g_t
            fill = jax.tree.map(lambda g, m: (keep * g).astype(m.dtype), updates, mu)
        else:
            fill = jax.tree.map(jnp.zeros_like, mu)
        gated = jax.tree.map(lambda m, z, f: jnp.where(z, f, m), mu, gate, fill)
        n_gate = sum(jnp.sum(z) for z in jax.tree.leaves(gate))
        n_all = sum(z.size for z in jax.tree.leaves(gate))
        removed = optax.tree.norm(jax.tree.map(lambda m, z: jnp.where(z, m, jnp.zeros_like(m)), mu, gate))
        norm = optax.tree.norm(mu)
        updates, s = adam.update(updates, state.adam._replace(mu=gated), params)
        return updates, ClipGatedAdamState(
            adam=s,
            gated_frac=(n_gate / max(n_all, 1)).astype(jnp.float32),
            gated_mass=jnp.where(norm > 0, removed / jnp.where(norm > 0, norm, 1.0), 0.0).astype(jnp.float32),
            num_gated=_count_if(state.num_gated, removed > 0),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def clip_gated_adam(
    learning_rate: ScalarOrSchedule,
    *,
    ratio_fn: RatioFn | None = None,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike = 1e-8,
    eps_root: ArrayLike = 0.0,
    mu_dtype: Any = None,
    eps_low: ArrayLike = 0.2,
    eps_high: ArrayLike = 0.2,
    mode: str = "parameter",
    drop: str = "restart",
) -> optax.GradientTransformationExtraArgs:
    """chain(``scale_by_clip_gated_adam``, scale_by_learning_rate): the strong gate as a full optimizer.

    Called like ``optax.adam``: ``clip_gated_adam(1e-3, eps_low=0.2, eps_high=0.28)``; pass
    ``ratio_fn`` here or per step as the extra arg ``ratio_fn``.
    """
    return optax.chain(
        scale_by_clip_gated_adam(
            ratio_fn,
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            eps_low=eps_low,
            eps_high=eps_high,
            mode=mode,
            drop=drop,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
