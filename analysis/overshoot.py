"""Prop. 3 / Prop. 7: Adam's momentum carries a policy past its clipping region.

Setting (the paper's Sec. on optimizer dynamics and its appendix proof). A
coordinate receives the same gradient g for T Adam steps while its importance
ratio travels towards the clip boundary; from step T+1 on the ratio sits beyond
1 + ε_up (A > 0) or below 1 − ε_low (A < 0), the clipped branch of Eq. 1 is
active and the advantage gradient of that coordinate is exactly 0. Adam still
moves it, because its first moment remembers g.

Derivation (jgrpo's own; the numbering follows the paper, Eqs. 32-38). With
optax's Adam (1-indexed count t, bias correction, ε outside the square root)

    m_t = β1 m_{t-1} + (1 − β1) g_t,   v_t = β2 v_{t-1} + (1 − β2) g_t²,
    u_t = −η · m̂_t / (√v̂_t + ε),      m̂_t = m_t / p_t(β1),  v̂_t = v_t / p_t(β2),

where p_t(β) = 1 − β^t. Constant g for t ≤ T gives m_T = p_T(β1) g and
v_T = p_T(β2) g², so m̂_T = g, v̂_T = g² and (ε = 0) the last gradient step is
u_T = −η sign(g): bias correction makes it equal to the steady-state step, so
"relative to the last update" and "relative to the steady update" coincide.
At step T+1+k (k ≥ 0) the gradient is 0, so m = β1^{k+1} m_T, v = β2^{k+1} v_T:

    C_{T,k} = u_{T+k+1} / u_T
            = (β1/√β2)^{k+1} · p_T(β1)/p_{T+k+1}(β1) · √(p_{T+k+1}(β2)/p_T(β2))   (Eq. 36)
    C_T     = C_{T,0}                                                          (Eq. 32)
    lim_{T→∞} C_T     = β1/√β2            (Eq. 33; 0.9/√0.95 ≈ 0.923)
    lim_{T→∞} C_{T,k} = (β1/√β2)^{k+1}    (Eq. 37; k = 4: ≈ 0.671, "≈ 0.66" in the paper)

With ε > 0, write ρ_{T,k} = √(v̂_{T+k+1}/v̂_T) = √(β2^{k+1} p_T(β2)/p_{T+k+1}(β2)).
Then u_T = −η g/(|g| + ε) and u_{T+k+1} = −η m̂/(ρ|g| + ε), hence

    C^ε_{T,k} = C_{T,k} · F_ε,   F_ε = (|g| + ε) / (|g| + ε/ρ_{T,k}) ≤ 1        (Eq. 38)

— ε shrinks the overshoot, and only when |g| is not large against ε/ρ.

Note:
  The paper's own text for Eqs. 32-38 was not available to jgrpo's authors; the
  formulas above are derived from optax's Adam and verified against it (see
  ``simulate_adam_after_clip`` and ``tests/test_overshoot_closed_form.py``). The
  equation numbers are those DESIGN.md gives for the paper's statements. If
  β1 ≥ √β2 the ratio β1/√β2 ≥ 1 and zero-gradient steps *grow*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "AdamAfterClip",
    "InnerTrajectory",
    "c_coefficient",
    "c_limit",
    "eps_factor",
    "simulate_adam_after_clip",
    "simulate_inner_steps",
    "total_overshoot",
]


# ----------------------------------------------------------------------------- closed forms


def _float_dtype(*xs):
    return jnp.result_type(*xs, jnp.float32)


def _steps(T, dtype):
    """T as a float array; ``None`` means T → ∞."""
    return jnp.asarray(jnp.inf if T is None else T, dtype)


def _one_minus_pow(beta, t):
    """p_t(β) = 1 − β^t, accurate for β near 1 (``-expm1(t log β)``); t = ∞ gives 1."""
    return -jnp.expm1(t * jnp.log(beta))


def _v_decay(beta2, T, k):
    """ρ_{T,k} = √(v̂_{T+k+1} / v̂_T) = √(β2^{k+1} p_T(β2) / p_{T+k+1}(β2))."""
    return jnp.sqrt(jnp.exp((k + 1) * jnp.log(beta2)) * _one_minus_pow(beta2, T) / _one_minus_pow(beta2, T + k + 1))


def c_coefficient(beta1, beta2, T=None, k=0):
    """Overshoot coefficient C_{T,k}: Adam's step k+1 steps after the gradient vanished, per last step.

    C_{T,k} = (β1/√β2)^{k+1} · (1 − β1^T)/(1 − β1^{T+k+1}) · √((1 − β2^{T+k+1})/(1 − β2^T)).

    Implements Eq. (32) (C_T, k = 0) and Eq. (36) (general k) of arXiv 2601.05002;
    ``T = None`` or ``jnp.inf`` gives their limits, Eq. (33) β1/√β2 and Eq. (37)
    (β1/√β2)^{k+1}. The value is exact for optax's Adam with ε = 0 (multiply by
    ``eps_factor`` for ε > 0).

    All arguments broadcast against each other; the function is pure, jit-able and
    vmappable over every argument (T included).

    Args:
      beta1: Adam's β1, in [0, 1).
      beta2: Adam's β2, in (0, 1).
      T: number of constant-gradient steps before the clip zeroes the gradient,
        T ≥ 1; ``None`` or ``jnp.inf`` for the T → ∞ limit.
      k: number of zero-gradient steps already taken (k = 0 is the first step past
        the boundary), k ≥ 0.

    Returns:
      C_{T,k}, float (float32 unless an input is float64), the broadcast shape.

    Note:
      The paper's text for these equations was not available; this closed form is
      derived in the module docstring and checked against optax to 1e-5.
    """
    dtype = _float_dtype(beta1, beta2)
    b1, b2 = jnp.asarray(beta1, dtype), jnp.asarray(beta2, dtype)
    t, kk = _steps(T, dtype), jnp.asarray(k, dtype)
    base = jnp.exp((kk + 1) * (jnp.log(b1) - 0.5 * jnp.log(b2)))  # (β1/√β2)^{k+1}
    first = _one_minus_pow(b1, t) / _one_minus_pow(b1, t + kk + 1)
    second = jnp.sqrt(_one_minus_pow(b2, t + kk + 1) / _one_minus_pow(b2, t))
    return base * first * second


def c_limit(beta1, beta2, k=0):
    """lim_{T→∞} C_{T,k} = (β1/√β2)^{k+1}: Eq. (33) for k = 0, Eq. (37) in general."""
    dtype = _float_dtype(beta1, beta2)
    b1, b2, kk = jnp.asarray(beta1, dtype), jnp.asarray(beta2, dtype), jnp.asarray(k, dtype)
    return (b1 / jnp.sqrt(b2)) ** (kk + 1)


def eps_factor(g_abs, beta2, T=None, k=0, eps=1e-8):
    """Factor F_ε by which Adam's ε shrinks the overshoot: C^ε_{T,k} = F_ε · C_{T,k}.

    F_ε = (|g| + ε) / (|g| + ε/ρ_{T,k}),  ρ_{T,k} = √(β2^{k+1}(1 − β2^T)/(1 − β2^{T+k+1})).

    C^ε_{T,k} is the ratio u_{T+k+1}/u_T of the overshoot step to the last gradient
    step, both with the same ε. Since ρ ≤ 1, F_ε ≤ 1 (= 1 at ε = 0); the shrink is
    1 − F_ε ≈ (ε/|g|)(1/ρ − 1) for ε ≪ |g|, i.e. negligible at LLM-scale ε = 1e-8
    unless the gradient itself is tiny. ``T = None``/``jnp.inf`` gives ρ = β2^{(k+1)/2}.

    Implements Eq. (38) of arXiv 2601.05002 (as derived in the module docstring).

    Args:
      g_abs: |g|, the magnitude of the constant gradient before the clip (> 0).
      beta2: Adam's β2, in (0, 1).
      T: constant-gradient steps, T ≥ 1, or ``None``/``jnp.inf``.
      k: zero-gradient steps already taken, k ≥ 0.
      eps: Adam's ε (optax's, added outside the square root), ≥ 0.

    Returns:
      F_ε, broadcast over all arguments.
    """
    dtype = _float_dtype(g_abs, beta2, eps)
    g, b2, e = jnp.asarray(g_abs, dtype), jnp.asarray(beta2, dtype), jnp.asarray(eps, dtype)
    rho = _v_decay(b2, _steps(T, dtype), jnp.asarray(k, dtype))
    return (g + e) / (g + e / rho)


def total_overshoot(beta1, beta2, T=None, *, num_steps: int):
    """Σ_{k=0}^{K−1} C_{T,k}: distance travelled in K zero-gradient steps, in units of the last step.

    With T → ∞ this is r(1 − r^K)/(1 − r), r = β1/√β2 (→ r/(1 − r) ≈ 12 last-steps
    for β1 = 0.9, β2 = 0.95 as K → ∞). Built on Eq. (36).

    Args:
      beta1, beta2, T: as in ``c_coefficient`` (broadcast).
      num_steps: K ≥ 1, a static Python int.

    Returns:
      The sum, broadcast over beta1, beta2, T.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a Python int >= 1, got {num_steps!r}")
    ks = jnp.arange(num_steps)
    return jax.vmap(lambda k: c_coefficient(beta1, beta2, T, k))(ks).sum(axis=0)


