"""Prop. 3 / Prop. 7: Adam's momentum carries a policy past its clipping region.

Source: arXiv 2601.05002, Sec. 5 (Prop. 3) and Appendix D (Prop. 7, Eqs. 28-38).
Once a token's ratio is beyond 1 + ε_up (A > 0) or below 1 − ε_low (A < 0), the
clipped branch of Eq. 1 is active and its advantage gradient is exactly 0 (Eq. 28);
Adam still moves the parameters, because its first moment remembers the gradients
that brought the ratio there (Eq. 29).

The paper's index (Appendix D). Adam (optax: 1-indexed count t, bias correction,
ε outside the square root)

    m_t = β1 m_{t−1} + (1 − β1) g_t,   v_t = β2 v_{t−1} + (1 − β2) g_t²,
    u_t = −η · m̂_t / (√v̂_t + ε),      m̂_t = m_t / (1 − β1^t),  v̂_t = v_t / (1 − β2^t),

runs T − 1 gradient steps; at step T the iterate is in the clipped region and
g_t = 0 for t ≥ T, so m_{T+k} = β1^{k+1} m_{T−1}, v_{T+k} = β2^{k+1} v_{T−1} (Eq. 34).
The ratio of the (preconditioned) step k + 1 steps after the clip to the last
gradient step is (Eq. 35; Eq. 31 for k = 0)

    C_{T,k} = ‖m̂_{T+k}/(√v̂_{T+k} + ε)‖ / ‖m̂_{T−1}/(√v̂_{T−1} + ε)‖.

With ε negligible, per coordinate and for *any* gradient history before the clip,

    C_{T,k} = [β1^{k+1} (1 − β1^{T−1})/(1 − β1^{T+k})] · √(β2^{−(k+1)} (1 − β2^{T+k})/(1 − β2^{T−1}))   (Eq. 36)
    C_T = C_{T,0}                                                                               (Eq. 32)
    lim_{T→∞} C_T = β1/√β2  (Eq. 33; 0.9/√0.95 ≈ 0.923),   lim_{T→∞} C_{T,k} = (β1/√β2)^{k+1}  (Eq. 37)

(C_2 = 0.67865 for (0.9, 0.95); T = 1 is 0/0: no gradient step precedes the clip).
With ε > 0, the second bracket of Eq. 36 — √v̂_{T−1}/√v̂_{T+k} — becomes Eq. 38,

    E_38 = (√v̂_{T−1} + ε) / (√v̂_{T+k} + ε),    C^ε_{T,k} = [first bracket of Eq. 36] · E_38,

which is exact (``c_coefficient_eps``) given the actual second moments before and
after the clip. ``eps_factor`` is the constant-gradient shortcut C^ε/C with
√v̂_{T−1} = |g|: exact only when every gradient before the clip had the same
magnitude. If β1 ≥ √β2 the ratio β1/√β2 ≥ 1 and zero-gradient steps *grow*.

Beyond the closed forms: ``simulate_adam_after_clip`` / ``simulate_adam_history``
run the real optax Adam; ``simulate_inner_steps`` / ``simulate_group`` run μ GRPO
inner steps on a fixed group and measure the escape (``escape``);
``adam_update_split`` / ``momentum_update_split`` and ``log_ratio_jvps`` split a
step's change of each token's log-ratio into the stale-momentum and the
fresh-gradient parts (the exact attribution of the overshoot). ``flat_policy`` stores a
policy's parameters as vectors, the layout in which a vmapped sweep of these simulations
runs fastest on XLA's CPU backend (same trajectory under an elementwise optimizer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import jgrpo
from jgrpo import optim
from jgrpo._validate import check_min_rank, check_number, check_shape, check_static_int, concrete_values
from jgrpo.methods import MethodSpec
from jgrpo.policies import LogprobFn

__all__ = [
    "AdamAfterClip",
    "Escape",
    "FlatPolicy",
    "InnerTrajectory",
    "UpdateSplit",
    "adam_update_split",
    "c_coefficient",
    "c_coefficient_eps",
    "c_limit",
    "eps_factor",
    "eps_modulation",
    "escape",
    "first_moment_decay",
    "flat_policy",
    "group_ratio_fn",
    "grpo_loss_fn",
    "log_ratio_jvps",
    "momentum_update_split",
    "second_moment_decay",
    "simulate_adam_after_clip",
    "simulate_adam_history",
    "simulate_group",
    "simulate_inner_steps",
    "total_overshoot",
]


# ----------------------------------------------------------------------------- validation


def _check_betas(b1=None, b2=None):
    """Adam's β1 ∈ [0, 1), β2 ∈ (0, 1) (β2 = 0 is log 0 in the closed forms), with optax's names."""
    if b1 is not None:
        check_number("b1", b1, lo=0.0, hi=1.0, hi_open=True)
    if b2 is not None:
        check_number("b2", b2, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


def _check_T_k(T, k):
    if T is not None:
        # T = 1 is 0/0 in Eq. 32: no gradient step precedes the clip.
        check_number("T", T, lo=2.0, integer=True, allow_inf=True)
    check_number("k", k, lo=0.0, integer=True)


# ----------------------------------------------------------------------------- closed forms


def _float_dtype(*xs):
    return jnp.result_type(*[x for x in xs if x is not None], jnp.float32)


def _steps(T, dtype):
    """T as a float array; ``None`` means T → ∞."""
    return jnp.asarray(jnp.inf if T is None else T, dtype)


def _one_minus_pow(beta, t):
    """1 − β^t, accurate for β near 1 (``-expm1(t log β)``); t = ∞ gives 1, β = 0 gives 1 for t > 0."""
    return -jnp.expm1(t * jnp.log(beta))


def _pow(beta, t):
    """β^t for t ≥ 1 (β = 0 gives 0)."""
    return jnp.exp(t * jnp.log(beta))


def first_moment_decay(b1: ArrayLike, T: ArrayLike | None = None, k: ArrayLike = 0) -> jax.Array:
    """m̂_{T+k} / m̂_{T−1} = β1^{k+1} (1 − β1^{T−1}) / (1 − β1^{T+k}): the first bracket of Eq. (36).

    Exact, per coordinate, for any gradient history before the clip (the first moment
    only decays once g = 0, Eq. 34). The paper's index: T − 1 gradient steps, then
    zero gradients from step T on; k = 0 is step T.

    Args:
      b1: Adam's β1 in [0, 1) (optax's name).
      T: the step at which the gradient vanishes, T ≥ 2; ``None``/``inf`` for T → ∞.
      k: zero-gradient steps before the one measured, k ≥ 0.

    Returns:
      The ratio, broadcast over the arguments (float32 unless an input is float64).

    Raises:
      ValueError: a concrete argument out of range (β1 = 1, T < 2, k < 0, non-integer T or k).
    """
    _check_betas(b1=b1)
    _check_T_k(T, k)
    dtype = _float_dtype(b1)
    beta, t, kk = jnp.asarray(b1, dtype), _steps(T, dtype), jnp.asarray(k, dtype)
    return _pow(beta, kk + 1) * _one_minus_pow(beta, t - 1) / _one_minus_pow(beta, t + kk)


def second_moment_decay(b2: ArrayLike, T: ArrayLike | None = None, k: ArrayLike = 0) -> jax.Array:
    """v̂_{T+k} / v̂_{T−1} = β2^{k+1} (1 − β2^{T−1}) / (1 − β2^{T+k}) (Eqs. 30, 34), exact for any history.

    Its inverse square root is the second bracket of Eq. (36). Arguments as in
    :func:`first_moment_decay` (β2 in (0, 1)).
    """
    _check_betas(b2=b2)
    _check_T_k(T, k)
    dtype = _float_dtype(b2)
    beta, t, kk = jnp.asarray(b2, dtype), _steps(T, dtype), jnp.asarray(k, dtype)
    return _pow(beta, kk + 1) * _one_minus_pow(beta, t - 1) / _one_minus_pow(beta, t + kk)


def c_coefficient(b1: ArrayLike, b2: ArrayLike, T: ArrayLike | None = None, k: ArrayLike = 0) -> jax.Array:
    """Overshoot coefficient C_{T,k}: the step k + 1 steps after the gradient vanished, per last gradient step.

    C_{T,k} = [β1^{k+1} (1 − β1^{T−1})/(1 − β1^{T+k})] · √(β2^{−(k+1)} (1 − β2^{T+k})/(1 − β2^{T−1})).

    Implements Eq. (32) (C_T, k = 0) and Eq. (36) (general k) of arXiv 2601.05002 in
    the paper's index: T is the step at which the advantage gradient vanishes, so
    T − 1 gradient steps precede it (C_2 = 0.67865 for β1 = 0.9, β2 = 0.95).
    ``T = None`` or ``inf`` gives the limits, Eq. (33) β1/√β2 and Eq. (37)
    (β1/√β2)^{k+1}. Exact for optax's Adam with ε = 0, per coordinate, for any
    gradient history before the clip; for ε > 0 see :func:`c_coefficient_eps`.

    All arguments broadcast against each other; pure, jit-able and vmappable over
    every argument (T included, as a float).

    Args:
      b1: Adam's β1, in [0, 1) (optax's name; positional as in ``c_coefficient(0.9, 0.95, 2)``).
      b2: Adam's β2, in (0, 1).
      T: the step at which the gradient vanishes, an integer ≥ 2; ``None``/``inf`` for T → ∞.
      k: zero-gradient steps already taken (k = 0 is the first step past the boundary), k ≥ 0.

    Returns:
      C_{T,k}, float (float32 unless an input is float64), the broadcast shape.

    Raises:
      ValueError: a concrete argument out of range: β1 ∉ [0, 1), β2 ∉ (0, 1), T < 2
        (T = 1 is 0/0 in Eq. 32), k < 0, non-integer T or k, NaN.

    >>> round(float(c_coefficient(0.9, 0.95, 2)), 5)  # C_2: one gradient step before the clip
    0.67865
    >>> round(float(c_coefficient(0.9, 0.95)), 5), round(0.9 / 0.95**0.5, 5)  # T → ∞: β1/√β2 (Eq. 33)
    (0.92338, 0.92338)
    """
    _check_betas(b1, b2)
    _check_T_k(T, k)
    dtype = _float_dtype(b1, b2)
    beta, t, kk = jnp.asarray(b2, dtype), _steps(T, dtype), jnp.asarray(k, dtype)
    second = jnp.exp(-0.5 * (kk + 1) * jnp.log(beta)) * jnp.sqrt(
        _one_minus_pow(beta, t + kk) / _one_minus_pow(beta, t - 1)
    )
    return first_moment_decay(jnp.asarray(b1, dtype), t, kk) * second


def c_limit(b1: ArrayLike, b2: ArrayLike, k: ArrayLike = 0) -> jax.Array:
    """lim_{T→∞} C_{T,k} = (β1/√β2)^{k+1}: Eq. (33) for k = 0, Eq. (37) in general.

    Raises:
      ValueError: as :func:`c_coefficient`.
    """
    _check_betas(b1, b2)
    _check_T_k(None, k)
    dtype = _float_dtype(b1, b2)
    beta1, beta2, kk = jnp.asarray(b1, dtype), jnp.asarray(b2, dtype), jnp.asarray(k, dtype)
    return (beta1 / jnp.sqrt(beta2)) ** (kk + 1)


def eps_modulation(v_hat_before: ArrayLike, v_hat_after: ArrayLike, eps: ArrayLike) -> jax.Array:
    """Eq. (38): (√v̂_{T−1} + ε) / (√v̂_{T+k} + ε), from the actual second moments before and after the clip.

    With ε = 0 this is √(v̂_{T−1}/v̂_{T+k}), the second bracket of Eq. (36); with ε > 0
    it replaces that bracket, so C^ε_{T,k} = ``first_moment_decay`` · E_38 exactly
    (:func:`c_coefficient_eps`). Elementwise (one value per coordinate).

    Args:
      v_hat_before: v̂_{T−1} ≥ 0, the bias-corrected second moment at the last gradient step.
      v_hat_after: v̂_{T+k} ≥ 0, the one at the zero-gradient step measured.
      eps: Adam's ε ≥ 0 (optax's, outside the square root).

    Returns:
      E_38, broadcast over the arguments.

    Raises:
      ValueError: concrete negative or non-finite arguments, or v̂ = 0 with ε = 0 (0/0).
    """
    check_number("v_hat_before", v_hat_before, lo=0.0)
    check_number("v_hat_after", v_hat_after, lo=0.0)
    check_number("eps", eps, lo=0.0)
    e = concrete_values(eps)
    if e is not None and np.all(e == 0):
        check_number("v_hat_before (with eps = 0)", v_hat_before, lo=0.0, lo_open=True)
        check_number("v_hat_after (with eps = 0)", v_hat_after, lo=0.0, lo_open=True)
    dtype = _float_dtype(v_hat_before, v_hat_after, eps)
    vb, va, ep = (jnp.asarray(x, dtype) for x in (v_hat_before, v_hat_after, eps))
    return (jnp.sqrt(vb) + ep) / (jnp.sqrt(va) + ep)


def c_coefficient_eps(
    b1: ArrayLike, b2: ArrayLike, T: ArrayLike, k: ArrayLike = 0, *, v_hat_before: ArrayLike, eps: ArrayLike
) -> jax.Array:
    """C^ε_{T,k} with Adam's ε, exact: ``first_moment_decay`` × Eq. (38), v̂_{T+k} from v̂_{T−1}.

    C^ε_{T,k} = β1^{k+1} (1 − β1^{T−1})/(1 − β1^{T+k}) · (√v̂_{T−1} + ε)/(√v̂_{T+k} + ε),
    v̂_{T+k} = ``second_moment_decay``(β2, T, k) · v̂_{T−1}.

    Exact per coordinate for any gradient history before the clip (Eqs. 34, 35, 38):
    pass the actual v̂_{T−1} (e.g. ``nu / (1 − β2^{T−1})`` of optax's state after the
    last gradient step). With ε = 0 it equals :func:`c_coefficient`.

    Raises:
      ValueError: as :func:`c_coefficient` and :func:`eps_modulation`.
    """
    check_number("v_hat_before", v_hat_before, lo=0.0)
    decay = second_moment_decay(b2, T, k)
    v_after = decay * jnp.asarray(v_hat_before, decay.dtype)
    return first_moment_decay(b1, T, k) * eps_modulation(v_hat_before, v_after, eps)


def eps_factor(
    g_abs: ArrayLike, b2: ArrayLike, T: ArrayLike | None = None, k: ArrayLike = 0, eps: ArrayLike = 1e-8
) -> jax.Array:
    """The constant-gradient shortcut of Eq. (38): F_ε = C^ε_{T,k}/C_{T,k} when √v̂_{T−1} = |g|.

    F_ε = (|g| + ε) / (|g| + ε/ρ),  ρ = √``second_moment_decay``(β2, T, k) ≤ 1.

    Exact only when every gradient before the clip had magnitude |g| (then
    v̂_{T−1} = g²); for a varying history use :func:`c_coefficient_eps` with the
    actual v̂_{T−1}. F_ε ≤ 1 (= 1 at ε = 0): ε shrinks the overshoot, by
    ≈ (ε/|g|)(1/ρ − 1) for ε ≪ |g|.

    Args:
      g_abs: |g| > 0, the magnitude of the constant gradient before the clip.
      b2: Adam's β2, in (0, 1).
      T: the step at which the gradient vanishes, T ≥ 2, or ``None``/``inf``.
      k: zero-gradient steps already taken, k ≥ 0.
      eps: Adam's ε ≥ 0 (optax's, outside the square root).

    Returns:
      F_ε, broadcast over all arguments.

    Raises:
      ValueError: concrete arguments out of range (|g| ≤ 0, ε < 0, and as :func:`c_coefficient`).
    """
    check_number("g_abs", g_abs, lo=0.0, lo_open=True)
    check_number("eps", eps, lo=0.0)
    dtype = _float_dtype(g_abs, b2, eps)
    g, e = jnp.asarray(g_abs, dtype), jnp.asarray(eps, dtype)
    rho = jnp.sqrt(second_moment_decay(jnp.asarray(b2, dtype), T, k))
    return (g + e) / (g + e / rho)


def total_overshoot(b1: ArrayLike, b2: ArrayLike, T: ArrayLike | None = None, *, num_steps: int) -> jax.Array:
    """Σ_{k=0}^{K−1} C_{T,k}: distance travelled in K zero-gradient steps, in units of the last gradient step.

    With T → ∞ this is r(1 − r^K)/(1 − r), r = β1/√β2 (→ r/(1 − r) ≈ 12 last steps
    for β1 = 0.9, β2 = 0.95 as K → ∞). Built on Eq. (36).

    Args:
      b1, b2, T: as in :func:`c_coefficient` (broadcast).
      num_steps: K ≥ 1, a static Python int.

    Returns:
      The sum, broadcast over b1, b2, T.
    """
    num_steps = check_static_int("num_steps", num_steps, low=1)
    _check_betas(b1, b2)
    _check_T_k(T, 0)
    ks = jnp.arange(num_steps)
    return jax.vmap(lambda k: c_coefficient(b1, b2, T, k))(ks).sum(axis=0)


# ----------------------------------------------------------------------------- simulations


class AdamAfterClip(NamedTuple):
    """Result of :func:`simulate_adam_after_clip` / :func:`simulate_adam_history` (T − 1 gradient steps, then K zeros).

    Attributes:
      updates: [T−1+K, ...] optax Adam updates u_1..u_{T−1+K}; rows 0..T−2 under the
        gradients, rows T−1.. under gradient 0 (steps T..T+K−1, the paper's index).
      c: [K, ...] simulated C^ε_{T,k} = u_{T+k}/u_{T−1}, k = 0..K−1 (Eq. 35, per coordinate).
      v_hat: [T−1+K, ...] optax's bias-corrected second moment v̂_t after each step.
    """

    updates: jax.Array
    c: jax.Array
    v_hat: jax.Array


def _simulate_adam(grads, b1, b2, eps, lr, K):
    n = grads.shape[0]  # T − 1 gradient steps
    opt = optax.adam(learning_rate=lr, b1=b1, b2=b2, eps=eps)
    all_grads = jnp.concatenate([grads, jnp.zeros((K,) + grads.shape[1:], grads.dtype)])

    def step(state, grad):
        updates, state = opt.update(grad, state)
        adam_state = state[0]
        v_hat = adam_state.nu / (1 - jnp.asarray(b2, grads.dtype) ** adam_state.count.astype(grads.dtype))
        return state, (updates, v_hat)

    _, (updates, v_hat) = jax.lax.scan(step, opt.init(grads[0]), all_grads)
    return AdamAfterClip(updates=updates, c=updates[n:] / updates[n - 1], v_hat=v_hat)


_simulate_adam_jit = jax.jit(_simulate_adam, static_argnames=("K",))


def _check_adam_args(b1, b2, eps, lr):
    _check_betas(b1, b2)
    check_number("eps", eps, lo=0.0)
    check_number("lr", lr, lo=0.0, lo_open=True)


def simulate_adam_history(
    grads: ArrayLike, b1: ArrayLike, b2: ArrayLike, eps: ArrayLike, K: int, lr: ArrayLike = 1.0
) -> AdamAfterClip:
    """Run the real ``optax.adam`` on a gradient history ``grads`` [T−1, ...], then K steps of gradient 0.

    The zero gradient models the clipped branch of Eq. 1 from step T on (Prop. 7).
    ``c`` equals :func:`c_coefficient_eps` with the simulated ``v_hat[T−2]`` (exactly,
    for any history) and :func:`c_coefficient` when ε = 0.

    Args:
      grads: [T−1, ...] the gradients of steps 1..T−1 (T − 1 ≥ 1 rows; each trailing
        coordinate is its own Adam).
      b1, b2, eps, lr: Adam hyperparameters (optax's names; traced: vmap over them freely).
      K: zero-gradient steps, a static Python int ≥ 1.

    Returns:
      :class:`AdamAfterClip`.

    Raises:
      ValueError: ``grads`` without a step axis or with non-finite values, K < 1,
        concrete hyperparameters out of range.
    """
    K = check_static_int("K", K, low=1)
    _check_adam_args(b1, b2, eps, lr)
    grads = jnp.asarray(grads, _float_dtype(grads))
    if grads.ndim < 1 or grads.shape[0] < 1:
        raise ValueError(f"grads must have shape [T-1, ...] with T-1 >= 1 gradient steps, got {grads.shape}")
    a = concrete_values(grads)
    if a is not None and not np.all(np.isfinite(a)):
        raise ValueError("grads must be finite")
    return _simulate_adam_jit(grads, b1, b2, eps, lr, K=K)


def simulate_adam_after_clip(
    g: ArrayLike, b1: ArrayLike, b2: ArrayLike, eps: ArrayLike, T: int, K: int, lr: ArrayLike = 1.0
) -> AdamAfterClip:
    """Run the real ``optax.adam`` for T − 1 steps of constant gradient g, then K steps of gradient 0.

    The paper's index (Appendix D): the gradient vanishes at step T. The simulated
    C_{T,k} = u_{T+k}/u_{T−1} equals :func:`c_coefficient` (times :func:`eps_factor`
    when ε > 0).

    Args:
      g: the constant gradient, scalar or any array (each coordinate is its own Adam).
      b1, b2, eps, lr: Adam hyperparameters (optax's names; traced: vmap over them freely).
      T: the step at which the gradient vanishes, a static Python int ≥ 2.
      K: zero-gradient steps, a static Python int ≥ 1.

    Returns:
      :class:`AdamAfterClip` (``updates`` [T−1+K, ...], ``c`` [K, ...]).

    Raises:
      ValueError: T < 2, K < 1, non-int T or K, concrete hyperparameters out of range.
    """
    T = check_static_int("T", T, low=2)
    g = jnp.asarray(g, _float_dtype(g))
    return simulate_adam_history(jnp.broadcast_to(g, (T - 1,) + g.shape), b1, b2, eps, K, lr)


# ----------------------------------------------------------------------------- exact attribution of a step


class UpdateSplit(NamedTuple):
    """One optimizer step split by the source of each part (pytrees shaped like the parameters).

    Attributes:
      stale: the part driven by the momentum carried from earlier steps (β1 m_{t−1}).
      fresh: the part driven by this step's gradient g_t.
      precond: the per-coordinate factor both parts share (Adam: η/((1 − β1^t)(√v̂_t + ε)),
        the preconditioner at step t, held fixed in the split).

    ``stale + fresh`` is the optimizer's update exactly (to rounding).
    """

    stale: Any
    fresh: Any
    precond: Any


def adam_update_split(
    grads: Any, state: optax.ScaleByAdamState, *, b1: ArrayLike, b2: ArrayLike, eps: ArrayLike, learning_rate: ArrayLike
) -> UpdateSplit:
    """Split ``optax.adam``'s update at step t into its stale-momentum and fresh-gradient parts (Eq. 29).

    u_t = −η (β1 m_{t−1} + (1 − β1) g_t) / ((1 − β1^t)(√v̂_t + ε)), v̂_t from g_t:

        stale = −P_t β1 m_{t−1},   fresh = −P_t (1 − β1) g_t,   P_t = η / ((1 − β1^t)(√v̂_t + ε)).

    P_t — the preconditioner of the step — is the same in both parts, so the split
    is linear in (m_{t−1}, g_t) at fixed P_t. With g_t = 0 (every token clipped)
    the whole step is ``stale``: the overshoot of Prop. 3.

    Args:
      grads: g_t (pytree).
      state: the ``optax.ScaleByAdamState`` *before* the step (count t − 1, mu m_{t−1}, nu v_{t−1}).
      b1, b2, eps, learning_rate: Adam's β1, β2, ε (eps_root 0) and η.

    Returns:
      :class:`UpdateSplit`.
    """
    t = state.count + 1
    dtype = jax.tree.leaves(grads)[0].dtype
    tf = t.astype(dtype)
    b1, b2, lr = (jnp.asarray(x, dtype) for x in (b1, b2, learning_rate))
    bc1, bc2 = 1 - b1**tf, 1 - b2**tf
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    precond = jax.tree.map(lambda v: lr / (bc1 * (jnp.sqrt(v / bc2) + eps)), nu)
    stale = jax.tree.map(lambda p, m: -p * b1 * m, precond, state.mu)
    fresh = jax.tree.map(lambda p, g: -p * (1 - b1) * g, precond, grads)
    return UpdateSplit(stale=stale, fresh=fresh, precond=precond)


def momentum_update_split(
    grads: Any, trace: optax.TraceState, *, decay: ArrayLike, learning_rate: ArrayLike
) -> UpdateSplit:
    """Split SGD with momentum (``optax.sgd(η, momentum=β)``: m_t = g_t + β m_{t−1}, u = −η m_t).

    stale = −η β m_{t−1}, fresh = −η g_t, precond = η.
    """
    dtype = jax.tree.leaves(grads)[0].dtype
    beta, lr = jnp.asarray(decay, dtype), jnp.asarray(learning_rate, dtype)
    stale = jax.tree.map(lambda m: -lr * beta * m, trace.trace)
    fresh = jax.tree.map(lambda g: -lr * g, grads)
    return UpdateSplit(stale=stale, fresh=fresh, precond=jax.tree.map(lambda g: jnp.full_like(g, lr), grads))


def log_ratio_jvps(logp_fn: Callable[[Any], jax.Array], params: Any, tangents: tuple) -> tuple[jax.Array, ...]:
    """First-order change of every token's log-probability along each tangent: (J·u_1, J·u_2, ...).

    J = ∂ logp / ∂θ at ``params`` (one linearisation serves every tangent). With the
    parts of an :class:`UpdateSplit` as tangents this splits a step's change of each
    token's log-ratio log π/π_old (π_old fixed) into its stale-momentum and
    fresh-gradient parts; the remainder logp(θ + u) − logp(θ) − J·u is the
    linearisation residual.

    Args:
      logp_fn: ``params -> logp`` (any shape, e.g. [B, G, T]).
      params: the point of linearisation.
      tangents: pytrees shaped like ``params``.

    Returns:
      A tuple of arrays shaped like ``logp``, one per tangent.
    """
    _, jvp = jax.linearize(logp_fn, params)
    return tuple(jvp(t) for t in tangents)


# ----------------------------------------------------------------------------- μ inner steps


class InnerTrajectory(NamedTuple):
    """Per-step record of ``simulate_inner_steps`` (leading axis: step, length S).

    Attributes:
      loss: [S] loss at the parameters *before* each step.
      aux: whatever ``loss_fn`` returned as aux, each leaf stacked to [S, ...].
      grad_norm: [S] global norm of the gradient.
      update_norm: [S] global norm of the optimizer's update.
      update_ratio: [S] ‖u_t‖/‖u_{t−1}‖ (the simulated C of Prop. 3 once the
        gradient is clipped away); NaN at t = 0, where it is undefined.
      final_params: the parameters after S steps.
      final_opt_state: the optimizer state after S steps.
      final_loss, final_aux: ``loss_fn`` at ``final_params`` (e.g. how far the
        ratios escaped after the last step).
    """

    loss: jax.Array
    aux: Any
    grad_norm: jax.Array
    update_norm: jax.Array
    update_ratio: jax.Array
    final_params: Any
    final_opt_state: Any
    final_loss: jax.Array
    final_aux: Any


def simulate_inner_steps(
    loss_fn: Callable[[Any], tuple[jax.Array, Any]],
    params: Any,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    opt_state: Any = None,
    extra_args_fn: Callable[[jax.Array, jax.Array, Any], dict] | None = None,
) -> InnerTrajectory:
    """μ inner optimizer steps on a fixed objective, as one ``lax.scan``.

    At step t = 0..S−1: (loss, aux), grad = value_and_grad(loss_fn)(params_t);
    u_t, state = optimizer.update(grad, state, params_t, **extra_args_fn(t, loss, aux));
    params_{t+1} = params_t + u_t. This is the inner loop of GRPO-style training
    (μ updates on one batch with fixed π_old), where Prop. 3 predicts the policy
    overshoots the clip region.

    Pure and traceable; ``loss_fn``, ``optimizer``, ``num_steps`` and ``extra_args_fn``
    are Python objects, so jit it by closing over them:
    ``jax.jit(lambda p: simulate_inner_steps(loss_fn, p, opt, 8))``. To sweep
    hyperparameters with one compile, either build the optimizer inside a ``vmap``ped
    function from a traced value, or build it with ``optax.inject_hyperparams`` and
    pass a vmapped ``opt_state`` whose ``hyperparams`` differ.

    Args:
      loss_fn: ``params -> (loss, aux)``, pure; aux is any pytree (recorded as is).
      params: initial parameters (pytree).
      optimizer: any optax transformation; extra-args transformations (such as
        ``jgrpo.optim.scale_by_gated_adam``) receive ``extra_args_fn``'s output, plain
        ones ignore it.
      num_steps: S ≥ 1, a static Python int.
      opt_state: initial optimizer state; default ``optimizer.init(params)``.
      extra_args_fn: ``(step, loss, aux) -> dict`` of keyword extra args for
        ``optimizer.update`` at each step (e.g. ``{"clip_fraction": aux["clip_fraction"],
        "new_batch": step == 0}`` with the aux of :func:`grpo_loss_fn`); default none.

    Returns:
      ``InnerTrajectory``.

    Raises:
      ValueError: if ``num_steps`` is not a Python int ≥ 1.

    A quadratic under Adam whose stale momentum is halved at every step by a signal read
    from aux (``jgrpo.optim.scale_by_gated_adam``'s extra arg): the update norms shrink
    where plain Adam's stay at ≈ η√2.

    >>> import jax, jax.numpy as jnp, optax
    >>> from jgrpo import optim
    >>> def loss_fn(p):
    ...     return jnp.sum((p - 1.0) ** 2), {"clip_fraction": jnp.float32(0.5)}
    >>> def run(opt):
    ...     extra = lambda step, loss, aux: {"clip_fraction": aux["clip_fraction"]}
    ...     return jax.jit(lambda p: simulate_inner_steps(loss_fn, p, opt, 3, extra_args_fn=extra))(jnp.zeros(2))
    >>> [round(u, 3) for u in run(optax.adam(0.1)).update_norm.tolist()]
    [0.141, 0.141, 0.14]
    >>> [round(u, 3) for u in run(optim.gated_adam(0.1)).update_norm.tolist()]
    [0.141, 0.106, 0.082]
    """
    num_steps = check_static_int("num_steps", num_steps, low=1)
    opt = optax.with_extra_args_support(optimizer)
    state0 = opt.init(params) if opt_state is None else opt_state
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(carry, t):
        p, s = carry
        (loss, aux), grads = grad_fn(p)
        extra = {} if extra_args_fn is None else dict(extra_args_fn(t, loss, aux))
        updates, s = opt.update(grads, s, p, **extra)
        p = optax.apply_updates(p, updates)
        rec = (loss, aux, optax.tree.norm(grads), optax.tree.norm(updates))
        return (p, s), rec

    (params_f, state_f), (loss, aux, gnorm, unorm) = jax.lax.scan(step, (params, state0), jnp.arange(num_steps))
    prev = jnp.concatenate([jnp.full((1,), jnp.nan, unorm.dtype), unorm[:-1]])
    final_loss, final_aux = loss_fn(params_f)
    return InnerTrajectory(
        loss=loss,
        aux=aux,
        grad_norm=gnorm,
        update_norm=unorm,
        update_ratio=unorm / prev,
        final_params=params_f,
        final_opt_state=state_f,
        final_loss=final_loss,
        final_aux=final_aux,
    )


# ----------------------------------------------------------------------------- parameter layout for sweeps


class FlatPolicy(NamedTuple):
    """A policy whose parameter leaves are stored as vectors (:func:`flat_policy`).

    Attributes:
      logprob_fn: ``(flat_params, tokens, prompt) -> logp``, the original policy on the unflattened leaves.
      params: the parameters, every leaf reshaped to 1-D (row-major, no copy under jit).
      unflatten: ``flat_params -> params`` in the original leaf shapes (e.g. for ``final_params``).
    """

    logprob_fn: LogprobFn
    params: Any
    unflatten: Callable[[Any], Any]


def flat_policy(logprob_fn: LogprobFn, params: Any) -> FlatPolicy:
    """The same policy with every parameter leaf stored 1-D: the layout for vmapped inner-loop sweeps.

    ``flat.logprob_fn(flat.params, tokens, prompt) == logprob_fn(params, tokens, prompt)`` exactly
    (a reshape of each leaf, row-major: a bitcast under jit), and the gradient of any loss of
    ``logp`` w.r.t. a flat leaf is the reshaped gradient w.r.t. the original leaf. An optimizer that
    acts elementwise (SGD, momentum, Adam, AdamW, gradient clipping by global norm, ...) therefore
    follows the same trajectory in either layout; one that reads leaf shapes (Adafactor's factored
    moments, Muon's matrices) does not, so do not flatten for those.

    Why: under ``vmap`` over hyperparameter settings, XLA's CPU backend runs an elementwise update of
    ``[N, T, V+1, V]`` leaves (the tabular policy's table, small inner dimensions) several times
    slower than of ``[N, T(V+1)V]`` (measured in the benchmark's ``sweep`` section); the layout only
    moves the reshape from the optimizer's side to the policy's, where it is free.

    Args:
      logprob_fn: ``(params, tokens, prompt) -> logp``, the :mod:`jgrpo.policies` protocol.
      params: the policy's parameters (a pytree of arrays).

    Returns:
      :class:`FlatPolicy` ``(logprob_fn, params, unflatten)``.

    Raises:
      TypeError: ``logprob_fn`` not callable.
    """
    if not callable(logprob_fn):
        raise TypeError(f"flat_policy: logprob_fn must be callable (params, tokens, prompt), got {logprob_fn!r}")
    leaves, treedef = jax.tree.flatten(params)
    shapes = tuple(tuple(np.shape(x)) for x in leaves)

    def unflatten(flat):
        flat_leaves = treedef.flatten_up_to(flat)
        return treedef.unflatten([jnp.reshape(x, s) for x, s in zip(flat_leaves, shapes, strict=True)])

    def flat_logprob_fn(flat, tokens, prompt=None):
        return logprob_fn(unflatten(flat), tokens, prompt)

    return FlatPolicy(flat_logprob_fn, treedef.unflatten([jnp.reshape(x, (-1,)) for x in leaves]), unflatten)


# ----------------------------------------------------------------------------- GRPO inner loop on a fixed group


class Escape(NamedTuple):
    """How far the ratios sit beyond the clip bound in the advantage-favoured direction.

    Attributes:
      frac: fraction of completion tokens with A > 0 and s > 1 + eps_high, or A < 0 and s < 1 - eps_low.
      frac_high, frac_low: the two parts of ``frac``.
      max_excess_high: max(s - (1 + eps_high)) over tokens with A > 0 (0 if none beyond).
      max_excess_low: max((1 - eps_low) - s) over tokens with A < 0 (0 if none beyond).
    """

    frac: jax.Array
    frac_high: jax.Array
    frac_low: jax.Array
    max_excess_high: jax.Array
    max_excess_low: jax.Array


def escape(
    ratio: ArrayLike, advantages: ArrayLike, mask: ArrayLike, *, eps_low: ArrayLike, eps_high: ArrayLike
) -> Escape:
    """Escape statistics of ratios ``[..., G, T]`` with advantages ``[..., G]`` (Prop. 3/7).

    The clipped set is :func:`jgrpo.optim.clip_excess`'s (the one definition, shared with
    ``jgrpo.optim.violation``): tokens beyond 1 + ε_up with A > 0 or below 1 − ε_low with A < 0.
    Fractions are over the completion tokens (mask 1) of the whole batch.

    Args:
      ratio: ``[..., G, T]`` token ratios s_{i,t}.
      advantages: ``[..., G]`` A_i.
      mask: ``[..., G, T]`` 1 on completion tokens.
      eps_low, eps_high: clip widths ε_low, ε_up.

    Returns:
      :class:`Escape` of scalars.

    Raises:
      ValueError: ``advantages`` or ``mask`` not shaped like ``ratio``'s ``[..., G]`` / ``[..., G, T]``.

    >>> import jax.numpy as jnp
    >>> e = escape(jnp.array([[1.5, 1.0], [0.5, 1.0]]), jnp.array([1.0, -1.0]), jnp.ones((2, 2)),
    ...            eps_low=0.2, eps_high=0.2)
    >>> float(e.frac), round(float(e.max_excess_high), 6), round(float(e.max_excess_low), 6)
    (0.5, 0.3, 0.3)
    """
    ratio = jnp.asarray(ratio)
    shape = check_min_rank("ratio", ratio, 2, "[..., G, T]")
    check_shape("advantages", advantages, shape[:-1], "[..., G]")
    check_shape("mask", mask, shape, "[..., G, T]")
    m = jnp.asarray(mask).astype(bool)
    e = optim.clip_excess(ratio, jnp.asarray(advantages)[..., None], m, eps_low=eps_low, eps_high=eps_high)
    n = jnp.maximum(jnp.sum(m), 1)
    hi, lo = jnp.sum(e.high > 0) / n, jnp.sum(e.low > 0) / n
    return Escape(
        frac=hi + lo,
        frac_high=hi,
        frac_low=lo,
        max_excess_high=jnp.maximum(jnp.max(e.high), 0.0),
        max_excess_low=jnp.maximum(jnp.max(e.low), 0.0),
    )


def _bind(logprob_fn: LogprobFn, tokens: jax.Array, prompt: Any, who: str) -> Callable[[Any], jax.Array]:
    """``params -> logprob_fn(params, tokens, prompt)``, checking the output shape (at trace time)."""
    if not callable(logprob_fn):
        raise TypeError(f"{who}: logprob_fn must be callable (params, tokens, prompt) -> logp, got {logprob_fn!r}")
    prompt = jax.tree.map(jnp.asarray, prompt)  # an array, a pytree of arrays (jgrpo.models.Prompt) or None

    def logprob(params):
        logp = logprob_fn(params, tokens, prompt)
        if jnp.shape(logp) != tokens.shape:
            raise ValueError(
                f"{who}: logprob_fn(params, tokens, prompt) must return logp shaped like batch.tokens "
                f"{tuple(tokens.shape)}, got {tuple(jnp.shape(logp))}"
            )
        return logp

    return logprob


def _token_ratio(logp: jax.Array, batch: jgrpo.GroupBatch) -> jax.Array:
    """s_{i,t} = exp(logp − logp_old) on completion tokens, 1 on padding."""
    return jnp.exp(jnp.where(jnp.asarray(batch.mask) > 0, logp - jnp.asarray(batch.logp_old), 0.0))


def grpo_loss_fn(
    spec: MethodSpec, logprob_fn: LogprobFn, batch: jgrpo.GroupBatch, *, prompt: ArrayLike | None = None
) -> Callable[[Any], tuple[jax.Array, dict]]:
    """``params -> (loss, aux)`` for one fixed batch, with the escape statistics in aux.

    ``loss`` and ``aux`` are ``jgrpo.loss(spec, logprob_fn(params, batch.tokens, prompt), batch)``'s,
    plus ``aux["escape"]`` (:class:`Escape` of the token ratios exp(logp − logp_old)
    against the spec's clip range) and ``aux["clip_fraction"]`` = clip_frac_high +
    clip_frac_low (tokens whose advantage gradient the clip has zeroed), the per-step
    signal of ``jgrpo.optim.scale_by_gated_adam``.

    The returned function is pure: differentiate and jit it as any loss
    (``jax.jit(jax.value_and_grad(loss_fn, has_aux=True))``).

    Args:
      spec: the method.
      logprob_fn: ``(params, tokens [..., G, T], prompt [..., P] | None) -> logp [..., G, T]``, the
        protocol of :mod:`jgrpo.policies` (``jgrpo.models.logprob_fn(model_fn)``, ``jgrpo.nnx_logprob_fn``,
        ``jgrpo.policies.tabular_logprob``).
      batch: a :class:`jgrpo.GroupBatch` with ``tokens``.
      prompt: the prompts passed to ``logprob_fn`` (None for a policy that ignores them).
    """
    if batch.tokens is None:
        raise ValueError("grpo_loss_fn needs batch.tokens to re-evaluate the policy")
    tokens = jnp.asarray(batch.tokens)
    logprob = _bind(logprob_fn, tokens, prompt, "grpo_loss_fn")

    def loss_fn(params):
        logp = logprob(params)
        value, aux = jgrpo.loss(spec, logp, batch)
        aux = dict(aux)
        ratio = jax.lax.stop_gradient(_token_ratio(logp, batch))
        aux["escape"] = escape(ratio, aux["advantages"], batch.mask, eps_low=spec.eps_low, eps_high=spec.eps_high)
        aux["clip_fraction"] = aux["clip_frac_high"] + aux["clip_frac_low"]
        return value, aux

    return loss_fn


def group_ratio_fn(
    logprob_fn: LogprobFn, batch: jgrpo.GroupBatch, advantages: ArrayLike, *, prompt: ArrayLike | None = None
) -> optim.RatioFn:
    """``params -> (ratio, advantages[..., None], mask)``: the ``ratio_fn`` of ``jgrpo.optim``'s transforms.

    Args:
      logprob_fn: ``(params, tokens [..., G, T], prompt) -> logp [..., G, T]`` (:mod:`jgrpo.policies` protocol).
      batch: a :class:`jgrpo.GroupBatch` with ``tokens`` (its ``logp_old`` is π_old's).
      advantages: ``[..., G]`` A_i (e.g. ``jgrpo.advantages(spec, batch)``).
      prompt: the prompts passed to ``logprob_fn`` (None for a policy that ignores them).
    """
    if batch.tokens is None:
        raise ValueError("group_ratio_fn needs batch.tokens to re-evaluate the policy")
    tokens = jnp.asarray(batch.tokens)
    adv = jnp.asarray(advantages)[..., None]
    logprob = _bind(logprob_fn, tokens, prompt, "group_ratio_fn")

    def ratio_fn(params):
        return _token_ratio(logprob(params), batch), adv, batch.mask

    return ratio_fn


def simulate_group(
    spec: MethodSpec,
    logprob_fn: LogprobFn,
    params: Any,
    batch: jgrpo.GroupBatch,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    prompt: ArrayLike | None = None,
    opt_state: Any = None,
    extra_args_fn: Callable[[jax.Array, jax.Array, Any], dict] | None = None,
) -> InnerTrajectory:
    """μ inner steps of ``optimizer`` on one fixed group batch (Prop. 3/7, measured).

    Records per step (before each update): the loss, jgrpo.loss's aux, the
    escape statistics (fraction of tokens beyond the bound in the
    advantage-favoured direction, largest excess above 1 + eps_high and below
    1 - eps_low), update norms and the ratio of consecutive update norms;
    ``final_aux`` has the same after the last step. Escape after μ ≤ num_steps
    steps is ``aux['escape']`` at index μ (or ``final_aux`` for μ = num_steps).

    Jit: ``spec``, ``logprob_fn``, ``optimizer`` and ``num_steps`` are Python objects and
    ``params``, ``batch``, ``opt_state`` pytrees of arrays, so close over the former::

        run = jax.jit(lambda params, batch, prompt: simulate_group(spec, logprob_fn, params, batch, opt, 8,
                                                                   prompt=prompt))

    (one compile per set of shapes; pass the prompt as an array argument, not bound into a new
    ``logprob_fn`` object, which would be a new program).

    Args:
      spec: the method (static).
      logprob_fn: ``(params, tokens [..., G, T], prompt) -> logp [..., G, T]``, the :mod:`jgrpo.policies`
        protocol (``jgrpo.models.logprob_fn(model_fn)``, ``jgrpo.nnx_logprob_fn(graphdef)``,
        ``jgrpo.policies.tabular_logprob``).
      params: starting policy parameters; ``batch.logp_old`` should be their log-probs.
      batch: a GroupBatch with ``tokens``.
      prompt: ``[..., P]`` prompts passed to ``logprob_fn`` (or a pytree such as ``jgrpo.models.Prompt(ids, mask)``
        for left-padded prompts); None, the default, for a policy that ignores them.
      optimizer: any optax chain; extra-args transformations get ``extra_args_fn``'s output.
      num_steps: μ (static int).
      opt_state: optional starting state (e.g. vmapped inject_hyperparams state for sweeps).
      extra_args_fn: ``(step, loss, aux) -> dict``; default passes ``new_batch``
        (step == 0), ``clip_fraction`` (from aux) and the trust-region ``ratio_fn``
        (:func:`group_ratio_fn`).

    Returns:
      An ``InnerTrajectory``.

    Raises:
      ValueError: ``batch.tokens`` is missing, ``num_steps`` not an int ≥ 1.
    """
    if batch.tokens is None:
        raise ValueError("simulate_group needs batch.tokens to re-evaluate the policy")
    loss_fn = grpo_loss_fn(spec, logprob_fn, batch, prompt=prompt)
    if extra_args_fn is None:
        ratio_fn = group_ratio_fn(logprob_fn, batch, jgrpo.advantages(spec, batch), prompt=prompt)

        def extra_args_fn(step, loss, aux):
            return {"new_batch": step == 0, "clip_fraction": aux["clip_fraction"], "ratio_fn": ratio_fn}

    return simulate_inner_steps(loss_fn, params, optimizer, num_steps, opt_state=opt_state, extra_args_fn=extra_args_fn)
