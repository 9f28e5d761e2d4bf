"""Inner-loop sweeps: a simulator vmapped over 10^4 hyperparameter settings against its two baselines.

The baselines, per setting: (i) a Python loop of jitted optax steps (what a user
writes by hand; ``inject_hyperparams``, so one compiled update serves every
setting) and (ii) the jitted single-setting simulator called once per setting.
Each sweep is quoted against both, and against the stronger (faster) of the two.
Every rate is measured: the baselines on a few settings (each setting runs the
same program), the vmapped call on all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import overshoot
from experiments.bench.config import Config
from experiments.bench.goals import GOALS, goal
from experiments.bench.harness import Timing, blocking, cost, op_profile, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ops, fmt_ratio, fmt_seconds, table
from jgrpo.policies import tabular_init, tabular_logprob

__all__ = ["SECTION"]

BASELINES = {"loop": "Python loop of optax steps", "single": "jitted per-setting call"}


def _settings(n: int, seed: int = 0) -> tuple[jax.Array, ...]:
    """n random (learning rate, beta1, beta2, eps), log-uniform where it matters."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-5, -2, n)
    b1 = rng.uniform(0.8, 0.99, n)
    b2 = rng.uniform(0.9, 0.9999, n)
    eps = 10 ** rng.uniform(-10, -6, n)
    return tuple(jnp.asarray(x, jnp.float32) for x in (lr, b1, b2, eps))


def rates(times: dict[str, Timing], settings: dict[str, int]) -> dict[str, Any]:
    """Simulations per second of each contender, and the vmapped rate over each baseline's and the strongest's.

    Args:
      times: :func:`race` timings of ``vmapped``, ``loop`` and ``single`` (one call each simulates
        ``settings[name]`` settings).
      settings: settings simulated per call, by contender.
    """
    rate = {k: settings[k] / times[k].median for k in ("vmapped", "loop", "single")}
    strongest = max(("loop", "single"), key=lambda k: rate[k])
    return {
        "sims_per_s": rate,
        "settings_timed": dict(settings),
        "speedup_vs_loop": rate["vmapped"] / rate["loop"],
        "speedup_vs_jitted_per_setting": rate["vmapped"] / rate["single"],
        "strongest_baseline": strongest,
        "speedup_vs_strongest": rate["vmapped"] / rate[strongest],
    }


def _adam_sweep(cfg: Config, log: Callable) -> dict[str, Any]:
    """simulate_adam_after_clip vmapped over the settings vs its per-setting baselines."""
    n, (t_steps, k_steps) = cfg.sweep_settings, cfg.sweep_steps
    lr, b1, b2, eps = _settings(n)
    g = jnp.float32(0.1)

    def sim(lr, b1, b2, eps):  # t_steps gradient steps: the paper's T (the step the gradient vanishes) = t_steps + 1
        return overshoot.simulate_adam_after_clip(g, b1, b2, eps, T=t_steps + 1, K=k_steps, lr=lr).c

    vmapped = jax.jit(jax.vmap(sim))
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)
    update = jax.jit(opt.update)
    zero = jnp.zeros_like(g)

    def loop_one(i: int):
        state = opt.init(g)
        for name, v in (("learning_rate", lr), ("b1", b1), ("b2", b2), ("eps", eps)):
            state.hyperparams[name] = v[i]
        updates = []
        for s in range(t_steps + k_steps):
            u, state = update(g if s < t_steps else zero, state)
            updates.append(u)
        u = jnp.stack(updates)
        return u[t_steps:] / u[t_steps - 1]

    single = jax.jit(sim)
    m = {"vmapped": n, "loop": cfg.sweep_loop_settings, "single": min(n, 10 * cfg.sweep_loop_settings)}
    fns = {
        "vmapped": blocking(vmapped, lr, b1, b2, eps),
        "loop": lambda: jax.block_until_ready([loop_one(i) for i in range(m["loop"])]),
        "single": lambda: jax.block_until_ready([single(lr[i], b1[i], b2[i], eps[i]) for i in range(m["single"])]),
    }
    first = vmapped(lr, b1, b2, eps)[0]
    check = {
        "loop_max_abs_err": float(jnp.max(jnp.abs(loop_one(0) - first))),
        "single_max_abs_err": float(jnp.max(jnp.abs(single(lr[0], b1[0], b2[0], eps[0]) - first))),
    }
    log("sweep: adam after clip")
    times = race(fns, rounds=cfg.rounds, budget_s=cfg.budget_s)
    return {
        "simulator": "analysis.overshoot.simulate_adam_after_clip",
        "settings": n,
        "steps": t_steps + k_steps,
        **rates(times, m),
        "check": check,
        "samples": {k: v.samples for k, v in times.items()},
    }


