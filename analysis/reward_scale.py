"""Prop. 2: reward scaling under Adam(W) — when the inner-loop trajectory does not depend on φ.

Setting (Prop. 2 and Appendix C of arXiv 2601.05002). One GRPO-style inner
loop: a fixed batch of groups, π_old = the starting policy (every ratio is 1 at
step 0), and μ optimizer steps on −J (Eq. 1). Replace every reward r_i by φ r_i
(φ > 0). Then A_i = r_i − mean_j r_j becomes φ A_i (Eqs. 19–20), and the policy
part of J, Σ_{i,t} α_{i,t} f(s_{i,t}) A_i, is multiplied by φ^d, where d is the
*reward degree* of the preset (:func:`reward_degree`):

- d = 0 when α carries one 1/σ(r) (grpo, gspo, dapo, cispo, gcpo, ...): σ(φr) =
  φσ(r), so J itself — and every optimizer's trajectory, for any β, ε, λ —
  does not depend on φ;
- d = 1 when α carries no reward scale (dr_grpo, grpo_v32, gtpo, gpg, rloo):
  the advantage gradient is g_A(θ; φr) = φ g_A(θ; r) (Eq. 23);
- no degree (``None``) when the objective is not homogeneous in the rewards at
  all: CPPO's pruning 1{|A_i| > γ} on *centred* advantages (the pruned set
  changes with φ), or a σ + ε guard (verl / TRL flavours).

For d ≠ 0 and β = 0 the whole gradient is φ^d g_t, Adam's moments scale as
(φ^d m̂, φ^{2d} v̂) (Eqs. 24–26), and the update −η m̂/(√v̂ + ε) − η λ θ equals
the φ = 1 update in the limit ε/(φ^d √v̂) → 0 (Eq. 27; ``eps_root`` = 0). The
decoupled weight decay −η λ θ does not see the gradient, so AdamW keeps the
invariance. It breaks when

- β ≠ 0: ∇(φ^d J_policy − β R) is not a multiple of ∇(J_policy − β R);
- ε is not negligible against φ^d √v̂ (small φ: the update shrinks towards an
  SGD step −η φ m̂/ε);
- weight decay is *coupled* (L2 added to the gradient before Adam, i.e. Adam
  with ``weight_decay`` as in PyTorch's ``torch.optim.Adam``): Adam then
  normalises φ g + λ θ, which is not a multiple of g + λ θ;
- the optimizer is not scale-free, e.g. SGD: θ_{t+1} − θ_t = −η φ g_t.

:func:`trajectory_deviation` runs the inner loop for φ = 1 (the reference), for
every φ of a vector and — to measure the floating-point noise floor — for
φ = 1 on copies of the batch whose prompts and completions are reordered
(a mathematically identical objective; only the order of the float reductions
changes), all as one ``vmap`` inside one ``jit``. It reports per step

    rel_param_dev[k, t] = ‖θ_t(φ_k) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖        (t = 1..μ)

— how far the φ-run is from the reference, in units of the distance the
reference run has travelled, ‖·‖ the global L2 norm over the parameter pytree
(computed in float32 whatever the parameter dtype) — and the same quantity for
each reordered run (``floor_rel_param_dev``). :func:`deviation_grid` does the
same for a stack of data sets (seeds) × a stack of optimizer settings (β, ε,
λ, L2, η) in one compiled program.

Note:
  A parameter whose gradient is *mathematically* zero but numerically a
  rounding residue is amplified by Adam with ε → 0 into a ±η step whose sign is
  that of the residue. Example: under constant weights (dr_grpo, gpg) the
  logits of the tabular start context for tokens that no completion of the
  group chose get −π_v Σ_i A_i / G at step 0, exactly 0 only when the A_i sum
  to exactly 0 in floating point. Such residues depend on φ *and* on the
  reduction order, so the reordered runs see them too: that is why the noise
  floor is measured, not assumed.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import jgrpo
from jgrpo._validate import check_bool, check_static_int, is_concrete
from jgrpo.methods import FNorm, MethodSpec, Regularizer, Scale
from jgrpo.objective import objective_parts, objective_per_prompt
from jgrpo.policies import LogprobFn

__all__ = [
    "Deviation",
    "OptimizerHyper",
    "deviation_grid",
    "make_optimizer",
    "permute_batch",
    "prunes_on_standardised",
    "random_permutations",
    "reward_degree",
    "scale_rewards",
    "scaled_loss",
    "trajectory_deviation",
]

OPTIMIZERS = ("adamw", "sgd", "adamw_or_sgd")
# φ one unit in the last place above and below 1 (float32): the floor runs that perturb the rewards by a rounding
ULP_PHIS = (float(np.nextafter(np.float32(1), np.float32(2))), float(np.nextafter(np.float32(1), np.float32(0))))


# ----------------------------------------------------------------------------- presets: the reward degree


def prunes_on_standardised(spec: MethodSpec) -> bool:
    """Whether ``spec`` prunes completions on standardised advantages |A_i/σ| > γ (the CPPO paper).

    Table 1's CPPO prunes on centred advantages |A_i| > γ (``prune_gamma``). A
    pruning mode on standardised advantages is recognised as any other
    ``MethodSpec`` field whose name starts with ``prune`` and whose value names
    standardisation (an enum/str containing ``"std"`` or ``"standard"``, or
    ``True`` for a bool field named like ``prune_standardised``). False when the
    spec has no such field (the option does not exist in this jgrpo).
    """
    if getattr(spec, "prune_gamma", None) is None:
        return False
    for field in dataclasses.fields(spec):
        if not field.name.startswith("prune") or field.name == "prune_gamma":
            continue
        value = getattr(spec, field.name)
        if isinstance(value, bool):
            if value and ("std" in field.name or "standard" in field.name):
                return True
            continue
        text = str(value.value if isinstance(value, enum.Enum) else value).lower()
        if "std" in text or "standard" in text:
            return True
    return False


def reward_degree(spec: MethodSpec) -> int | None:
    """The degree d of the policy part of J in the rewards: J_policy(θ; φr) = φ^d J_policy(θ; r), or None.

    d = 1 − (number of reward-std factors in α): 0 for α ∝ 1/σ (grpo, dapo, ...),
    1 for α free of rewards (dr_grpo, ...), −1 for two (``scale`` 1/σ and GPG's
    ``f_norm = batch_std``). Every other piece of Eq. 1 is invariant under
    r → φ r with φ > 0: A_i is linear (Eq. 19; RLOO too); masks that read only the
    sign of A_i (V3.2's off-policy mask, GTPO's conflict tokens, SAPO's τ), GPG's
    count of all-equal groups, the ratios and the regularizer R do not depend on φ.

    Returns None when the objective is not homogeneous in the rewards: pruning on
    centred advantages |A_i| > γ (Table 1's CPPO; the pruned set depends on φ) or
    a σ with ``std_eps > 0`` (σ + ε is not proportional to φ).

    Args:
      spec: a :class:`jgrpo.MethodSpec`.

    Raises:
      TypeError: ``spec`` is not a MethodSpec.
    """
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a jgrpo.MethodSpec (from jgrpo.methods.get), got {type(spec).__name__}")
    n_sigma = int(spec.scale in (Scale.GROUP_STD, Scale.BATCH_STD)) + int(spec.f_norm == FNorm.BATCH_STD)
    if n_sigma and spec.std_eps > 0:
        return None
    if spec.prune_gamma is not None and not (prunes_on_standardised(spec) and n_sigma):
        return None
    return 1 - n_sigma


# ----------------------------------------------------------------------------- optimizers


class OptimizerHyper(NamedTuple):
    """Traced optimizer hyperparameters (a pytree: ``vmap`` over any field to sweep it).

    Attributes:
      learning_rate: η.
      b1, b2: Adam's β1, β2 (ignored by ``sgd``).
      eps: Adam's ε, added outside the square root (ignored by ``sgd``).
      eps_root: Adam's ε inside the square root (ignored by ``sgd``); keep 0 for Prop. 2.
      weight_decay: λ of the *decoupled* weight decay −η λ θ (AdamW, Eq. 4).
      l2: λ of a *coupled* L2 penalty: λ θ added to the gradient before the
        optimizer (Adam with L2, PyTorch's ``Adam(weight_decay=λ)``). For SGD
        both forms are the same update −η λ θ.
      sgd: read by the ``"adamw_or_sgd"`` program only: 1 selects plain gradient
        descent, 0 Adam(W) (a traced switch, so that one compiled program serves both).
    """

    learning_rate: Any = 1e-2
    b1: Any = 0.9
    b2: Any = 0.999
    eps: Any = 1e-12
    eps_root: Any = 0.0
    weight_decay: Any = 0.0
    l2: Any = 0.0
    sgd: Any = 0.0


def _scale_by_adam_or_identity(hyper: OptimizerHyper) -> optax.GradientTransformation:
    """``scale_by_adam`` where ``hyper.sgd`` < 0.5, the gradient unchanged elsewhere (both computed, one kept)."""
    adam = optax.scale_by_adam(b1=hyper.b1, b2=hyper.b2, eps=hyper.eps, eps_root=hyper.eps_root)

    def update(updates, state, params=None):
        scaled, state = adam.update(updates, state, params)
        use_sgd = jnp.asarray(hyper.sgd) > 0.5
        return jax.tree.map(lambda a, g: jnp.where(use_sgd, g.astype(a.dtype), a), scaled, updates), state

    return optax.GradientTransformation(adam.init, update)


def make_optimizer(kind: str, hyper: OptimizerHyper) -> optax.GradientTransformation:
    """The optax transformation ``kind`` built from (possibly traced) ``hyper``.

    ``"adamw"``: ``chain(add_decayed_weights(l2), scale_by_adam(b1, b2, eps,
    eps_root), add_decayed_weights(weight_decay), scale_by_learning_rate(η))`` —
    exactly ``optax.adamw`` when ``l2 = 0`` (Eq. 4: −η (m̂/(√v̂ + ε) + λ θ)), Adam with
    coupled L2 when ``weight_decay = 0 < l2``. ``"sgd"``: ``chain(add_decayed_weights(
    weight_decay + l2), scale_by_learning_rate(η))`` (−η (g + λ θ)).
    ``"adamw_or_sgd"``: the ``"adamw"`` chain whose Adam scaling is bypassed where
    ``hyper.sgd`` is 1 — then the update is exactly ``"sgd"``'s — so that one
    compiled program runs Adam(W) and SGD settings side by side.

    Raises:
      ValueError: an unknown ``kind``.
    """
    if kind in ("adamw", "adamw_or_sgd"):
        if kind == "adamw":
            scale = optax.scale_by_adam(b1=hyper.b1, b2=hyper.b2, eps=hyper.eps, eps_root=hyper.eps_root)
        else:
            scale = _scale_by_adam_or_identity(hyper)
        return optax.chain(
            optax.add_decayed_weights(hyper.l2),
            scale,
            optax.add_decayed_weights(hyper.weight_decay),
            optax.scale_by_learning_rate(hyper.learning_rate),
        )
    if kind == "sgd":
        return optax.chain(
            optax.add_decayed_weights(hyper.weight_decay + hyper.l2),
            optax.scale_by_learning_rate(hyper.learning_rate),
        )
    raise ValueError(f"optimizer must be one of {OPTIMIZERS} or an optax.GradientTransformation, got {kind!r}")


# ----------------------------------------------------------------------------- the loss with φ and a traced β


def scale_rewards(batch: jgrpo.GroupBatch, phi: ArrayLike) -> jgrpo.GroupBatch:
    """The batch with rewards r → φ r (and given advantages A → φ A), Prop. 2 / Eq. 19."""
    phi = jnp.asarray(phi, jnp.float32)
    adv = None if batch.advantages is None else jnp.asarray(batch.advantages, jnp.float32) * phi
    return batch.replace(rewards=jnp.asarray(batch.rewards, jnp.float32) * phi, advantages=adv)


def scaled_loss(
    spec: MethodSpec, logp: ArrayLike, batch: jgrpo.GroupBatch, beta: ArrayLike | None = None
) -> tuple[jax.Array, dict]:
    """−J of Eq. 1 (mean over prompts) with an optionally traced β.

    ``beta=None`` uses ``spec.beta`` and is exactly :func:`jgrpo.loss`. A traced
    ``beta`` computes J_b = Σ α·f − β Σ w·R (+ TRL's entropy bonus) from
    :func:`jgrpo.terms` with the regularizer of ``spec`` switched on whatever
    ``spec.beta`` is, assembled by ``jgrpo.objective.objective_per_prompt`` (β enters
    as a factor of the regularizer weights), so one ``MethodSpec`` — static under
    jit — serves a whole β sweep. A spec without a regularizer has R = 0 (give it
    one, e.g. ``regularizer="kl"``, to sweep β).

    Pure: jit it with the spec static (``jax.jit(scaled_loss, static_argnums=0)``); β
    stays a traced argument.

    Returns:
      ``(loss, aux)`` with ``aux = {"objective": J_b [...], "policy": [...],
      "regularizer": R_b [...]}``.
    """
    if beta is None:
        value, aux = jgrpo.loss(spec, logp, batch)
        return value, {k: aux[k] for k in ("objective", "policy", "regularizer")}
    on = spec.replace(beta=1.0) if spec.regularizer != Regularizer.NONE else spec
    t = jgrpo.terms(on, logp, batch)
    policy, reg = objective_parts(t)
    beta = jnp.asarray(beta, policy.dtype)
    objective = objective_per_prompt(on, t._replace(reg_weight=beta * t.reg_weight))  # on.beta = 1 or R = 0
    aux = {
        "objective": objective,
        "policy": jax.lax.stop_gradient(policy),
        "regularizer": jax.lax.stop_gradient(reg),
    }
    return -jnp.mean(objective), aux


# ----------------------------------------------------------------------------- reordered batches (the noise floor)


def random_permutations(
    rng: np.random.Generator, num: int, num_prompts: int, group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` random reorderings of a ``[B, G]`` batch: ``(perm_b [num, B], perm_g [num, B, G])`` int32.

    Each is drawn until it differs from the identity (when B·G > 1), so that every
    reordered run really changes the order of the reductions.
    """
    if num < 0 or num_prompts < 1 or group_size < 1:
        raise ValueError(f"need num >= 0, num_prompts >= 1, group_size >= 1; got {num}, {num_prompts}, {group_size}")
    pb = np.zeros((num, num_prompts), np.int32)
    pg = np.zeros((num, num_prompts, group_size), np.int32)
    for n in range(num):
        while True:
            pb[n] = rng.permutation(num_prompts)
            pg[n] = np.stack([rng.permutation(group_size) for _ in range(num_prompts)])
            identity = np.array_equal(pb[n], np.arange(num_prompts)) and np.array_equal(
                pg[n], np.broadcast_to(np.arange(group_size), (num_prompts, group_size))
            )
            if not identity or num_prompts * group_size == 1:
                break
    return pb, pg


def permute_batch(
    batch: jgrpo.GroupBatch, prompt: ArrayLike | None, perm_b: ArrayLike, perm_g: ArrayLike
) -> tuple[jgrpo.GroupBatch, jax.Array | None]:
    """The batch with prompts reordered by ``perm_b`` [B] and the completions of each by ``perm_g`` [B, G].

    Position (b, g) of the result holds completion ``perm_g[b, g]`` of prompt
    ``perm_b[b]``; every field (and the ``[B, ...]`` prompt) moves with it. The
    objective of Eq. 1 is a sum over prompts and completions, so the result is
    the same objective with another order of the floating-point reductions.
    """
    perm_b = jnp.asarray(perm_b)
    perm_g = jnp.asarray(perm_g)

    def move(x):
        return jnp.asarray(x)[perm_b[:, None], perm_g]

    moved_prompt = jax.tree.map(lambda x: jnp.asarray(x)[perm_b], prompt)
    return jax.tree.map(move, batch), moved_prompt  # None fields (and a None prompt) stay None


# ----------------------------------------------------------------------------- the inner loops


class Deviation(NamedTuple):
    """Trajectory deviation of φ-scaled rewards from the φ = 1 run (Prop. 2), and the noise floor.

    K scales, F floor runs (φ = 1 ± 1 ulp, then P reorderings), S = ``num_steps``;
    t counts optimizer steps, θ_0 the start. :func:`deviation_grid` adds leading
    ``[D, R]`` (data, settings) axes. Deviations are ``inf`` where a run left the
    finite range (diverged) and NaN where the φ = 1 reference itself did.

    Attributes:
      phis: ``[K]`` the reward scales φ.
      rel_param_dev: ``[K, S]`` ‖θ_t(φ) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖ for t = 1..S.
      max_rel_param_dev: ``[K]`` max over t of ``rel_param_dev``.
      floor_rel_param_dev: ``[F, S]`` the same for the floor runs: the objective
        of the reference up to rounding — φ = 1 + 2⁻²³ and 1 − 2⁻²⁴ (rewards scaled
        by one unit in the last place; unless ``ulp_floor=False``), then φ = 1 on
        each reordered batch (another order of the float reductions).
      noise_floor: ``[]`` max over the floor runs and steps (0 when F = 0).
      param_dev: ``[K, S]`` ‖θ_t(φ) − θ_t(1)‖.
      displacement: ``[S]`` ‖θ_t(1) − θ_0‖ of the reference run.
      grad_norm: ``[K, S]`` ‖∇(−J)‖ at θ_t(φ) before each step (t = 0..S−1).
      ref_grad_norm: ``[S]`` the same for φ = 1.
      objective: ``[K, S]`` J (mean over prompts, φ-scaled rewards) before each step.
      ref_objective: ``[S]`` the same for φ = 1.
      ref_rms_sqrt_v: ``[S]`` root mean square over parameters of √v̂ after each step
        of the reference run (Adam; the scale ε is compared with in Eq. 27), else NaN.
    """

    phis: jax.Array
    rel_param_dev: jax.Array
    max_rel_param_dev: jax.Array
    floor_rel_param_dev: jax.Array
    noise_floor: jax.Array
    param_dev: jax.Array
    displacement: jax.Array
    grad_norm: jax.Array
    ref_grad_norm: jax.Array
    objective: jax.Array
    ref_objective: jax.Array
    ref_rms_sqrt_v: jax.Array


def _f32(x):
    return jnp.asarray(x).astype(jnp.float32)


def _tree_norm(tree, n_lead: int):
    """Global L2 norm (``optax.tree.norm``, float32) over the leaves of ``tree``, keeping the first ``n_lead`` axes."""
    norm = lambda t: optax.tree.norm(jax.tree.map(_f32, t))  # noqa: E731
    for _ in range(n_lead):
        norm = jax.vmap(norm)
    return norm(tree)


def _safe_div(a, b):
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), jnp.where(a > 0, jnp.inf, 0.0))


def _relative(dev, disp):
    """dev / disp; ``inf`` where a run left the finite range (e.g. SGD at a large φ) but the reference did not,
    NaN where the reference is not finite (nothing to compare with), 0/0 = 0 (a reference that did not move)."""
    rel = jnp.where(jnp.isfinite(dev), _safe_div(dev, disp), jnp.inf)
    return jnp.where(jnp.isfinite(disp), rel, jnp.nan)


def _rms_sqrt_v(state, b2):
    """Root mean square over the parameters of √v̂ = √(v / (1 − β2^t)) from an optax Adam state (NaN if none)."""
    found = []

    def visit(s):
        if isinstance(s, optax.ScaleByAdamState):
            found.append(s)
        elif isinstance(s, tuple):
            for x in s:
                visit(x)

    visit(state)
    if not found or b2 is None:
        return jnp.full((), jnp.nan, jnp.float32)
    s = found[0]
    leaves = jax.tree.leaves(s.nu)
    mean_v = sum(jnp.sum(_f32(v)) for v in leaves) / sum(v.size for v in leaves)
    return jnp.sqrt(mean_v / (1.0 - jnp.asarray(b2, jnp.float32) ** s.count.astype(jnp.float32)))


def _deviation_core(spec, logprob_fn, params, batch, prompt, phis, perm_b, perm_g, hypers, betas, *, opt_kind,
                    num_steps, recompute_logp_old, use_beta, ulp_floor):  # fmt: skip
    """D data sets × R settings × N = 1 + K + U + P runs, flattened to one ``vmap`` axis inside one ``lax.scan``.

    Inputs carry a leading ``[D]`` (params leaves, batch, prompt, perm_b, perm_g) or ``[R]``
    (hypers fields, betas); runs n = 0 (φ = 1), 1..K (φ_k), then the floor runs: U = 2
    (or 0) with φ = 1 ± 1 ulp, P with φ = 1 on a reordered batch. One flat vmap compiles
    faster than nested ones and computes the same thing.
    """
    if ulp_floor:
        phis = jnp.concatenate([phis.astype(jnp.float32), jnp.asarray(ULP_PHIS, jnp.float32)])
    d, r, k, p = perm_b.shape[0], betas.shape[0], phis.shape[0], perm_b.shape[1]
    k_user = k - (len(ULP_PHIS) if ulp_floor else 0)
    n = 1 + k + p
    b, g = batch.rewards.shape[-2:]
    if recompute_logp_old:
        logp0 = jax.vmap(logprob_fn)(params, batch.tokens, prompt)
        batch = batch.replace(logp_old=jax.lax.stop_gradient(logp0).astype(jnp.float32))
    ident_b = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32), (d, 1 + k, b))
    ident_g = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (d, 1 + k, b, g))
    all_pb = jnp.concatenate([ident_b, perm_b.astype(jnp.int32)], axis=1)  # [D, N, B]
    all_pg = jnp.concatenate([ident_g, perm_g.astype(jnp.int32)], axis=1)  # [D, N, B, G]
    all_phi = jnp.concatenate([jnp.ones((1,), jnp.float32), phis.astype(jnp.float32), jnp.ones((p,), jnp.float32)])

    def make_run(bt, pr, phi, pb, pg):
        moved, moved_prompt = permute_batch(bt, pr, pb, pg)
        return scale_rewards(moved, phi), moved_prompt

    over_runs = jax.vmap(make_run, in_axes=(None, None, 0, 0, 0))
    batches, prompts = jax.vmap(over_runs, in_axes=(0, 0, None, 0, 0))(batch, prompt, all_phi, all_pb, all_pg)

    def flat_dn(x):  # [D, N, ...] -> [D*R*N, ...]
        x = jnp.asarray(x)
        return jnp.broadcast_to(x[:, None], (d, r, *x.shape[1:])).reshape((-1, *x.shape[2:]))

    def flat_r(x):  # [R, ...] -> [D*R*N, ...]
        x = jnp.asarray(x)
        return jnp.broadcast_to(x[None, :, None], (d, r, n, *x.shape[1:])).reshape((-1, *x.shape[1:]))

    def flat_d(x):  # [D, ...] -> [D*R*N, ...]
        x = jnp.asarray(x)
        return jnp.broadcast_to(x[:, None, None], (d, r, n, *x.shape[1:])).reshape((-1, *x.shape[1:]))

    batches = jax.tree.map(flat_dn, batches)
    prompts = jax.tree.map(flat_dn, prompts)  # None stays None
    hyper_m = None if hypers is None else jax.tree.map(flat_r, hypers)
    beta_m = flat_r(betas)
    params_m = jax.tree.map(flat_d, params)

    def optimizer(hyper):
        return make_optimizer(opt_kind, hyper) if isinstance(opt_kind, str) else opt_kind

    def loss_fn(q, bt, pr, beta):
        logp = logprob_fn(q, bt.tokens, pr)
        value, aux = scaled_loss(spec, logp, bt, beta if use_beta else None)
        return value, jnp.mean(aux["objective"])

    def one_step(q, s, bt, pr, hyper, beta):
        (_, obj), grads = jax.value_and_grad(loss_fn, has_aux=True)(q, bt, pr, beta)
        updates, s_new = optimizer(hyper).update(grads, s, q)
        # the optimizer state keeps its initial dtype (the parameter dtype for Adam's moments): traced float32
        # hyperparameters would otherwise promote bf16 moments to float32
        s_new = jax.tree.map(lambda new, old: new.astype(old.dtype), s_new, s)
        b2 = None if hyper is None or not isinstance(opt_kind, str) else hyper.b2
        return optax.apply_updates(q, updates), s_new, _tree_norm(grads, 0), obj, _rms_sqrt_v(s_new, b2)

    state0 = jax.vmap(lambda q, h: optimizer(h).init(q))(params_m, hyper_m)
    stepper = jax.vmap(one_step)

    def unflat(x):  # [D*R*N, ...] -> [D, R, N, ...] in float32
        return _f32(x).reshape((d, r, n, *jnp.shape(x)[1:]))

    def step(carry, _):
        q, s = carry
        q_new, s_new, gnorm, obj, rms_v = stepper(q, s, batches, prompts, hyper_m, beta_m)
        qs = jax.tree.map(unflat, q_new)
        dev = _tree_norm(jax.tree.map(lambda x: x[:, :, 1:] - x[:, :, :1], qs), 3)  # [D, R, N-1]
        disp = _tree_norm(jax.tree.map(lambda x, x0: x[:, :, 0] - _f32(x0)[:, None], qs, params), 2)  # [D, R]
        shape = (d, r, n)
        out = (dev, disp, gnorm.reshape(shape), obj.reshape(shape), rms_v.reshape(shape)[:, :, 0])
        return (q_new, s_new), out

    _, (dev, disp, gnorm, obj, rms_v) = jax.lax.scan(step, (params_m, state0), None, length=num_steps)
    # scan stacks steps first: [S, D, R, ...] -> [D, R, ..., S]
    dev, gnorm, obj, disp, rms_v = (jnp.moveaxis(x, 0, -1) for x in (dev, gnorm, obj, disp, rms_v))
    rel = _relative(dev, disp[:, :, None])
    floor = rel[:, :, k_user:]
    return Deviation(
        phis=phis[:k_user],
        rel_param_dev=rel[:, :, :k_user],
        max_rel_param_dev=jnp.max(rel[:, :, :k_user], axis=-1),
        floor_rel_param_dev=floor,
        noise_floor=jnp.max(floor, axis=(-2, -1)) if floor.shape[2] else jnp.zeros((d, r), jnp.float32),
        param_dev=dev[:, :, :k_user],
        displacement=disp,
        grad_norm=gnorm[:, :, 1 : 1 + k_user],
        ref_grad_norm=gnorm[:, :, 0],
        objective=obj[:, :, 1 : 1 + k_user],
        ref_objective=obj[:, :, 0],
        ref_rms_sqrt_v=rms_v,
    )


