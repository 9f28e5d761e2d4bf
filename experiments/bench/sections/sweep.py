"""Inner-loop sweeps: a simulator vmapped over 10^4 hyperparameter settings against its two baselines.

The baselines, per setting: (i) a Python loop of jitted optax steps (what a user
writes by hand; ``inject_hyperparams``, so one compiled update serves every
setting) and (ii) the jitted single-setting simulator called once per setting.
Each sweep is quoted against both, and against the stronger (faster) of the two.
Every rate is measured: the baselines on a few settings (each setting runs the
same program), the vmapped call on all of them.

The GRPO inner loop (tabular policy, Adam) runs on the table stored flat
(``analysis.overshoot.flat_policy``: the same trajectory, every baseline included;
XLA's CPU backend runs the vmapped elementwise Adam update several times faster on
``[N, T(V+1)V]`` than on ``[N, T, V+1, V]``). It is also timed, in the same race, in
the table's own layout, with the policy's dense log-softmax core (before the per-cell
log-sum-exp), on the path before issue 10 (the per-token gather
formulation of the tabular policy, whose gradient scatters V-wide rows, and the
autodiff loss), vmapped at once and in chunks, and against its ceiling: the same
Adam steps on the same table with a fixed gradient (no policy, no loss), the rate
no policy or loss implementation can beat.
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
from experiments.bench.goals import goal
from experiments.bench.harness import Timing, blocking, cost, op_profile, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ops, fmt_ratio, fmt_seconds, table
from jgrpo.policies import _tabular_core_dense, _tabular_core_gather, tabular_init, tabular_logprob

__all__ = ["SECTION"]

BASELINES = {"loop": "Python loop of optax steps", "single": "jitted per-setting call"}

# The GRPO inner loop's vmapped variants, timed in the same race (``vmapped`` is what the goal judges).
VARIANTS = {
    "vmapped": "today: table stored flat (analysis.overshoot.flat_policy), per-cell log-sum-exp policy + fused loss, "
    "lax.map over chunks of vmapped settings",
    "vmapped_dense": "the same with the dense log-softmax of the whole table (the policy's core before the "
    "per-cell log-sum-exp)",
    "vmapped_table": "today's policy and loss with the table in its [T, V+1, V] layout",
    "vmapped_whole": "today's path, one vmap over every setting",
    "vmapped_before": "before issue 10: per-token gather + autodiff loss, [T, V+1, V] table, one vmap over all",
    "optimizer_only": "ceiling: the same Adam steps on the same (flat) table, fixed gradient (no policy, no loss)",
}


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
        "settings_timed": {k: settings[k] for k in ("vmapped", "loop", "single")},
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


def _logprob_dense(params, tokens, prompt=None):
    """The tabular policy's log-probabilities with the dense log-softmax core (same values)."""
    del prompt
    return _tabular_core_dense(params["logits"], jnp.asarray(tokens))[0]


def _logprob_before(params, tokens):
    """The tabular policy's log-probabilities as computed before issue 10 (per-token gather; same values)."""
    return _tabular_core_gather(params["logits"], jnp.asarray(tokens))[0]


