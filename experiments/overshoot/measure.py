"""The overshoot experiment's measurements (no I/O): closed forms against optax, and the optimizer sweeps.

(a) :func:`part_a`: C_{T,k} of Eqs. 32/36 against optax Adam, the limits of Eqs. 33/37, Eq. 38 on a
varying gradient history. (b, c) :func:`run_sweep`: every optimizer of a policy over its η sweep and
the seeds (``experiments.shared.sweep``; a checkpoint's members one after another), summarised per (η, seed)
by :func:`measured`.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from analysis import overshoot as ov
from experiments.overshoot.config import Config
from experiments.shared.sweep import (
    BY_NAME,
    HostPolicy,
    Policy,
    PolicyConfig,
    group_of,
    learning_rates_of,
    make_member_runner,
    make_sweep,
    setup_policy,
    spec_pair,
)

# ----------------------------------------------------------------------------- (a) closed forms vs optax


def part_a(cfg: Config) -> dict:
    """Eqs. 32-38 against optax Adam (β1 0.9, β2 0.95), T = 2..closed_T, k < closed_K; Eq. 38 on a varying history."""
    b1, b2, K = 0.9, 0.95, cfg.closed_K
    Ts = np.arange(2, cfg.closed_T + 1)
    ks = jnp.arange(K)
    g = jnp.float32(0.37)
    sim = np.stack([np.asarray(ov.simulate_adam_after_clip(g, b1, b2, 0.0, int(T), K).c) for T in (2, cfg.closed_T)])
    closed = np.asarray(jax.vmap(lambda T: ov.c_coefficient(b1, b2, T, ks))(jnp.asarray(Ts, jnp.float32)))
    # every T in one scan: T − 1 gradient steps then zeros, T traced
    opt = optax.adam(1.0, b1=b1, b2=b2, eps=0.0)

    def simulate(T):
        grads = jnp.where(jnp.arange(cfg.closed_T - 1 + K) < T - 1, g, 0.0)

        def step(state, grad):
            u, state = opt.update(grad, state)
            return state, u

        _, u = jax.lax.scan(step, opt.init(g), grads)
        return jax.lax.dynamic_slice(u, (T - 1,), (K,)) / u[T - 2]

    simulated = np.asarray(jax.jit(jax.vmap(simulate))(jnp.asarray(Ts)))
    lib_err = max(float(np.max(np.abs(sim[0] - simulated[0]))), float(np.max(np.abs(sim[1] - simulated[-1]))))
    # Eq. 38 on a varying gradient history, ε comparable to the gradients
    T38, eps38 = cfg.eq38_T, 2e-3
    hist = 0.01 * (1.0 + 0.6 * np.sin(np.arange(1, T38)))  # T − 1 gradients, |g| from 0.004 to 0.016
    h = ov.simulate_adam_history(jnp.asarray(hist, jnp.float32), b1, b2, eps38, K)
    v_before = h.v_hat[T38 - 2]
    exact = np.asarray(ov.c_coefficient_eps(b1, b2, T38, ks, v_hat_before=v_before, eps=eps38))
    literal = np.asarray(ov.first_moment_decay(b1, T38, ks) * ov.eps_modulation(v_before, h.v_hat[T38 - 1 :], eps38))
    shortcut = np.asarray(ov.c_coefficient(b1, b2, T38, ks) * ov.eps_factor(abs(hist[-1]), b2, T38, ks, eps38))
    h_const = ov.simulate_adam_after_clip(jnp.float32(hist[-1]), b1, b2, eps38, T38, K)
    shortcut_const = np.asarray(ov.c_coefficient(b1, b2, T38, ks) * ov.eps_factor(abs(hist[-1]), b2, T38, ks, eps38))
    return {
        "beta1": b1,
        "beta2": b2,
        "T": Ts,
        "k": np.arange(K),
        "closed": closed,
        "simulated": simulated,
        "max_abs_err": float(np.max(np.abs(closed - simulated))),
        "library_simulator_max_abs_diff": lib_err,
        "C_2": float(closed[0, 0]),
        "limit": float(ov.c_limit(b1, b2)),
        "limit_k": np.asarray(ov.c_limit(b1, b2, ks)),
        "limit_4": float(ov.c_limit(b1, b2, 4)),
        "C_large_T": float(ov.c_coefficient(b1, b2, 100_000)),
        "eq38": {
            "T": T38,
            "eps": eps38,
            "history": hist,
            "simulated": np.asarray(h.c),
            "exact": exact,
            "literal": literal,
            "shortcut": shortcut,
            "max_abs_err_exact": float(np.max(np.abs(exact - np.asarray(h.c)))),
            "max_abs_err_literal": float(np.max(np.abs(literal - np.asarray(h.c)))),
            "max_abs_err_shortcut": float(np.max(np.abs(shortcut - np.asarray(h.c)))),
            "max_abs_err_shortcut_constant_history": float(np.max(np.abs(shortcut_const - np.asarray(h_const.c)))),
        },
    }


# ----------------------------------------------------------------------------- (b, c) the sweeps


def run_sweep(pcfg: PolicyConfig, policy: Policy | HostPolicy, cfg: Config, spec, progress=lambda f, m: None) -> dict:
    """Every optimizer of ``pcfg`` over its η sweep and the seeds: {name: {metric: [n_lr, S, N]}} (numpy).

    The tabular policy and the NNX transformer: every member (η, seed) in one vmapped call per optimizer
    (:func:`experiments.shared.sweep.make_sweep`); a checkpoint (:class:`HostPolicy`): the members one after
    another (:func:`experiments.shared.sweep.make_member_runner`), in the same order and layout.
    """
    S, L = pcfg.seeds, len(pcfg.learning_rates)
    seed_idx = np.tile(np.arange(S), L)  # member m = (lr index m // S, seed m % S)
    if isinstance(policy, HostPolicy):
        runner = make_member_runner(pcfg, policy, beta2=cfg.beta2, eps=cfg.adam_eps, spec=spec)
    else:
        sweep = make_sweep(pcfg, policy, beta2=cfg.beta2, eps=cfg.adam_eps, spec=spec)
        params = jax.tree.map(lambda x: x[seed_idx], policy.params0)
        prompts, keys = policy.prompts[seed_idx], policy.keys[seed_idx]
    out = {}
    for i, name in enumerate(pcfg.optimizers):
        opt = BY_NAME[name]
        frac, msg = i / len(pcfg.optimizers), f"{pcfg.kind}: {opt.label}"
        progress(frac, msg)
        lrs = jnp.asarray(np.repeat(learning_rates_of(pcfg, opt), S))
        if isinstance(policy, HostPolicy):
            share = 1.0 / len(pcfg.optimizers)
            recs = runner(
                group_of(opt, mu=pcfg.mu), lrs, seed_idx, lambda f, a=frac, m=msg, w=share: progress(a + w * f, m)
            )
        else:
            recs = sweep(group_of(opt, mu=pcfg.mu), lrs, params, prompts, keys)
        recs = jax.tree.map(lambda x: np.asarray(x).reshape((L, S) + x.shape[1:]), recs)
        out[name] = {**recs, "lr": learning_rates_of(pcfg, opt)}
    return out


# ----------------------------------------------------------------------------- matched progress (pure numpy)


def measured(rec: dict, burn_in: int) -> dict:
    """Per (η, seed) means over the measured batches (after ``burn_in``): {metric: [n_lr, S]}."""
    keys = ("escape_frac", "max_excess", "travel", "dJ", "dE", "kl", "reward")
    out = {k: np.asarray(rec[k], np.float64)[..., burn_in:].mean(-1) for k in keys if k in rec}
    for k in ("pairs", "dz", "stale", "fresh", "corr", "resid"):
        out[k + "_sum"] = np.asarray(rec[k], np.float64)[..., burn_in:].sum(-1)
    out["own_max"] = np.asarray(rec["own_max"], np.float64)[..., burn_in:].max(-1)
    return out


class Measurement(NamedTuple):
    """Everything the claims and the report read.

    Attributes:
      spec: the clipped GRPO preset of the sweeps.
      a: part (a)'s numbers (:func:`part_a`).
      meas: ``{policy kind: {optimizer: measured(...)}}``.
      policies: ``{policy kind: (PolicyConfig, Policy)}``.
      timings: seconds per part and in total.
    """

    spec: object
    a: dict
    meas: dict
    policies: dict
    timings: dict


def measure(cfg: Config, seed: int, progress=lambda f, m: None) -> Measurement:
    """Part (a), then every policy's sweep (policy i's seed is ``seed + 1000 i``)."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    spec = spec_pair()[0]
    progress(0.02, "(a) closed forms vs optax")
    t0 = time.perf_counter()
    a = part_a(cfg)
    timings["a"] = time.perf_counter() - t0
    meas, policies = {}, {}
    n = len(cfg.policies)
    for i, pcfg in enumerate(cfg.policies):
        t0 = time.perf_counter()
        policy = setup_policy(pcfg, seed + 1000 * i)
        base, span = 0.05 + 0.85 * i / n, 0.85 / n
        sweeps = run_sweep(pcfg, policy, cfg, spec, lambda f, m, b=base, s=span: progress(b + s * f, m))
        meas[pcfg.kind] = {k: measured(v, pcfg.burn_in) for k, v in sweeps.items()}
        policies[pcfg.kind] = (pcfg, policy)
        timings[pcfg.kind] = time.perf_counter() - t0
    progress(0.95, "report")
    timings["total"] = time.perf_counter() - t_start
    return Measurement(spec, a, meas, policies, timings)