_STATIC = ("spec", "logprob_fn", "opt_kind", "num_steps", "recompute_logp_old", "use_beta", "ulp_floor")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _deviation_grid(spec, logprob_fn, params, batch, prompt, phis, perm_b, perm_g, hypers, betas, **static):
    return _deviation_core(spec, logprob_fn, params, batch, prompt, phis, perm_b, perm_g, hypers, betas, **static)


def _check_common(phis, num_steps, batch, optimizer, hyper, ulp_floor):
    phis_arr = jnp.asarray(phis, jnp.float32)
    if phis_arr.ndim != 1:
        raise ValueError(f"phis must have shape [K], got shape {tuple(phis_arr.shape)}")
    if is_concrete(phis):
        values = np.asarray(phis, np.float64)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"phis must be finite and > 0 (Prop. 2 scales rewards by phi > 0), got {values.tolist()}")
    check_static_int("num_steps", num_steps, low=1)
    check_bool("ulp_floor", ulp_floor)
    if not isinstance(batch, jgrpo.GroupBatch):
        raise TypeError(f"batch must be a jgrpo.GroupBatch, got {type(batch).__name__}")
    if batch.tokens is None:
        raise ValueError("batch.tokens is required (logprob_fn recomputes log-probabilities from the token ids)")
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZERS} or an optax.GradientTransformation, got {optimizer!r}"
            )
    elif hyper is not None:
        raise ValueError("hyper applies to optimizer='adamw' or 'sgd' only; got it with a custom optax transformation")
    return phis_arr


