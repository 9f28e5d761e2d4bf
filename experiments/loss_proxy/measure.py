"""The loss_proxy experiment's measurements (no I/O).

(a) :func:`part_a`: jgrpo.loss at logp = logp_old against ``analysis.proxy``'s Prop. 4 pieces and the
float64 closed forms of ``reference.py``, every preset. (b, c) :func:`part_bc`: training runs, then at
every unit K independent batches × presets × inner η, the exact ΔE of each update beside the proxies;
:func:`measure` runs both and summarises (b, c) per preset (``summary.py``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import proxy as px
from analysis.overshoot import simulate_inner_steps
from experiments.loss_proxy.config import Config
from experiments.loss_proxy.reference import np_first_step, tolerance
from experiments.loss_proxy.summary import summarise
from experiments.loss_proxy.task import (
    exact_reward,
    gcpo_reading,
    has_gcpo_field,
    methods_of,
    reward,
    sample,
    sample_batch,
    spec_of,
)
from experiments.shared.tasks import cpu_compiler_options, one_hot_sum
from jgrpo.policies import tabular_init, tabular_logprob

# ----------------------------------------------------------------------------- (a) first-step identities


def identity_batch(cfg: Config, key):
    """Part (a)'s batch: sampled groups plus one hand-made group with a single success."""
    k_init, k_ref, k_s = jax.random.split(key, 3)
    params = tabular_init(k_init, vocab=cfg.vocab, max_len=cfg.length, scale=cfg.init_scale)
    ref = {"logits": params["logits"] + cfg.ref_noise * jax.random.normal(k_ref, params["logits"].shape)}
    batch = jax.jit(sample_batch, static_argnums=(3, 4, 5), compiler_options=cpu_compiler_options())(
        params, ref, k_s, cfg.id_groups + 1, cfg.id_group_size, cfg.length
    )
    batch = jax.tree.map(np.asarray, batch)
    rewards = batch.rewards.copy()
    rewards[-1] = 0.0
    rewards[-1, 0] = 1.0  # hand-made: G completions, one success (cppo prunes every failure)
    return dataclasses.replace(batch, rewards=rewards)


def first_step_values(specs: tuple, batch: jgrpo.GroupBatch):
    """jgrpo.loss at logp = logp_old (θ = θ_old: every ratio is 1) and Prop. 4's pieces, for every spec."""
    out = []
    for spec in specs:
        _, aux = jgrpo.loss(spec, batch.logp_old, batch)
        fs = px.first_step_objective(spec, batch)
        cov = px.advantage_weight_covariance(spec, batch)
        out.append((aux["objective"], fs.objective, fs.policy, fs.regularizer, fs.omega, fs.advantages, cov))
    return out


def part_a(cfg: Config, key) -> tuple[dict, dict]:
    batch = identity_batch(cfg, key)
    names = cfg.presets if cfg.presets is not None else jgrpo.methods.names()
    labels = [(n, f) for n in names for f in (jgrpo.methods.flavors(n) if cfg.flavors else ("paper",))]
    if "gcpo" in names and has_gcpo_field():
        labels.append(("gcpo_once", "paper"))  # the other reading of gcpo, next to the paper preset
    specs = tuple(spec_of(n) if n == "gcpo_once" else jgrpo.methods.get(n, flavor=f) for n, f in labels)
    values = jax.jit(first_step_values, static_argnums=0, compiler_options=cpu_compiler_options())(specs, batch)
    out = {}
    for (name, flavor), spec, vals in zip(labels, specs, values, strict=True):
        j_loss, j_p4, pol, reg, omega, adv, cov = (np.asarray(v, np.float64) for v in vals)
        size = np.abs(adv * omega).sum(-1)
        tol = tolerance(size, spec.beta * reg, j_loss)
        rec = {
            "beta": spec.beta,
            "objective_loss": j_loss,
            "policy": pol,
            "regularizer": reg,
            "identity_err": float(np.max(np.abs(j_loss - j_p4))),
            "cov_err": float(np.max(np.abs(cov - pol))),
            "identity_ok": bool(np.all(np.abs(j_loss - j_p4) <= tol) and np.all(np.abs(cov - pol) <= tol)),
            "case": "",
        }
        if flavor == "paper":
            base = "gcpo" if name == "gcpo_once" else name
            reading = gcpo_reading(spec) if base == "gcpo" else "once"
            case, policy_np, reg_np, omega_np = np_first_step(
                base, spec, batch.rewards, batch.mask, batch.logp_old, batch.logp_ref, reading=reading
            )
            if case:
                j_np = policy_np - spec.beta * (reg_np if reg_np is not None else reg)
                err = np.abs(pol - policy_np)
                rec.update(
                    case=case + (f" ({reading})" if base == "gcpo" else ""),
                    closed_policy=policy_np,
                    closed_err=float(np.max(err)),
                    closed_ok=bool(np.all(err <= tolerance(size, policy_np))),
                    closed_objective_err=float(np.max(np.abs(j_loss - j_np))),
                    closed_objective_ok=bool(np.all(np.abs(j_loss - j_np) <= tol)),
                    regularizer_closed=reg_np is not None,
                    omega_spread=float(np.max(np.ptp(omega_np, axis=-1))),
                )
        out[f"{name}-{flavor}" if flavor != "paper" else name] = rec
    lengths = np.asarray(batch.mask).sum(-1)
    r = np.asarray(batch.rewards)
    a = r - r.mean(-1, keepdims=True)
    gamma = jgrpo.methods.get("cppo").prune_gamma
    info = {
        "groups": int(r.shape[0]),
        "group_size": int(r.shape[1]),
        "length_min": int(lengths.min()),
        "length_max": int(lengths.max()),
        "length_mean": float(lengths.mean()),
        "reward_mean": float(r[:-1].mean()),
        "mixed_groups": int(np.sum(np.ptp(r, axis=-1) > 0)),
        "cppo_pruning_groups": int(np.sum((np.ptp(r, axis=-1) > 0) & np.any(np.abs(a) <= gamma, axis=-1))),
        "cppo_single_success_policy": float(out["cppo"]["policy"][-1]) if "cppo" in out else float("nan"),
        "gcpo_reading": gcpo_reading(jgrpo.methods.get("gcpo")),
    }
    return out, info