def _group_sweep(cfg: Config, log: Callable, bw: dict[str, Any]) -> dict[str, Any]:
    """simulate_group (mu GRPO inner steps of Adam on a fixed group, tabular policy) vmapped vs its baselines."""
    n, steps = cfg.group_sweep_settings, cfg.group_sweep_steps
    lr, b1, b2, eps = _settings(n, seed=1)
    lr = lr * 100.0  # tabular logits move at these rates
    vocab, g, t = 8, 8, 12
    rng = np.random.default_rng(2)
    params = tabular_init(jax.random.key(3), vocab=vocab, max_len=t)
    tokens = jnp.asarray(rng.integers(0, vocab, size=(g, t)), jnp.int32)
    mask = jnp.asarray((np.arange(t) < rng.integers(t // 2, t + 1, size=(g, 1))).astype(np.float32))
    rewards = jnp.asarray(np.r_[0.0, 1.0, rng.integers(0, 2, size=g - 2)].astype(np.float32))
    batch = jgrpo.GroupBatch(mask=mask, logp_old=tabular_logprob(params, tokens), rewards=rewards, tokens=tokens)
    spec = jgrpo.methods.get("grpo", beta=0.0)

    def one(lr, b1, b2, eps):
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
        traj = overshoot.simulate_group(spec, tabular_logprob, params, batch, opt, steps)
        return traj.final_aux["escape"].frac, traj.final_loss

    vmapped = jax.jit(jax.vmap(one))
    single = jax.jit(one)
    loss_fn = overshoot.grpo_loss_fn(spec, tabular_logprob, batch)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)

    @jax.jit
    def step(p, state):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    final = jax.jit(loss_fn)

    def loop_one(i: int):
        p, state = params, opt.init(params)
        for name, v in (("learning_rate", lr), ("b1", b1), ("b2", b2), ("eps", eps)):
            state.hyperparams[name] = v[i]
        for _ in range(steps):
            p, state = step(p, state)
        loss, aux = final(p)
        return aux["escape"].frac, loss

    m = {"vmapped": n, "loop": cfg.group_loop_settings, "single": min(n, 10 * cfg.group_loop_settings)}
    fns = {
        "vmapped": blocking(vmapped, lr, b1, b2, eps),
        "loop": lambda: jax.block_until_ready([loop_one(i) for i in range(m["loop"])]),
        "single": lambda: jax.block_until_ready([single(lr[i], b1[i], b2[i], eps[i]) for i in range(m["single"])]),
    }
    _, loss_v = vmapped(lr, b1, b2, eps)
    check = {
        "loop_loss_abs_err": abs(float(loss_v[0]) - float(loop_one(0)[1])),
        "single_loss_abs_err": abs(float(loss_v[0]) - float(single(lr[0], b1[0], b2[0], eps[0])[1])),
    }
    log("sweep: GRPO inner loop")
    times = race(fns, rounds=cfg.rounds, budget_s=cfg.budget_s)
    out = {
        "simulator": "analysis.overshoot.simulate_group (tabular policy, Adam)",
        "settings": n,
        "steps": steps,
        "group": [g, t],
        **rates(times, m),
        "check": check,
        "samples": {k: v.samples for k, v in times.items()},
    }
    if cfg.profile and out["speedup_vs_loop"] < GOALS["sweep_vs_loop"]:
        out["xla"] = cost(vmapped.lower(lr, b1, b2, eps).compile())
        out["ops_ms"] = op_profile(fns["vmapped"], calls=1, top=4)
        out["measured_s_per_sim"] = times["vmapped"].median / n
        out["loop_s_per_jitted_call"] = times["loop"].median / (m["loop"] * (steps + 1))
        if "bytes_accessed" in out["xla"] and "inplace_GBps" in bw:
            out["bytes_s_per_sim"] = out["xla"]["bytes_accessed"] / n / (bw["inplace_GBps"] * 1e9)
    return out


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Both sweeps: Adam after a clip (scalar simulator) and the GRPO inner loop (tabular policy)."""
    bw = ctx.results.get("bandwidth") or {}
    return {"adam_after_clip": _adam_sweep(cfg, ctx.log), "grpo_inner_loop": _group_sweep(cfg, ctx.log, bw)}


def goals(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        goal(
            "sweep_vs_loop",
            key,
            s["speedup_vs_loop"],
            what=f"{key}: vmapped sims/s / Python-loop sims/s",
            also={"vs jitted per-setting call": s["speedup_vs_jitted_per_setting"]},
        )
        for key, s in sweep.items()
    ]


def render(sweep: dict[str, Any]) -> list[str]:
    rows = []
    for key, s in sweep.items():
        rate, m = s["sims_per_s"], s["settings_timed"]
        rows.append(
            (
                key,
                s["steps"],
                f"{rate['vmapped']:.4g} ({m['vmapped']})",
                f"{rate['loop']:.4g} ({m['loop']})",
                f"{rate['single']:.4g} ({m['single']})",
                s["speedup_vs_loop"],
                s["speedup_vs_jitted_per_setting"],
                f"{fmt_ratio(s['speedup_vs_strongest'])} ({BASELINES[s['strongest_baseline']]})",
            )
        )
    header = [
        "simulation",
        "steps",
        "vmapped sims/s (settings)",
        "loop sims/s (settings timed)",
        "jitted per setting sims/s (settings timed)",
        "vmapped / loop",
        "vmapped / jitted per setting",
        "vmapped / strongest baseline",
    ]
    lines = [
        "vmapped: one jitted call simulates every setting. loop: per setting, a Python loop of jitted optax "
        "(inject_hyperparams) steps. jitted per setting: the jitted simulator called once per setting. "
        "Rates are simulations per second, each measured on the settings in brackets.",
        "",
        table(header, rows),
    ]
    for key, s in sweep.items():
        if "ops_ms" in s:
            lines += [f"Top ops of the vmapped {key} (ms per call, all threads): {fmt_ops(s['ops_ms'])}", ""]
        if "measured_s_per_sim" in s:
            lines += [_per_sim(key, s), ""]
    return lines


def _per_sim(key: str, s: dict[str, Any]) -> str:
    bytes_s = f" (XLA's bytes at copy bandwidth: {fmt_seconds(s['bytes_s_per_sim'])})" if "bytes_s_per_sim" in s else ""
    return (
        f"{key}: vmapped {fmt_seconds(s['measured_s_per_sim'])} per simulation{bytes_s}; the loop pays "
        f"{fmt_seconds(s['loop_s_per_jitted_call'])} per jitted call, {s['steps'] + 1} calls per simulation."
    )


def summary(sweep: dict[str, Any]) -> list[str]:
    lines = []
    for key, s in sweep.items():
        line = (
            f"Sweep {key} ({s['settings']} settings, {s['steps']} steps): vmapped "
            f"{fmt_ratio(s['speedup_vs_loop'])}x the Python loop, {fmt_ratio(s['speedup_vs_jitted_per_setting'])}x "
            f"the jitted per-setting call (the strongest baseline: {BASELINES[s['strongest_baseline']]})"
        )
        if "measured_s_per_sim" in s:
            line += "; " + _per_sim(key, s).split(": ", 1)[1].rstrip(".")
        lines.append(line + ".")
    return lines


SECTION = Section(name="sweep", title="Inner-loop sweeps", measure=measure, goals=goals, render=render, summary=summary)
