"""Timing harness: interleaved races, and the probes that say where a program's time goes.

Every benchmark number is a ratio of two timings from :func:`race`, taken in the
same process and interleaved, so that a shared or throttled machine slows both
sides alike. The probes (:func:`faults_per_call`, :func:`cost`, :func:`op_profile`)
explain a missed goal; none of them is a result on its own.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["Timing", "blocking", "cost", "faults_per_call", "op_profile", "race"]


@dataclasses.dataclass
class Timing:
    """Interleaved timings of one contender: the median and every sample (seconds per call)."""

    median: float
    samples: list[float]


def race(
    fns: dict[str, Callable[[], Any]], *, rounds: int, budget_s: float = math.inf, min_sample_s: float = 0.05
) -> dict[str, Timing]:
    """Times callables side by side: warm-up, then interleaved rounds (A, B, ..., order rotated each round).

    Each callable must block until its work is done (``jax.block_until_ready``).
    Warm-up: one call each (compiles), and with ``min_sample_s > 0`` a second,
    timed call that sets how many back-to-back calls make one sample (at least
    ``min_sample_s`` long, at most 1000 calls), so that sub-millisecond calls are
    not timer- and scheduler-noise. Round r runs the callables in the order
    rotated by r, so none always goes first. Stops after ``rounds`` rounds, or
    earlier once ``budget_s`` has passed and at least ``min(3, rounds)`` rounds are done.

    Returns:
      ``{name: Timing}``: per-call seconds, the median over rounds and every sample.
    """
    names = list(fns)
    reps = dict.fromkeys(names, 1)
    for name in names:
        fns[name]()
        if min_sample_s > 0:
            t0 = time.perf_counter()
            fns[name]()
            reps[name] = int(min(1000, max(1, math.ceil(min_sample_s / max(time.perf_counter() - t0, 1e-9)))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fns[name]()
            samples[name].append((time.perf_counter() - t0) / reps[name])
        if r + 1 >= min(3, rounds) and time.perf_counter() - start > budget_s:
            break
    return {n: Timing(float(np.median(s)), [float(x) for x in s]) for n, s in samples.items()}


def blocking(f: Callable, *args: Any) -> Callable[[], Any]:
    """``f(*args)`` as a zero-argument callable that waits for the result (for :func:`race`)."""
    return lambda: jax.block_until_ready(f(*args))


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_call(fn: Callable[[], Any], calls: int = 3) -> float:
    """Median minor page faults of the process during one call of ``fn`` (0 on a GPU device buffer)."""
    counts = []
    for _ in range(calls):
        before = _minor_faults()
        fn()
        counts.append(_minor_faults() - before)
    return float(np.median(counts))


def cost(compiled: Any) -> dict[str, float]:
    """XLA's cost analysis (flops, bytes accessed) and memory analysis (temp bytes) of a compiled function."""
    out: dict[str, float] = {}
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        for key in ("flops", "bytes accessed", "transcendentals"):
            if key in ca:
                out[key.replace(" ", "_")] = float(ca[key])
    except Exception as e:  # cost analysis is best-effort per backend
        out["cost_analysis_error"] = repr(e)
    try:
        out["temp_bytes"] = float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:
        pass
    return out


_SKIP_EVENTS = ("ThunkExecutor", "SlinkyThreadPool", "$", "PjitFunction", "CommonPjRt", "Handle", "Parse", "Allocate")


def op_profile(fn: Callable[[], Any], calls: int = 3, top: int = 8) -> dict[str, Any] | str:
    """Per-op time from ``jax.profiler``, per call and summed over threads.

    On CPU the events are XLA's thunks (one per fusion) on its worker threads; on
    a GPU, the kernels on the device plane.

    Returns:
      ``{"top": [(op name, ms)], "total_ms": all ops' ms, "ops": count}`` (largest
      first), or a string saying why no profile is available: the trace cannot be
      read, or it holds no XLA op events (then there is nothing to report, rather
      than "0 ops, 0 ms").
    """
    try:
        with tempfile.TemporaryDirectory() as d:
            fn()
            with jax.profiler.trace(d):
                for _ in range(calls):
                    fn()
            files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
            data = jax.profiler.ProfileData.from_file(files[0])
            total: dict[str, float] = collections.defaultdict(float)
            for plane in data.planes:
                device = plane.name.startswith("/device:")
                for line in plane.lines:
                    # CPU: XLA's worker threads; GPU/TPU: the op line of the device plane (not the streams too)
                    if not (line.name == "XLA Ops" if device else line.name.startswith("tf_XLA")):
                        continue
                    for ev in line.events:
                        if not ev.name.startswith(_SKIP_EVENTS):
                            total[ev.name] += ev.duration_ns / 1e6 / calls
    except Exception as e:  # the profiler is an optional extra
        return f"profile unavailable: {e!r}"
    if not total:
        return f"profile unavailable: the trace holds no XLA op events on {jax.default_backend()}"
    ranked = sorted(total.items(), key=lambda kv: -kv[1])
    return {"top": ranked[:top], "total_ms": sum(total.values()), "ops": len(ranked)}
