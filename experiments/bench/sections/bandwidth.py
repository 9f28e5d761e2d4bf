"""Reference rates of the memory system: streaming-copy bandwidth (in place, into a fresh buffer) and call overhead.

Not a comparison of its own: the loss section's memory floor divides by the
in-place bandwidth, and the decomposition and sweep sections price page faults
and XLA's bytes with it. Every rate is measured in this run, on the device named
in the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from experiments.bench import env
from experiments.bench.config import Config
from experiments.bench.harness import blocking, faults_per_call, race
from experiments.bench.registry import Context, Section


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Streaming bandwidth of a large copy, in place (donated buffer) and into a fresh buffer; call overhead.

    ``y = -x`` over ``copy_mb`` MB of float32 moves 2 x copy_mb MB. The in-place
    copy is the hardware limit used for the floor; the fresh one also pays
    allocating (on CPU: page-faulting) its output, as every jitted call does.
    ``dispatch_s`` is the end-to-end time of a jitted call on 8 floats: the fixed
    cost that no size-proportional floor includes.
    """
    n = cfg.copy_mb * 2**20 // 4
    x = jnp.ones((n,), jnp.float32)
    fresh = jax.jit(lambda v: -v)
    inplace = jax.jit(lambda v: -v, donate_argnums=0)
    state = {"y": jnp.ones((n,), jnp.float32)}

    def run_inplace():
        state["y"] = inplace(state["y"])
        state["y"].block_until_ready()

    run_fresh = blocking(fresh, x)
    tiny = jnp.ones((8,), jnp.float32)
    dispatch = blocking(jax.jit(lambda v: v + 1.0), tiny)
    times = race(
        {"inplace": run_inplace, "fresh": run_fresh, "dispatch": dispatch},
        rounds=max(cfg.rounds, 3),
        budget_s=cfg.budget_s,
    )
    moved = 2 * n * 4
    out = {
        "device": env.device(),
        "probe": f"jitted y = -x over {cfg.copy_mb} MB of float32 (reads and writes {moved / 2**20:.0f} MB)",
        "bytes_moved": moved,
        "inplace_GBps": moved / times["inplace"].median / 1e9,
        "fresh_GBps": moved / times["fresh"].median / 1e9,
        "dispatch_s": times["dispatch"].median,  # one jitted call on 8 floats, end to end
        "times": {k: dataclasses.asdict(v) for k, v in times.items()},
    }
    if env.backend() == "cpu":
        f_fresh, f_inplace = faults_per_call(run_fresh), faults_per_call(run_inplace)
        out["faults_fresh"], out["faults_inplace"] = f_fresh, f_inplace
        if f_fresh - f_inplace >= 1000:  # enough faults to price one
            extra = times["fresh"].median - times["inplace"].median
            out["seconds_per_fault"] = max(extra, 0.0) / (f_fresh - f_inplace)
    return out


def reference(bw: dict[str, Any]) -> str:
    """The in-place bandwidth, labelled with what it is and where it was measured."""
    return (
        f"{bw['inplace_GBps']:.3g} GB/s in-place copy bandwidth ({bw.get('probe', 'streaming copy')}, "
        f"measured on {bw.get('device', '?')} in this run)"
    )


def render(bw: dict[str, Any]) -> list[str]:
    faults = ""
    if "seconds_per_fault" in bw:
        faults = f" ({bw['faults_fresh']:.0f} page faults per call, {bw['seconds_per_fault'] * 1e6:.1f} us each)"
    return [
        f"Measured in this run on {bw.get('device', '?')}, the reference for the floors below: "
        f"{bw.get('probe', 'a streaming copy')}: in place (donated buffer) {bw['inplace_GBps']:.3g} GB/s, "
        f"into a fresh buffer {bw['fresh_GBps']:.3g} GB/s{faults}; one jitted call on 8 floats, end to end, "
        f"{bw['dispatch_s'] * 1e3:.3f} ms.",
        "",
    ]


def summary(bw: dict[str, Any]) -> list[str]:
    return [f"Memory reference: {reference(bw)}; into a fresh buffer {bw['fresh_GBps']:.3g} GB/s."]


SECTION = Section(
    name="bandwidth", title="Reference rates: memory bandwidth", measure=measure, render=render, summary=summary
)
