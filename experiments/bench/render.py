"""bench.md: the goals table, then each section's own Markdown (in registry order), then any errors."""

from __future__ import annotations

import math
from typing import Any

from experiments.common import markdown_table

__all__ = ["fmt_ops", "fmt_ratio", "fmt_seconds", "goal_cell", "markdown", "table", "yes"]

table = markdown_table


def fmt_ops(ops: Any) -> str:
    """A per-op profile (:func:`experiments.bench.harness.op_profile`) in one line, or why there is none."""
    if not isinstance(ops, dict):
        return str(ops)
    top = ", ".join(f"{name} {ms:.3g}" for name, ms in ops["top"])
    return f"{top} (all {ops['ops']} ops {ops['total_ms']:.3g})"


def fmt_ratio(v: float | str | None) -> str:
    """A ratio with three significant digits (thousands separated from 100 up); bench.json's "nan"/"inf" as such."""
    if v is None:
        return "n/a"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def fmt_seconds(s: float) -> str:
    """A duration in us below a millisecond, in ms below a second, else in s (three significant digits)."""
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def yes(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[met]


def goal_cell(g: dict[str, Any], *, bold_missed: bool = False) -> str:
    """The measured ratio of a goal record, with the ratios quoted alongside it and its extrapolation label."""
    text = fmt_ratio(g["measured"])
    if bold_missed and g["met"] is False:
        text = f"**{text}**"
    if g.get("also"):
        text += " (" + "; ".join(f"{k}: {fmt_ratio(v)}" for k, v in g["also"].items()) + ")"
    if g.get("extrapolated"):
        text += f", extrapolated: {g['extrapolated']}"
    return text


def _header(meta: dict[str, Any]) -> list[str]:
    return [
        "# jgrpo benchmarks",
        "",
        f"Config `{meta['config']}` on {meta.get('device_label') or meta['backend'] + ' (' + meta['device'] + ')'}, "
        f"jax {meta['jax']}, {meta.get('started', '?')}; peers: {meta.get('peers') or meta.get('peer_skip')}. "
        f"Runtime {meta.get('runtime_s', 0):.0f} s.",
        "Every number is a ratio of medians of interleaved timings in one process (compile time excluded); "
        "every reference rate (copy bandwidth, matmul FLOP/s) is measured in the same run on the same device. "
        "A ratio scaled up from a timed sample says so (extrapolated).",
        "",
    ]


def markdown(res: dict[str, Any]) -> str:
    """bench.md from bench.json's content."""
    from experiments.bench.registry import SECTIONS, load

    goals = [
        (g["goal"], g["what"], goal_cell(g), f"{g.get('direction', '')} {g['target']:g}".strip(), yes(g["met"]))
        for g in res.get("goals", [])
    ]
    lines = _header(res["meta"])
    lines += ["## Goals", "", table(["goal", "what", "measured", "target", "met"], goals)]
    number = 0
    for name in SECTIONS:
        if res.get(name):
            section = load(name)
            body = section.render(res[name])
            if body:
                number += 1
                lines += [f"## {number}. {section.title}", ""] + body
    if res.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v.strip().splitlines()[-1]}" for k, v in res["errors"].items()] + [""]
    return "\n".join(lines)