def _check_prompt(prompt: Any, lead: tuple[int, ...], what: str) -> None:
    """``prompt`` is None or has the leading dims ``lead`` (one prompt per group)."""
    for leaf in jax.tree.leaves(prompt):  # an array, a pytree of arrays (jgrpo.models.Prompt) or None
        shape = tuple(np.shape(leaf))
        if shape[: len(lead)] != lead:
            raise ValueError(
                f"prompt must have shape {what} (one prompt per group of the batch, leading dims {lead}), got "
                f"{shape}; pass prompt=None for a policy that ignores the prompt"
            )


def _check_perms(permutations, lead: tuple[int, ...], b: int, g: int, what: str):
    """Returns int32 (perm_b [*lead, P, B], perm_g [*lead, P, B, G]); P = 0 when ``permutations`` is None."""
    if permutations is None:
        return np.zeros((*lead, 0, b), np.int32), np.zeros((*lead, 0, b, g), np.int32)
    if not isinstance(permutations, tuple) or len(permutations) != 2:
        raise ValueError(f"permutations must be a tuple (perm_b, perm_g) or None, got {type(permutations).__name__}")
    pb, pg = permutations
    sb, sg = tuple(np.shape(pb)), tuple(np.shape(pg))
    n = len(lead)
    if len(sb) != n + 2 or sb[:n] != lead or sb[-1] != b:
        raise ValueError(f"permutations[0] (perm_b) must have shape {what}[P, B] with B = {b}, got {sb}")
    if sg != (*sb, g):
        raise ValueError(f"permutations[1] (perm_g) must have shape {what}[P, B, G] = {(*sb, g)}, got {sg}")
    if is_concrete(pb, pg):
        ok_b = np.array_equal(np.sort(np.asarray(pb), axis=-1), np.broadcast_to(np.arange(b), sb))
        ok_g = np.array_equal(np.sort(np.asarray(pg), axis=-1), np.broadcast_to(np.arange(g), sg))
        if not (ok_b and ok_g):
            raise ValueError("permutations must hold permutations of range(B) (perm_b) and of range(G) (perm_g)")
    return jnp.asarray(pb, jnp.int32), jnp.asarray(pg, jnp.int32)


