"""Prop. 2: reward scaling under AdamW — when the trajectory does not depend on φ.

Setting (Prop. 2 of arXiv 2601.05002). One GRPO-style inner loop: a fixed
batch of groups, π_old = the starting policy (every ratio is 1 at step 0), and
μ optimizer steps on −J (Eq. 1). Replace every reward r_i by φ r_i (φ > 0).
Then A_i = r_i − mean_j r_j (Eq. 2) becomes φ A_i, and the policy part of J,
Σ_{i,t} α_{i,t} f(s_{i,t}) A_i, is multiplied by

- 1 when α carries 1/σ(r) (grpo, gspo, dapo, ...): σ(φr) = φσ(r), so J — and
  every optimizer's trajectory — is unchanged (exactly for ``std_eps = 0``);
- φ otherwise (dr_grpo, grpo_v32, rloo, ...): ∇J_policy(θ; φr) = φ ∇J_policy(θ; r).

For the second kind, with β = 0 the whole gradient is φ g_t. Adam's update
−η m̂_t / (√v̂_t + ε) maps (φ m̂, φ² v̂) to φ m̂ / (φ √v̂ + ε), which equals
m̂/√v̂ when ε = 0 (and ``eps_root`` = 0): the AdamW trajectory θ_0, θ_1, … is
the same for every φ (decoupled weight decay −η λ θ does not see the gradient).
It breaks when

- β ≠ 0: ∇(φ J_policy − β R) is not a multiple of ∇(J_policy − β R);
- ε is not negligible against √v̂ (small φ: the update shrinks towards
  −η φ m̂/ε, an SGD step);
- the optimizer is not scale-free, e.g. SGD: θ_{t+1} − θ_t = η φ g_t.

:func:`trajectory_deviation` runs the inner loop for φ = 1 and for a vector of
φ in one ``vmap`` (one compile), and reports per step

    rel_param_dev[k, t] = ‖θ_t(φ_k) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖        (t = 1..μ)

— how far the φ-run is from the reference, in units of the distance the
reference run has travelled — with ‖·‖ the global L2 norm over the parameter
pytree, and the same for the updates u_t = θ_{t+1} − θ_t.

Note:
  The paper states Prop. 2 for the 1/σ-free weights (β = 0, ε → 0); jgrpo
  measures every preset. In float32 the invariance holds to rounding, with one
  caveat worth knowing: a parameter whose gradient is *mathematically* zero but
  numerically a rounding residue is amplified by Adam with ε → 0 into a ±η
  step whose sign is that of the residue, which differs between φ. Examples:
  the shared first-token context of a group under constant weights, where
  Σ_i A_i = 0 cancels (Prop. 1; exact only when the A_i are exact, e.g. binary
  rewards with balanced groups), and the attention key bias of a transformer
  (softmax is shift-invariant, so its gradient is ~1e-9 noise): on
  ``TransformerConfig.tiny`` even grpo shows ~0.1 relative deviation at
  ε = 1e-12, and ~1e-6 at ε = 1e-3. "ε negligible" means small against the
  real gradients (√v̂ ≈ φ|g|) but above that noise floor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis.overshoot import simulate_inner_steps
from jgrpo.methods import MethodSpec, Regularizer

__all__ = [
    "Deviation",
    "OptimizerHyper",
    "make_optimizer",
    "scale_rewards",
    "scaled_loss",
    "trajectory_deviation",
]

OPTIMIZERS = ("adamw", "sgd")


class OptimizerHyper(NamedTuple):
    """Traced optimizer hyperparameters (a pytree: ``vmap`` over any field to sweep it).

    Attributes:
      learning_rate: η.
      b1, b2: Adam's β1, β2 (ignored by ``sgd``).
      eps: Adam's ε, added outside the square root (ignored by ``sgd``).
      eps_root: Adam's ε inside the square root (ignored by ``sgd``); keep 0 for Prop. 2.
      weight_decay: λ; decoupled for ``adamw`` (−η λ θ), added to the gradient for ``sgd``.
    """

    learning_rate: Any = 1e-2
    b1: Any = 0.9
    b2: Any = 0.999
    eps: Any = 1e-12
    eps_root: Any = 0.0
    weight_decay: Any = 0.0


def make_optimizer(kind: str, hyper: OptimizerHyper) -> optax.GradientTransformation:
    """The optax transformation ``kind`` built from (possibly traced) ``hyper``.

    Args:
      kind: ``"adamw"`` (``optax.adamw``) or ``"sgd"`` (plain gradient descent,
        ``optax.sgd`` after ``add_decayed_weights``).
      hyper: :class:`OptimizerHyper`; its fields may be traced arrays.

    Raises:
      ValueError: an unknown ``kind``.
    """
    if kind == "adamw":
        return optax.adamw(
            hyper.learning_rate,
            b1=hyper.b1,
            b2=hyper.b2,
            eps=hyper.eps,
            eps_root=hyper.eps_root,
            weight_decay=hyper.weight_decay,
        )
    if kind == "sgd":
        return optax.chain(optax.add_decayed_weights(hyper.weight_decay), optax.sgd(hyper.learning_rate))
    raise ValueError(f"optimizer must be one of {OPTIMIZERS} or an optax.GradientTransformation, got {kind!r}")


def scale_rewards(batch: jgrpo.GroupBatch, phi) -> jgrpo.GroupBatch:
    """The batch with rewards r → φ r (and given advantages A → φ A), Prop. 2."""
    phi = jnp.asarray(phi, jnp.float32)
    adv = None if batch.advantages is None else jnp.asarray(batch.advantages, jnp.float32) * phi
    return jgrpo.GroupBatch(
        mask=batch.mask,
        logp_old=batch.logp_old,
        rewards=jnp.asarray(batch.rewards, jnp.float32) * phi,
        logp_ref=batch.logp_ref,
        tokens=batch.tokens,
        entropy=batch.entropy,
        advantages=adv,
    )


def scaled_loss(spec: MethodSpec, logp, batch: jgrpo.GroupBatch, beta=None):
    """−J of Eq. 1 (mean over prompts) with an optionally traced β.

    ``beta=None`` uses ``spec.beta`` and is exactly :func:`jgrpo.loss`. A traced
    ``beta`` computes J_b = Σ α·f − β Σ w·R from :func:`jgrpo.terms` with the
    regularizer of ``spec`` switched on whatever ``spec.beta`` is, so one
    ``MethodSpec`` — static under jit — serves a whole β sweep.

    Returns:
      ``(loss, aux)`` with ``aux = {"objective": J_b [...], "policy": [...],
      "regularizer": R_b [...]}``.
    """
    if beta is None:
        value, aux = jgrpo.loss(spec, logp, batch)
        return value, {k: aux[k] for k in ("objective", "policy", "regularizer")}
    on = spec.replace(beta=1.0) if spec.regularizer != Regularizer.NONE else spec
    t = jgrpo.terms(on, logp, batch)
    policy = jnp.sum(t.alpha * t.term, axis=(-2, -1))
    reg = jnp.sum(t.reg_weight * t.reg_value, axis=(-2, -1))
    objective = policy - jnp.asarray(beta, policy.dtype) * reg
    aux = {
        "objective": objective,
        "policy": jax.lax.stop_gradient(policy),
        "regularizer": jax.lax.stop_gradient(reg),
    }
    return -jnp.mean(objective), aux


class Deviation(NamedTuple):
    """Trajectory deviation of φ-scaled rewards from the φ = 1 run (Prop. 2).

    K scales, S = ``num_steps``; t counts optimizer steps, θ_0 the start.

    Attributes:
      phis: ``[K]`` the reward scales φ.
      rel_param_dev: ``[K, S]`` ‖θ_t(φ) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖ for t = 1..S.
      rel_param_dev_to_norm: ``[K, S]`` ‖θ_t(φ) − θ_t(1)‖ / ‖θ_t(1)‖.
      param_dev: ``[K, S]`` ‖θ_t(φ) − θ_t(1)‖.
      displacement: ``[S]`` ‖θ_t(1) − θ_0‖ of the reference run.
      rel_update_dev: ``[K, S]`` ‖u_t(φ) − u_t(1)‖ / ‖u_t(1)‖, u_t = θ_{t+1} − θ_t
        (t = 0..S−1; the updates are parameter differences, so they carry one
        float32 rounding of θ).
      grad_norm: ``[K, S]`` ‖∇(−J)‖ at θ_t(φ) before each step.
      ref_grad_norm: ``[S]`` the same for φ = 1.
      objective: ``[K, S]`` J (mean over prompts, φ-scaled rewards) before each step.
      ref_objective: ``[S]`` the same for φ = 1.
      max_rel_param_dev: ``[K]`` max over t of ``rel_param_dev``.
    """

    phis: jax.Array
    rel_param_dev: jax.Array
    rel_param_dev_to_norm: jax.Array
    param_dev: jax.Array
    displacement: jax.Array
    rel_update_dev: jax.Array
    grad_norm: jax.Array
    ref_grad_norm: jax.Array
    objective: jax.Array
    ref_objective: jax.Array
    max_rel_param_dev: jax.Array


def _tree_norm(tree, n_lead: int):
    """Global L2 norm over the leaves of ``tree``, keeping the first ``n_lead`` axes."""
    sq = [jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(n_lead, x.ndim))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(sq))


def _safe_div(a, b):
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), jnp.where(a > 0, jnp.inf, 0.0))


@functools.partial(
    jax.jit, static_argnames=("spec", "logprob_fn", "optimizer", "num_steps", "recompute_logp_old", "use_beta")
)
def _trajectory_deviation(
    spec, logprob_fn, params, batch, prompt, phis, hyper, beta, *, optimizer, num_steps, recompute_logp_old, use_beta
):
    opt = make_optimizer(optimizer, hyper) if isinstance(optimizer, str) else optimizer
    if recompute_logp_old:
        logp0 = jax.lax.stop_gradient(logprob_fn(params, batch.tokens, prompt)).astype(jnp.float32)
        batch = dataclasses.replace(batch, logp_old=logp0)
    all_phis = jnp.concatenate([jnp.ones((1,), jnp.float32), phis.astype(jnp.float32)])

    def run(phi):
        scaled = scale_rewards(batch, phi)

        def loss_fn(p):
            logp = logprob_fn(p, batch.tokens, prompt)
            value, aux = scaled_loss(spec, logp, scaled, beta if use_beta else None)
            return value, {"params": p, "objective": jnp.mean(aux["objective"])}

        traj = simulate_inner_steps(loss_fn, params, opt, num_steps)
        path = jax.tree.map(lambda s, f: jnp.concatenate([s, f[None]], axis=0), traj.aux["params"], traj.final_params)
        return path, traj.grad_norm, traj.aux["objective"]

    path, gnorm, objective = jax.vmap(run)(all_phis)  # leaves [K+1, S+1, ...]
    ref = jax.tree.map(lambda x: x[:1], path)
    diff = jax.tree.map(lambda x, r: x[1:, 1:] - r[:, 1:], path, ref)
    param_dev = _tree_norm(diff, 2)  # [K, S]
    displacement = _tree_norm(jax.tree.map(lambda r: r[0, 1:] - r[0, :1], ref), 1)  # [S]
    ref_norm = _tree_norm(jax.tree.map(lambda r: r[0, 1:], ref), 1)
    upd = jax.tree.map(lambda x: x[:, 1:] - x[:, :-1], path)  # [K+1, S, ...]
    upd_dev = _tree_norm(jax.tree.map(lambda u: u[1:] - u[:1], upd), 2)
    upd_ref = _tree_norm(jax.tree.map(lambda u: u[0], upd), 1)
    rel = _safe_div(param_dev, displacement[None])
    return Deviation(
        phis=phis,
        rel_param_dev=rel,
        rel_param_dev_to_norm=_safe_div(param_dev, ref_norm[None]),
        param_dev=param_dev,
        displacement=displacement,
        rel_update_dev=_safe_div(upd_dev, upd_ref[None]),
        grad_norm=gnorm[1:],
        ref_grad_norm=gnorm[0],
        objective=objective[1:],
        ref_objective=objective[0],
        max_rel_param_dev=jnp.max(rel, axis=-1),
    )


def trajectory_deviation(
    spec: MethodSpec,
    logprob_fn: Callable[[Any, jax.Array, Any], jax.Array],
    params,
    batch: jgrpo.GroupBatch,
    prompt,
    phis,
    *,
    num_steps: int,
    optimizer: str | optax.GradientTransformation = "adamw",
    hyper: OptimizerHyper | None = None,
    beta=None,
    recompute_logp_old: bool = True,
) -> Deviation:
    """How far φ-scaled rewards move the inner-loop trajectory (Prop. 2).

    Runs μ = ``num_steps`` optimizer steps on −J(θ; φ r) (Eq. 1, the fixed
    ``batch``) from ``params`` for φ = 1 and for every φ in ``phis``, as one
    ``vmap`` inside one ``jit`` (via :func:`analysis.overshoot.simulate_inner_steps`),
    and compares each run with the φ = 1 run step by step:

        rel_param_dev[k, t−1] = ‖θ_t(φ_k) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖,   t = 1..μ.

    Prop. 2 predicts rounding-level values for β = 0, ε → 0 under AdamW (any
    preset), and for every optimizer when α carries 1/σ(r); β ≠ 0, a large ε or
    SGD give O(1) values for 1/σ-free presets such as ``dr_grpo``.

    Sweeps: ``phis``, every field of ``hyper`` and ``beta`` are traced, so a
    call with other values (or a ``jax.vmap`` over any of them) reuses the
    compiled program. ``spec``, ``logprob_fn``, ``optimizer`` and ``num_steps``
    are static.

    Args:
      spec: the method (static).
      logprob_fn: ``(params, tokens [..., G, T], prompt) -> logp [..., G, T]``
        (``jgrpo.policies``' protocol; static, so pass the same function object).
      params: the starting parameters θ_0 (pytree).
      batch: :class:`jgrpo.GroupBatch` ``[..., G, T]`` with ``tokens``; with
        ``logp_ref`` for a KL regularizer.
      prompt: ``[..., P]`` prompt ids passed to ``logprob_fn`` (anything it accepts).
      phis: ``[K]`` reward scales φ > 0.
      num_steps: μ ≥ 1, a Python int.
      optimizer: ``"adamw"`` or ``"sgd"`` built from ``hyper`` (see
        :func:`make_optimizer`), or any optax transformation (then ``hyper``
        must be None; sweep it with ``optax.inject_hyperparams`` yourself).
      hyper: :class:`OptimizerHyper` (default: η = 1e-2, β1 = 0.9, β2 = 0.999,
        ε = 1e-12, ε_root = 0, λ = 0).
      beta: a traced β overriding ``spec.beta`` (see :func:`scaled_loss`); None
        keeps ``spec.beta`` (then the loss is exactly ``jgrpo.loss``).
      recompute_logp_old: replace ``batch.logp_old`` by
        ``logprob_fn(params, tokens, prompt)`` so that every ratio is 1 at step 0
        (the GRPO inner loop with π_old = θ_0). With False ``batch.logp_old`` is used as is.

    Returns:
      :class:`Deviation`.

    Raises:
      ValueError: ``phis`` not of rank 1, a non-positive or non-finite φ (when
        concrete), ``num_steps`` not an int ≥ 1, ``batch.tokens`` missing,
        ``hyper`` given with a custom optimizer, an unknown optimizer name.

    Note:
      The deviation is normalised by the reference displacement ‖θ_t(1) − θ_0‖,
      not by ‖θ_t(1)‖ (also returned), because the latter is dominated by θ_0 and
      would hide a deviation as large as the whole step.
    """
    phis_arr = jnp.asarray(phis, jnp.float32)
    if phis_arr.ndim != 1:
        raise ValueError(f"phis must have shape [K], got shape {tuple(phis_arr.shape)}")
    if not isinstance(phis, jax.core.Tracer):
        values = np.asarray(phis, np.float64)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"phis must be finite and > 0 (Prop. 2 scales rewards by phi > 0), got {values.tolist()}")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a Python int >= 1, got {num_steps!r}")
    if batch.tokens is None:
        raise ValueError("batch.tokens is required: logprob_fn(params, batch.tokens, prompt) gives logp")
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZERS} or an optax.GradientTransformation, got {optimizer!r}"
            )
        hyper = OptimizerHyper() if hyper is None else hyper
        hyper = OptimizerHyper(*(jnp.asarray(h, jnp.float32) for h in hyper))
    elif hyper is not None:
        raise ValueError("hyper applies to optimizer='adamw' or 'sgd' only; got it with a custom optax transformation")
    use_beta = beta is not None
    beta_arr = jnp.asarray(0.0 if beta is None else beta, jnp.float32)
    return _trajectory_deviation(
        spec,
        logprob_fn,
        params,
        batch,
        prompt,
        phis_arr,
        hyper,
        beta_arr,
        optimizer=optimizer,
        num_steps=num_steps,
        recompute_logp_old=recompute_logp_old,
        use_beta=use_beta,
    )