# ----------------------------------------------------------------------------- simulations


class AdamAfterClip(NamedTuple):
    """Result of ``simulate_adam_after_clip``.

    Attributes:
      updates: [T+K, *g.shape] optax Adam updates; rows 0..T-1 under gradient g,
        rows T..T+K-1 under gradient 0.
      c: [K, *g.shape] simulated C_{T,k} = u_{T+k+1}/u_T for k = 0..K-1.
    """

    updates: jax.Array
    c: jax.Array


def _simulate_adam_after_clip(g, beta1, beta2, eps, lr, T, K):
    g = jnp.asarray(g, _float_dtype(g))
    opt = optax.adam(learning_rate=lr, b1=beta1, b2=beta2, eps=eps)
    grads = jnp.where((jnp.arange(T + K) < T).reshape((-1,) + (1,) * g.ndim), g, jnp.zeros_like(g))

    def step(state, grad):
        updates, state = opt.update(grad, state)
        return state, updates

    _, updates = jax.lax.scan(step, opt.init(g), grads)
    return AdamAfterClip(updates=updates, c=updates[T:] / updates[T - 1])


_simulate_adam_after_clip_jit = jax.jit(_simulate_adam_after_clip, static_argnames=("T", "K"))


def simulate_adam_after_clip(g, beta1, beta2, eps, T: int, K: int, lr=1.0) -> AdamAfterClip:
    """Run the real ``optax.adam`` for T steps of gradient g, then K steps of gradient 0.

    The zero gradient models the clipped branch of Eq. 1 once the ratio has crossed
    the clip boundary (Prop. 3). The simulated C_{T,k} equals ``c_coefficient``
    (times ``eps_factor`` when ε > 0).

    Args:
      g: the constant gradient, scalar or any array (each coordinate is its own Adam).
      beta1, beta2, eps, lr: Adam hyperparameters (traced: vmap over them freely).
      T: constant-gradient steps, a static Python int ≥ 1.
      K: zero-gradient steps, a static Python int ≥ 1.

    Returns:
      ``AdamAfterClip(updates [T+K, ...], c [K, ...])``.
    """
    for name, val in (("T", T), ("K", K)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a static Python int >= 1, got {val!r}")
    return _simulate_adam_after_clip_jit(g, beta1, beta2, eps, lr, T=T, K=K)


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
    params,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    opt_state=None,
    extra_args_fn: Callable[[jax.Array, jax.Array, Any], dict] | None = None,
) -> InnerTrajectory:
    """μ inner optimizer steps on a fixed objective, as one ``lax.scan``.

    At step t = 0..S−1: (loss, aux), grad = value_and_grad(loss_fn)(params_t);
    u_t, state = optimizer.update(grad, state, params_t, **extra_args_fn(t, loss, aux));
    params_{t+1} = params_t + u_t. This is the inner loop of GRPO-style training
    (μ updates on one batch with fixed π_old), where Prop. 3 predicts the policy
    overshoots the clip region.

    Pure and traceable: wrap it in ``jax.jit`` (``loss_fn``, ``optimizer``,
    ``num_steps``, ``extra_args_fn`` closed over or static). To sweep hyperparameters
    with one compile, either build the optimizer inside a ``vmap``ped function
    from a traced value, or build it with ``optax.inject_hyperparams`` and pass a
    vmapped ``opt_state`` whose ``hyperparams`` differ.

    Args:
      loss_fn: ``params -> (loss, aux)``, pure; aux is any pytree (recorded as is).
      params: initial parameters (pytree).
      optimizer: any optax transformation; extra-args transformations (such as
        ``jgrpo.optim.scale_by_gated_adam``) receive ``extra_args_fn``'s output, plain
        ones ignore it.
      num_steps: S ≥ 1, a static Python int.
      opt_state: initial optimizer state; default ``optimizer.init(params)``.
      extra_args_fn: ``(step, loss, aux) -> dict`` of keyword extra args for
        ``optimizer.update`` at each step (e.g. ``{"clip_fraction": aux["clip_frac"],
        "new_batch": step == 0}``); default none.

    Returns:
      ``InnerTrajectory``.

    Raises:
      ValueError: if ``num_steps`` is not a Python int ≥ 1.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a static Python int >= 1, got {num_steps!r}")
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


def escape(ratio, advantages, mask, *, eps_low, eps_high) -> Escape:
    """Escape statistics of ratios ``[..., G, T]`` with advantages ``[..., G]`` (Prop. 3/7)."""
    m = jnp.asarray(mask).astype(bool)
    adv = jnp.asarray(advantages)[..., None]
    up = jnp.where(m & (adv > 0), ratio - (1.0 + eps_high), -jnp.inf)
    down = jnp.where(m & (adv < 0), (1.0 - eps_low) - ratio, -jnp.inf)
    n = jnp.maximum(jnp.sum(m), 1)
    hi, lo = jnp.sum(up > 0) / n, jnp.sum(down > 0) / n
    return Escape(
        frac=hi + lo,
        frac_high=hi,
        frac_low=lo,
        max_excess_high=jnp.maximum(jnp.max(up), 0.0),
        max_excess_low=jnp.maximum(jnp.max(down), 0.0),
    )


def grpo_loss_fn(spec, logprob_fn, batch):
    """``params -> (loss, aux)`` for one fixed batch, with the escape statistics in aux.

    ``aux`` holds jgrpo.loss's aux plus ``escape`` (:class:`Escape` of the
    token ratios exp(logp - logp_old) against the spec's clip range) and
    ``clip_fraction`` (tokens whose advantage gradient the clip has zeroed),
    the per-step signal of ``jgrpo.optim.scale_by_gated_adam``.
    """
    import jgrpo  # local: analysis depends on the library, not the reverse

    tokens = jnp.asarray(batch.tokens)

    def loss_fn(params):
        logp = logprob_fn(params, tokens)
        value, aux = jgrpo.loss(spec, logp, batch)
        ratio = jnp.exp(jnp.where(jnp.asarray(batch.mask) > 0, logp - jnp.asarray(batch.logp_old), 0.0))
        aux = dict(aux)
        aux["escape"] = escape(
            jax.lax.stop_gradient(ratio), aux["advantages"], batch.mask, eps_low=spec.eps_low, eps_high=spec.eps_high
        )
        aux["clip_fraction"] = aux["clip_frac_high"] + aux["clip_frac_low"]
        return value, aux

    return loss_fn


def group_ratio_fn(logprob_fn, batch, advantages):
    """``params -> (ratio, advantages, mask)`` for ``jgrpo.optim.trust_region_guard``."""
    tokens = jnp.asarray(batch.tokens)

    def ratio_fn(params):
        logp = logprob_fn(params, tokens)
        ratio = jnp.exp(jnp.where(jnp.asarray(batch.mask) > 0, logp - jnp.asarray(batch.logp_old), 0.0))
        return ratio, advantages[..., None], batch.mask

    return ratio_fn


def simulate_group(spec, logprob_fn, params, batch, optimizer, num_steps: int, *, opt_state=None, extra_args_fn=None):
    """μ inner steps of ``optimizer`` on one fixed group batch (Prop. 3/7, measured).

    Records per step (before each update): the loss, jgrpo.loss's aux, the
    escape statistics (fraction of tokens beyond the bound in the
    advantage-favoured direction, largest excess above 1 + eps_high and below
    1 - eps_low), update norms and the ratio of consecutive update norms;
    ``final_aux`` has the same after the last step. Escape after μ ≤ num_steps
    steps is ``aux['escape']`` at index μ (or ``final_aux`` for μ = num_steps).

    Args:
      spec: the method (static).
      logprob_fn: ``(params, tokens) -> logp`` (bind the prompt with functools.partial).
      params: starting policy parameters; ``batch.logp_old`` should be their log-probs.
      batch: a GroupBatch with ``tokens``.
      optimizer: any optax chain; extra-args transformations get ``extra_args_fn``'s output.
      num_steps: μ (static int).
      opt_state: optional starting state (e.g. vmapped inject_hyperparams state for sweeps).
      extra_args_fn: ``(step, loss, aux) -> dict``; default passes ``new_batch``
        (step == 0), ``clip_fraction`` (from aux) and the trust-region ``ratio_fn``.

    Returns:
      An ``InnerTrajectory``.
    """
    if batch.tokens is None:
        raise ValueError("simulate_group needs batch.tokens to re-evaluate the policy")
    loss_fn = grpo_loss_fn(spec, logprob_fn, batch)
    if extra_args_fn is None:
        import jgrpo

        adv = jgrpo.advantages(spec, batch)
        ratio_fn = group_ratio_fn(logprob_fn, batch, adv)

        def extra_args_fn(step, loss, aux):
            return {"new_batch": step == 0, "clip_fraction": aux["clip_fraction"], "ratio_fn": ratio_fn}

    return simulate_inner_steps(loss_fn, params, optimizer, num_steps, opt_state=opt_state, extra_args_fn=extra_args_fn)
