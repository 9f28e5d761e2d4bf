"""The benchmark's goals: targets, and the rule that judges a measured ratio against its target.

Each section turns its own result into goal records (its ``goals`` function, built
with :func:`goal`); :func:`collect` gathers them for bench.json, bench.md and the
README. A goal record is measured, never typed: ``met`` follows from ``measured``,
``target`` and the goal's direction.
"""

from __future__ import annotations

import math
from typing import Any

from experiments.bench.registry import SECTIONS, load

__all__ = ["DESCRIPTIONS", "GOALS", "LOWER_IS_BETTER", "collect", "goal", "judge"]

GOALS = {
    "loss_vs_verl": 5.0,  # jgrpo loss+grad at least 5x faster than verl
    "loss_vs_floor": 2.0,  # within 2x of the memory floor
    "decomp_vs_subset_grads": 3.0,
    "decomp_vs_per_token": 50.0,
    "decomp_vs_train_step": 1.5,  # decompose at most 1.5x one train step on the same batch
    "sweep_vs_loop": 100.0,
    "train_vs_matmul": 0.30,  # fraction of the reference matmul's FLOP/s
    "share_vs_theory": 0.7,  # shared-prompt speed-up at least 0.7 x G (P + T) / (P + G T)
}

LOWER_IS_BETTER = frozenset({"loss_vs_floor", "decomp_vs_train_step"})

DESCRIPTIONS = {
    "loss_vs_verl": "loss+grad: verl time (faster thread setting) / jgrpo time",
    "loss_vs_floor": "loss+grad: jgrpo time / memory floor (bytes that must move / in-place copy bandwidth)",
    "decomp_vs_subset_grads": "decomposition: K+1 separate jax.grad calls / prefix.decompose",
    "decomp_vs_per_token": "decomposition: per-token gradients / prefix.decompose",
    "decomp_vs_train_step": "decomposition: prefix.decompose / one AdamW train step (same model, same batch)",
    "sweep_vs_loop": "inner-loop sweep: vmapped sims/s / Python-loop sims/s",
    "train_vs_matmul": "train step FLOP/s / reference matmul FLOP/s (same device, same run)",
    "share_vs_theory": "shared-prompt log-prob+grad: (G-copies time / shared time) / (G (P + T) / (P + G T))",
}


def judge(name: str, measured: float | None) -> bool | None:
    """Whether ``measured`` meets goal ``name`` (None when nothing finite was measured)."""
    if measured is None or isinstance(measured, str) or not math.isfinite(measured):
        return None  # (bench.json stores nan and inf as strings)
    target = GOALS[name]
    return measured <= target if name in LOWER_IS_BETTER else measured >= target


def goal(
    name: str,
    key: str,
    measured: float | None,
    *,
    what: str,
    also: dict[str, float] | None = None,
    extrapolated: str | None = None,
) -> dict[str, Any]:
    """One goal record.

    Args:
      name: a key of :data:`GOALS`.
      key: what distinguishes this row among the goal's rows (a case and size, a simulation); stable
        across runs, so that runs can be set side by side.
      measured: the measured ratio (None when it could not be measured).
      what: the ratio in words.
      also: other measured ratios quoted next to it (e.g. against a stronger baseline).
      extrapolated: None when ``measured`` is measured whole; else what was timed and how it was scaled.
    """
    if name not in GOALS:
        raise ValueError(f"unknown goal {name!r}; known: {', '.join(GOALS)}")
    return {
        "goal": name,
        "key": key,
        "what": what,
        "measured": measured,
        "target": GOALS[name],
        "direction": "<=" if name in LOWER_IS_BETTER else ">=",
        "met": judge(name, measured),
        "also": dict(also or {}),
        "extrapolated": extrapolated,
    }


def collect(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The goal records of every section in ``res`` (bench.json), in registry order."""
    goals: list[dict[str, Any]] = []
    for name in SECTIONS:
        if res.get(name):
            goals += load(name).goals(res[name])
    return goals