# ----------------------------------------------------------------------------- (b, c) cross-sectional test


def train_runs(cfg: Config, key):
    """R independent grpo training runs; returns (θ at every step [R, N+1, ...], θ_0 [R, ...], E[r] [R, N+1])."""
    spec = jgrpo.methods.get("grpo")
    opt = optax.adamw(cfg.learning_rate, b1=0.9, b2=0.999, eps=cfg.adam_eps, weight_decay=0.0)

    def run(key):
        k_init, k_steps = jax.random.split(key)
        theta0 = tabular_init(k_init, vocab=cfg.vocab, max_len=cfg.length, scale=cfg.init_scale)

        def outer(carry, k):
            theta, state = carry
            batch = sample_batch(theta, theta0, k, cfg.num_groups, cfg.group_size, cfg.length)

            def loss_fn(p):
                return jgrpo.loss(spec, tabular_logprob(p, batch.tokens), batch)[0], ()

            traj = simulate_inner_steps(loss_fn, theta, opt, cfg.inner_steps, opt_state=state)
            return (traj.final_params, traj.final_opt_state), traj.final_params

        _, thetas = jax.lax.scan(outer, (theta0, opt.init(theta0)), jax.random.split(k_steps, cfg.train_steps))
        thetas = jax.tree.map(lambda t0, ts: jnp.concatenate([t0[None], ts]), theta0, thetas)
        return thetas, theta0, jax.vmap(lambda p: exact_reward(p, length=cfg.length))(thetas)

    return jax.jit(jax.vmap(run), compiler_options=cpu_compiler_options())(jax.random.split(key, cfg.runs))