def chunked(fn: Callable, chunk: int) -> Callable:
    """``fn`` vmapped over chunks of ``chunk`` settings, the chunks in a ``lax.map``: one program for every setting.

    The settings (leading axis of every argument) must be a multiple of ``chunk``.
    """

    def run(*xs):
        n = xs[0].shape[0]
        if n % chunk:
            raise ValueError(f"settings ({n}) must be a multiple of the chunk ({chunk})")
        split = tuple(x.reshape((n // chunk, chunk) + x.shape[1:]) for x in xs)
        out = jax.lax.map(lambda x: jax.vmap(fn)(*x), split)
        return jax.tree.map(lambda o: o.reshape((n,) + o.shape[2:]), out)

    return run


def _group_problem(n: int):
    """The group, policy and settings of the GRPO inner-loop sweep (G = 8 completions of T = 12 tokens, V = 8)."""
    lr, b1, b2, eps = _settings(n, seed=1)
    lr = lr * 100.0  # tabular logits move at these rates
    vocab, g, t = 8, 8, 12
    rng = np.random.default_rng(2)
    params = tabular_init(jax.random.key(3), vocab=vocab, max_len=t)
    tokens = jnp.asarray(rng.integers(0, vocab, size=(g, t)), jnp.int32)
    mask = jnp.asarray((np.arange(t) < rng.integers(t // 2, t + 1, size=(g, 1))).astype(np.float32))
    rewards = jnp.asarray(np.r_[0.0, 1.0, rng.integers(0, 2, size=g - 2)].astype(np.float32))
    batch = jgrpo.GroupBatch(mask=mask, logp_old=tabular_logprob(params, tokens), rewards=rewards, tokens=tokens)
    return (lr, b1, b2, eps), params, batch, (g, t)


def _group_sweep(cfg: Config, log: Callable, bw: dict[str, Any]) -> dict[str, Any]:
    """simulate_group (mu GRPO inner steps of Adam on a fixed group, tabular policy) vmapped vs its baselines."""
    n, steps = cfg.group_sweep_settings, cfg.group_sweep_steps
    (lr, b1, b2, eps), params, batch, (g, t) = _group_problem(n)
    spec = jgrpo.methods.get("grpo", beta=0.0)
    # the per-setting function of every contender but the layout variants: the table stored flat
    flat = overshoot.flat_policy(tabular_logprob, params)

    def one(lr, b1, b2, eps):
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
        traj = overshoot.simulate_group(spec, flat.logprob_fn, flat.params, batch, opt, steps)
        return traj.final_aux["escape"].frac, traj.final_loss

    flat_dense = overshoot.flat_policy(_logprob_dense, params)

    def one_dense(lr, b1, b2, eps):  # the same simulation with the dense log-softmax core
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
        traj = overshoot.simulate_group(spec, flat_dense.logprob_fn, flat_dense.params, batch, opt, steps)
        return traj.final_aux["escape"].frac, traj.final_loss

    def one_table(lr, b1, b2, eps):  # the same simulation, the table in its [T, V+1, V] layout
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
        traj = overshoot.simulate_group(spec, tabular_logprob, params, batch, opt, steps)
        return traj.final_aux["escape"].frac, traj.final_loss

    loss_before = _loss_fn_before(spec, batch)

    def one_before(lr, b1, b2, eps):  # simulate_group's steps with the pre-issue-10 policy and loss
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
        traj = overshoot.simulate_inner_steps(loss_before, params, opt, steps)
        return traj.final_aux["escape"].frac, traj.final_loss

    chunk = cfg.group_sweep_chunk if n % cfg.group_sweep_chunk == 0 else n
    vmapped = jax.jit(chunked(one, chunk))
    dense = jax.jit(chunked(one_dense, chunk))
    table_layout = jax.jit(chunked(one_table, chunk))
    whole = jax.jit(jax.vmap(one))
    before = jax.jit(jax.vmap(one_before))
    loss_fn = overshoot.grpo_loss_fn(spec, flat.logprob_fn, batch)
    grad0 = jax.grad(lambda p: loss_fn(p)[0])(flat.params)["logits"]

    def adam_only(lr, b1, b2, eps):
        opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
        fixed = lambda p: (jnp.vdot(grad0, p["logits"]), {})  # noqa: E731 - the gradient is grad0 at every step
        return overshoot.simulate_inner_steps(fixed, flat.params, opt, steps).final_loss

    ceiling = jax.jit(chunked(adam_only, chunk))
    single = jax.jit(one)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)

    @jax.jit
    def step(p, state):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    final = jax.jit(loss_fn)

    def loop_one(i: int):
        p, state = flat.params, opt.init(flat.params)
        for name, v in (("learning_rate", lr), ("b1", b1), ("b2", b2), ("eps", eps)):
            state.hyperparams[name] = v[i]
        for _ in range(steps):
            p, state = step(p, state)
        loss, aux = final(p)
        return aux["escape"].frac, loss

    m = {
        "vmapped": n,
        "vmapped_dense": n,
        "vmapped_table": n,
        "vmapped_whole": n,
        "vmapped_before": n,
        "optimizer_only": n,
        "loop": cfg.group_loop_settings,
        "single": min(n, 10 * cfg.group_loop_settings),
    }
    args = (lr, b1, b2, eps)
    fns = {
        "vmapped": blocking(vmapped, *args),
        "vmapped_dense": blocking(dense, *args),
        "vmapped_table": blocking(table_layout, *args),
        "vmapped_whole": blocking(whole, *args),
        "vmapped_before": blocking(before, *args),
        "optimizer_only": blocking(ceiling, *args),
        "loop": lambda: jax.block_until_ready([loop_one(i) for i in range(m["loop"])]),
        "single": lambda: jax.block_until_ready([single(lr[i], b1[i], b2[i], eps[i]) for i in range(m["single"])]),
    }
    _, loss_v = vmapped(*args)
    check = {
        "loop_loss_abs_err": abs(float(loss_v[0]) - float(loop_one(0)[1])),
        "single_loss_abs_err": abs(float(loss_v[0]) - float(single(lr[0], b1[0], b2[0], eps[0])[1])),
        "dense_loss_max_abs_err": float(jnp.max(jnp.abs(loss_v - dense(*args)[1]))),
        "table_loss_max_abs_err": float(jnp.max(jnp.abs(loss_v - table_layout(*args)[1]))),
        "whole_loss_max_abs_err": float(jnp.max(jnp.abs(loss_v - whole(*args)[1]))),
        "before_loss_max_abs_err": float(jnp.max(jnp.abs(loss_v - before(*args)[1]))),
    }
    log("sweep: GRPO inner loop")
    times = race(fns, rounds=cfg.rounds, budget_s=cfg.budget_s)
    out = {
        "simulator": "analysis.overshoot.simulate_group (tabular policy stored flat, Adam)",
        "settings": n,
        "steps": steps,
        "group": [g, t],
        "chunk": chunk,
        **rates(times, m),
        **variant_rates(times, m),
        "check": check,
        "samples": {k: v.samples for k, v in times.items()},
    }
    if cfg.profile:
        out["xla"] = cost(vmapped.lower(*args).compile())
        out["ops_ms"] = op_profile(fns["vmapped"], calls=1, top=6)
        out["measured_s_per_sim"] = times["vmapped"].median / n
        out["loop_s_per_jitted_call"] = times["loop"].median / (m["loop"] * (steps + 1))
        if "bytes_accessed" in out["xla"] and "inplace_GBps" in bw:
            # XLA counts a loop body once: the chunked program's bytes are those of one chunk
            out["bytes_s_per_sim"] = out["xla"]["bytes_accessed"] / chunk / (bw["inplace_GBps"] * 1e9)
    return out


def _loss_fn_before(spec: jgrpo.MethodSpec, batch: jgrpo.GroupBatch) -> Callable:
    """``analysis.overshoot.grpo_loss_fn`` as it ran before issue 10: per-token gather policy, autodiff loss.

    The same values (float32 rounding) and aux; only the policy's formulation and the loss path differ.
    """
    tokens = jnp.asarray(batch.tokens)

    def loss_fn(params):
        logp = _logprob_before(params, tokens)
        value, aux = jgrpo.loss(spec, logp, batch, fused=False)
        ratio = jnp.exp(jnp.where(jnp.asarray(batch.mask) > 0, logp - jnp.asarray(batch.logp_old), 0.0))
        aux = dict(aux)
        aux["escape"] = overshoot.escape(
            jax.lax.stop_gradient(ratio), aux["advantages"], batch.mask, eps_low=spec.eps_low, eps_high=spec.eps_high
        )
        return value, aux

    return loss_fn


def variant_rates(times: dict[str, Timing], settings: dict[str, int]) -> dict[str, Any]:
    """The GRPO inner loop's variants (:data:`VARIANTS`): their rates, and the vmapped rate over each.

    ``ceiling_vs_loop`` is the optimizer-only rate over the loop's: no implementation of the policy
    and the loss can bring the vmapped sweep above it.
    """
    rate = {k: settings[k] / times[k].median for k in VARIANTS if k in times}
    loop = settings["loop"] / times["loop"].median
    out: dict[str, Any] = {"variant_sims_per_s": rate}
    if "vmapped_dense" in rate:
        out["speedup_vs_dense_core"] = rate["vmapped"] / rate["vmapped_dense"]
    if "vmapped_table" in rate:
        out["speedup_vs_table_layout"] = rate["vmapped"] / rate["vmapped_table"]
        out["table_layout_vs_loop"] = rate["vmapped_table"] / loop
    if "vmapped_whole" in rate:
        out["speedup_vs_whole"] = rate["vmapped"] / rate["vmapped_whole"]
    if "vmapped_before" in rate:
        out["speedup_vs_before"] = rate["vmapped"] / rate["vmapped_before"]
        out["before_vs_loop"] = rate["vmapped_before"] / loop
    if "optimizer_only" in rate:
        out["ceiling_vs_loop"] = rate["optimizer_only"] / loop
        out["fraction_of_ceiling"] = rate["vmapped"] / rate["optimizer_only"]
    return out


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Both sweeps: Adam after a clip (scalar simulator) and the GRPO inner loop (tabular policy)."""
    bw = ctx.results.get("bandwidth") or {}
    return {"adam_after_clip": _adam_sweep(cfg, ctx.log), "grpo_inner_loop": _group_sweep(cfg, ctx.log, bw)}


def goals(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, s in sweep.items():
        also = {"vs jitted per-setting call": s["speedup_vs_jitted_per_setting"]}
        if "table_layout_vs_loop" in s:
            also["table in its [T, V+1, V] layout"] = s["table_layout_vs_loop"]
        if "before_vs_loop" in s:
            also["before issue 10"] = s["before_vs_loop"]
        if "ceiling_vs_loop" in s:
            also["ceiling: optimizer only"] = s["ceiling_vs_loop"]
        out.append(
            goal(
                "sweep_vs_loop",
                key,
                s["speedup_vs_loop"],
                what=f"{key}: vmapped sims/s / Python-loop sims/s",
                also=also,
            )
        )
    return out


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
        if "variant_sims_per_s" in s:
            lines += _variants(key, s)
        if "ops_ms" in s:
            lines += [f"Top ops of the vmapped {key} (ms per call, all threads): {fmt_ops(s['ops_ms'])}", ""]
        if "measured_s_per_sim" in s:
            lines += [_per_sim(key, s), ""]
    return lines


def _variants(key: str, s: dict[str, Any]) -> list[str]:
    """The GRPO inner loop's variants, in the same race: today's path, before issue 10, the ceiling."""
    loop = s["sims_per_s"]["loop"]
    rows = [
        (name, what, f"{rate:.4g}", rate / loop, s["variant_sims_per_s"]["vmapped"] / rate)
        for name, what in VARIANTS.items()
        if (rate := s["variant_sims_per_s"].get(name)) is not None
    ]
    header = ["variant", "what", "sims/s", "/ loop", "vmapped / variant"]
    return [
        f"{key} variants (same race; the vmapped row is the one the goal judges; chunks of {s['chunk']} settings):",
        "",
        table(header, rows),
    ]


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
        if "speedup_vs_dense_core" in s:
            line += f"; the per-cell log-sum-exp core is {fmt_ratio(s['speedup_vs_dense_core'])}x the dense one's rate"
        if "table_layout_vs_loop" in s:
            line += (
                f"; with the table in its [T, V+1, V] layout {fmt_ratio(s['table_layout_vs_loop'])}x the loop "
                f"(the flat layout is {fmt_ratio(s['speedup_vs_table_layout'])}x faster)"
            )
        if "before_vs_loop" in s:
            line += (
                f"; before issue 10 (per-token gather, autodiff loss) {fmt_ratio(s['before_vs_loop'])}x the loop, "
                f"now {fmt_ratio(s['speedup_vs_before'])}x faster"
            )
        if "ceiling_vs_loop" in s:
            line += (
                f"; ceiling: Adam alone on the same table (no policy, no loss) runs at "
                f"{fmt_ratio(s['ceiling_vs_loop'])}x the loop, the full simulation at "
                f"{s['fraction_of_ceiling']:.0%} of that"
            )
        if "measured_s_per_sim" in s:
            line += "; " + _per_sim(key, s).split(": ", 1)[1].rstrip(".")
        lines.append(line + ".")
    return lines


SECTION = Section(name="sweep", title="Inner-loop sweeps", measure=measure, goals=goals, render=render, summary=summary)