def trajectory_deviation(
    spec: MethodSpec,
    logprob_fn: LogprobFn,
    params: Any,
    batch: jgrpo.GroupBatch,
    phis: ArrayLike,
    *,
    prompt: ArrayLike | None = None,
    num_steps: int,
    optimizer: str | optax.GradientTransformation = "adamw",
    hyper: OptimizerHyper | None = None,
    beta: ArrayLike | None = None,
    permutations: tuple[Any, Any] | None = None,
    ulp_floor: bool = True,
    recompute_logp_old: bool = True,
) -> Deviation:
    """How far φ-scaled rewards move the inner-loop trajectory (Prop. 2, Eqs. 19–27).

    Runs μ = ``num_steps`` optimizer steps on −J(θ; φ r) (Eq. 1, the fixed
    ``batch``) from ``params`` for φ = 1, for every φ in ``phis`` and for φ = 1 on
    each reordered batch of ``permutations`` (the noise floor), as one ``vmap``
    inside one ``jit``, and compares each run with the φ = 1 run step by step:

        rel_param_dev[k, t−1] = ‖θ_t(φ_k) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖,   t = 1..μ.

    Prop. 2 predicts deviations at the noise floor for β = 0, ε → 0, no coupled L2
    under Adam(W) when :func:`reward_degree` is an int, and for every optimizer when it is 0.

    Sweeps: ``phis``, every field of ``hyper`` and ``beta`` are traced, so a call
    with other values (or a ``jax.vmap`` over any of them) reuses the compiled
    program. ``spec``, ``logprob_fn``, ``optimizer`` and ``num_steps`` are static.
    The parameter dtype is the dtype of ``params`` (e.g. bfloat16); Adam's moments
    are kept in it, the deviations are computed in float32.

    Args:
      spec: the method (static).
      logprob_fn: ``(params, tokens [B, G, T], prompt [B, ...] | None) -> logp [B, G, T]``
        (``jgrpo.policies``' protocol: ``jgrpo.models.logprob_fn(model_fn)``, ``jgrpo.nnx_logprob_fn(graphdef)``,
        ``jgrpo.policies.tabular_logprob``; static, so pass the same function object).
      params: the starting parameters θ_0 (pytree).
      batch: :class:`jgrpo.GroupBatch` ``[B, G, T]`` with ``tokens``; with
        ``logp_ref`` for a KL regularizer and ``entropy`` for GTPO's.
      phis: ``[K]`` reward scales φ > 0.
      prompt: ``[B, ...]`` prompt ids passed to ``logprob_fn`` (they move with their group when a
        batch is reordered), or a pytree of such arrays (``jgrpo.models.Prompt(ids, mask)`` for
        left-padded prompts); None (the default) for a policy that ignores the prompt.
      num_steps: μ ≥ 1, a Python int.
      optimizer: ``"adamw"`` or ``"sgd"`` built from ``hyper`` (see
        :func:`make_optimizer`), or any optax transformation (then ``hyper``
        must be None).
      hyper: :class:`OptimizerHyper` (default: η = 1e-2, β1 = 0.9, β2 = 0.999,
        ε = 1e-12, ε_root = 0, λ = 0, L2 = 0).
      beta: a traced β overriding ``spec.beta`` (see :func:`scaled_loss`); None
        keeps ``spec.beta`` (then the loss is exactly ``jgrpo.loss``).
      permutations: ``(perm_b [P, B], perm_g [P, B, G])`` from
        :func:`random_permutations`, or None (no reordered floor runs).
      ulp_floor: add the two floor runs φ = 1 ± 1 ulp (static).
      recompute_logp_old: replace ``batch.logp_old`` by
        ``logprob_fn(params, tokens, prompt)`` so that every ratio is 1 at step 0
        (the GRPO inner loop with π_old = θ_0). With False ``batch.logp_old`` is used as is.

    Returns:
      :class:`Deviation`.

    Raises:
      ValueError: ``phis`` not of rank 1, a non-positive or non-finite φ (when
        concrete), ``num_steps`` not an int ≥ 1, ``batch.tokens`` missing, a batch
        not of rank 3, bad permutations, ``hyper`` given with a custom optimizer,
        an unknown optimizer name.
    """
    phis_arr = _check_common(phis, num_steps, batch, optimizer, hyper, ulp_floor)
    if len(batch.shape) != 3:
        raise ValueError(f"batch must have shape [B, G, T] (mask of rank 3), got mask shape {batch.shape}")
    b, g, _ = batch.shape
    _check_prompt(prompt, (b,), "[B, ...]")
    perm_b, perm_g = _check_perms(permutations, (), b, g, "")
    if isinstance(optimizer, str) and hyper is None:
        hyper = OptimizerHyper()
    hypers = None if hyper is None else OptimizerHyper(*(jnp.asarray(x, jnp.float32)[None] for x in hyper))
    out = _deviation_grid(
        spec,
        logprob_fn,
        jax.tree.map(lambda x: jnp.asarray(x)[None], params),
        jax.tree.map(lambda x: jnp.asarray(x)[None], batch),
        jax.tree.map(lambda x: jnp.asarray(x)[None], prompt),
        phis_arr,
        perm_b[None],
        perm_g[None],
        hypers,
        jnp.asarray(0.0 if beta is None else beta, jnp.float32)[None],
        opt_kind=optimizer,
        num_steps=num_steps,
        recompute_logp_old=recompute_logp_old,
        use_beta=beta is not None,
        ulp_floor=ulp_floor,
    )
    return out._replace(**{f: getattr(out, f)[0, 0] for f in Deviation._fields if f != "phis"})