def make_evaluator(cfg: Config, specs: tuple):
    """``(θ_old [U], θ_ref [U], keys [U]) -> (per-batch records [U, K, H, P], E(θ_old) [U])``, one program.

    H = ``len(cfg.inner_lrs)``. The inner η is a traced array and the preset a one-hot selector
    (the loss is Σ_p sel_p loss_p; 0 · loss_p adds exactly 0): every (η, preset) lane of a batch is
    one member of a ``vmap`` of one compiled program.
    """
    n_p, n_h = len(specs), len(cfg.inner_lrs)
    lanes_sel = jnp.tile(jnp.eye(n_p, dtype=jnp.float32), (n_h, 1))  # [H*P, P]
    lanes_lr = jnp.repeat(jnp.asarray(cfg.inner_lrs, jnp.float32), n_p)  # [H*P]

    def energy(p):
        return exact_reward(p, length=cfg.length)

    def one_batch(theta, theta_ref, e_old, grad_e, key):
        k_b, k_h = jax.random.split(key)
        batch = sample_batch(theta, theta_ref, k_b, cfg.num_groups, cfg.group_size, cfg.length)
        held = sample(theta, k_h, 1, cfg.heldout, cfg.length)
        held_r = reward(held.tokens, held.mask)

        def per_lane(sel, lr):
            opt = optax.adamw(lr, b1=0.9, b2=0.999, eps=cfg.adam_eps, weight_decay=0.0)

            def loss_fn(p):
                logp = tabular_logprob(p, batch.tokens)
                outs = [jgrpo.loss(s, logp, batch) for s in specs]
                return one_hot_sum(sel, [v for v, _ in outs]), {
                    "objective": one_hot_sum(sel, [jnp.mean(a["objective"]) for _, a in outs])
                }

            traj = simulate_inner_steps(loss_fn, theta, opt, cfg.inner_steps)  # fresh optimizer state
            new = traj.final_params
            delta = jax.tree.map(jnp.subtract, new, theta)
            logp_h = tabular_logprob(new, held.tokens)
            sn = px.snis_gain(logp_h, held.logp_old, held_r, held.mask)
            plain = px.snis_gain(logp_h, held.logp_old, held_r, held.mask, normalize=False)
            j_first = traj.aux["objective"][0]
            return {
                "delta_e": energy(new) - e_old,
                "j_first": j_first,
                "j_after": traj.final_aux["objective"],
                "first_order": sum(
                    jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grad_e), jax.tree.leaves(delta), strict=True)
                ),
                "snis": sn.gain[0],
                "is": plain.gain[0],
                "ess": sn.ess[0],
                "update_norm": optax.tree.norm(delta),
            }

        recs = jax.vmap(per_lane)(lanes_sel, lanes_lr)
        return jax.tree.map(lambda x: x.reshape((n_h, n_p) + x.shape[1:]), recs)

    def unit(theta, theta_ref, key):
        e_old, grad_e = jax.value_and_grad(energy)(theta)
        recs = jax.vmap(one_batch, in_axes=(None, None, None, None, 0))(
            theta, theta_ref, e_old, grad_e, jax.random.split(key, cfg.batches)
        )
        return recs, e_old

    def units(theta, theta_ref, keys):  # one unit after the other: memory stays that of one unit
        return jax.lax.map(lambda args: unit(*args), (theta, theta_ref, keys))

    return jax.jit(units, compiler_options=cpu_compiler_options())


def part_bc(cfg: Config, key, progress=lambda f, m: None):
    """Training runs, then the cross-sectional measurement at every unit; NumPy arrays out."""
    k_train, k_eval = jax.random.split(key)
    thetas, theta0, e_curve = train_runs(cfg, k_train)
    ck = jnp.asarray(cfg.checkpoints)
    theta_old = jax.tree.map(lambda t: t[:, ck].reshape((cfg.units,) + t.shape[2:]), thetas)  # unit = run*C + c
    theta_ref = jax.tree.map(lambda t: jnp.repeat(t, len(cfg.checkpoints), axis=0), theta0)
    methods = methods_of(cfg)
    progress(0.35, f"(b) {cfg.units} units x {cfg.batches} batches x {len(cfg.inner_lrs)} lr x {len(methods)} presets")
    evaluate = make_evaluator(cfg, tuple(spec_of(m) for m in methods))
    recs, e_old = evaluate(theta_old, theta_ref, jax.random.split(k_eval, cfg.units))
    recs = {k: np.asarray(v, np.float64) for k, v in jax.device_get(recs).items()}  # [U, K, H, P]
    return {
        "methods": methods,
        "records": recs,
        "e_old": np.asarray(e_old, np.float64),
        "e_curve": np.asarray(e_curve, np.float64),
    }


class Measurement(NamedTuple):
    """Everything the claims and the report read.

    Attributes:
      a, info: part (a)'s records per preset and its batch (:func:`part_a`).
      bc: part (b, c)'s raw records (:func:`part_bc`), None when ``cfg.cross`` is off.
      summaries: one :func:`summarise` per inner η (the first is the claims'), empty without (b, c).
      timings: seconds per part and in total.
    """

    a: dict
    info: dict
    bc: dict | None
    summaries: list
    timings: dict


def measure(cfg: Config, seed: int, progress=lambda f, m: None) -> Measurement:
    """Part (a), then (when ``cfg.cross``) part (b, c) and its summaries."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    k_a, k_bc = jax.random.split(jax.random.key(seed))
    progress(0.02, "(a) first-step identities")
    t0 = time.perf_counter()
    a, info = part_a(cfg, k_a)
    timings["a"] = time.perf_counter() - t0
    bc, summaries = None, []
    if cfg.cross:
        progress(0.2, f"(b) {cfg.runs} training runs")
        t0 = time.perf_counter()
        bc = part_bc(cfg, k_bc, progress)
        summaries = [
            summarise({k: v[:, :, h] for k, v in bc["records"].items()}, bc["methods"])
            for h in range(len(cfg.inner_lrs))
        ]
        timings["bc"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return Measurement(a, info, bc, summaries, timings)