def deviation_grid(
    spec: MethodSpec,
    logprob_fn: LogprobFn,
    params: Any,
    batch: jgrpo.GroupBatch,
    phis: ArrayLike,
    *,
    prompt: ArrayLike | None = None,
    num_steps: int,
    optimizer: str,
    hypers: OptimizerHyper,
    betas: ArrayLike,
    permutations: tuple[Any, Any] | None = None,
    ulp_floor: bool = True,
    recompute_logp_old: bool = True,
) -> Deviation:
    """:func:`trajectory_deviation` for D data sets × R optimizer settings, one compiled program.

    The data sets (e.g. seeds: parameters, batches, prompts, reorderings) are
    stacked on a leading axis D, the settings on a leading axis R of every field
    of ``hypers`` and of ``betas``; every field of the result gets leading
    ``[D, R]``. φ, the settings and the data are traced: any other values of the
    same shapes reuse the compiled program.

    Args:
      spec, logprob_fn, num_steps, ulp_floor, recompute_logp_old: as in :func:`trajectory_deviation`.
      params: θ_0 with a leading ``[D]`` on every leaf.
      batch: :class:`jgrpo.GroupBatch` ``[D, B, G, T]`` (rewards ``[D, B, G]``).
      phis: ``[K]`` reward scales, shared by every data set and setting.
      prompt: ``[D, B, ...]``, or None for a policy that ignores the prompt.
      optimizer: ``"adamw"`` or ``"sgd"`` (static).
      hypers: :class:`OptimizerHyper` whose fields are ``[R]`` (scalars broadcast).
      betas: ``[R]`` β per setting (the regularizer of ``spec`` switched on, see :func:`scaled_loss`).
      permutations: ``(perm_b [D, P, B], perm_g [D, P, B, G])`` or None.
      ulp_floor: add the two floor runs φ = 1 ± 1 ulp (static).

    Returns:
      :class:`Deviation` with leading ``[D, R]``.

    Raises:
      ValueError: as :func:`trajectory_deviation`; ``betas`` not of rank 1; fields of
        ``hypers`` that do not broadcast to ``[R]``; a batch not of rank 4.
    """
    phis_arr = _check_common(phis, num_steps, batch, optimizer, None, ulp_floor)
    if not isinstance(optimizer, str):
        raise ValueError(
            f"deviation_grid needs optimizer in {OPTIMIZERS} (its settings are the swept hypers), got {optimizer!r}"
        )
    if len(batch.shape) != 4:
        raise ValueError(f"batch must have shape [D, B, G, T] (mask of rank 4), got mask shape {batch.shape}")
    d, b, g, _ = batch.shape
    _check_prompt(prompt, (d, b), "[D, B, ...]")
    betas_arr = jnp.asarray(betas, jnp.float32)
    if betas_arr.ndim != 1:
        raise ValueError(f"betas must have shape [R], got shape {tuple(betas_arr.shape)}")
    r = betas_arr.shape[0]
    try:
        hypers = OptimizerHyper(*(jnp.broadcast_to(jnp.asarray(x, jnp.float32), (r,)) for x in hypers))
    except ValueError as e:
        raise ValueError(f"every field of hypers must broadcast to [R] = ({r},): {e}") from None
    perm_b, perm_g = _check_perms(permutations, (d,), b, g, "[D, ...]: ")
    return _deviation_grid(
        spec,
        logprob_fn,
        params,
        batch,
        prompt,
        phis_arr,
        perm_b,
        perm_g,
        hypers,
        betas_arr,
        opt_kind=optimizer,
        num_steps=num_steps,
        recompute_logp_old=recompute_logp_old,
        use_beta=True,
        ulp_floor=ulp_floor,
    )
