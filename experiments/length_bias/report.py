"""The length_bias experiment's report: tables, the figure and the notes; the only place with I/O."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from experiments.common import Context, finish, markdown_table, new_figure, save_figure
from experiments.length_bias.config import NAME, OPTIMIZERS, Config
from experiments.length_bias.measure import Measurement
from experiments.shared.progress import values_at_levels
from experiments.shared.seeds import finite_ci, plot_band


def _described(m: Measurement) -> list[tuple]:
    """Matched-progress differences method − dr_grpo of every method (descriptive rows, not claims)."""
    rows = []
    for opt, label in OPTIMIZERS:
        for method, by_key in m.differences[opt].items():
            row = [label, method]
            for key in ("length_incorrect", "length_correct"):
                diffs = [x for x in by_key[key] if math.isfinite(x)]
                row.append(finite_ci(diffs).fmt("+.2f") if len(diffs) >= 2 else "n/a")
            rows.append(tuple(row))
    return rows


def write(ctx: Context, cfg: Config, m: Measurement, claims: list):
    """Writes the figure, table.md and result.json; returns the Outcome."""
    series, drifts, gains, t_train, t_drift = m.series, m.drifts, m.gains, m.t_train, m.t_drift
    methods = cfg.methods
    n_m, o = len(methods), len(OPTIMIZERS)
    ctx.progress(0.95, "figure")
    _figure(ctx, cfg, series, drifts)
    described = _described(m)
    rows = []
    last = max(1, cfg.outer_steps // 10)
    for j, name in enumerate(methods):
        d = [
            finite_ci([drifts[name][c][s]["incorrect_per_gain"] for s in range(cfg.seeds)])
            for c in range(min(2, len(cfg.checkpoints)))
        ]
        row = [name, d[0].fmt("+.3f"), d[1].fmt("+.3f") if len(d) > 1 else ""]
        for k_opt in range(o):
            row += [
                finite_ci(series["reward"][:, k_opt, j, -last:].mean(-1)).fmt(".3f"),
                finite_ci(series["length_correct"][:, k_opt, j, -last:].mean(-1)).fmt(".2f"),
                finite_ci(series["length_incorrect"][:, k_opt, j, -last:].mean(-1)).fmt(".2f"),
            ]
        rows.append(tuple(row))
    first = {k: float(series[k][:, 0, 0, 0].mean()) for k in ("reward", "length", "length_correct", "length_incorrect")}
    step1 = cfg.checkpoints[1] if len(cfg.checkpoints) > 1 else "-"
    header = ["method", "D at θ_0", f"D at step {step1}"]
    for _, label in OPTIMIZERS:
        short = "Adam" if label == "Adam" else "NGD"
        header += [f"{short}: E[r]", f"{short}: E[|o| | cor]", f"{short}: E[|o| | inc]"]
    table = (
        f"D = ΔE[|o| | incorrect] / ΔE[r] along the expected gradient (exact); E[·] over the last {last} steps "
        "(exact); mean [95% CI] over seeds.\n\n"
        + markdown_table(header, rows)
        + "\nMatched progress, method − dr_grpo (tokens; mean over 5 E[r] levels per seed, [95% CI]); the "
        "E[|o| | correct] column and the non-grpo rows are descriptive, not pre-stated claims.\n\n"
        + markdown_table(["optimizer", "method", "ΔE[|o| | incorrect]", "ΔE[|o| | correct]"], described)
    )
    notes = (
        f"Task: {len(cfg.difficulties)} prompts needing {', '.join(map(str, cfg.difficulties))} reasoning tokens "
        f"before the answer; completions up to {cfg.length} tokens. At θ_0 (mean over {cfg.seeds} seeds): E[r] "
        f"{first['reward']:.3f}, E[|o|] {first['length']:.2f}, E[|o| | correct] {first['length_correct']:.2f}, "
        f"E[|o| | incorrect] {first['length_incorrect']:.2f}. Training: {cfg.outer_steps} outer steps of "
        f"{cfg.prompts_per_step} groups x G = {cfg.group_size}, μ = {cfg.inner_steps} steps per batch with Adam (lr "
        f"{cfg.learning_rate}, state carried over) or normalised gradient descent (NGD: step length "
        f"{cfg.ngd_learning_rate} along g/||g||, i.e. along the direction the drift D is measured on), β = 0; "
        f"{o * n_m * cfg.seeds} runs ({o} optimizers x {n_m} methods x {cfg.seeds} seeds) in one vmapped program with "
        "common random numbers; all lengths and rewards are exact expectations of the tabular policy. Drift D: "
        f"{cfg.drift_groups} groups per measurement, exact directional derivatives, at θ_0 and at steps "
        f"{', '.join(map(str, cfg.checkpoints[1:]))} of each seed's Adam dr_grpo run (every method on the same "
        "groups). Matched-progress E[r] gain per seed: "
        + "; ".join(f"{label}: {', '.join(f'{g:.2f}' for g in gains[opt])}" for opt, label in OPTIMIZERS)
        + f". Timings: training {t_train:.0f} s, drift {t_drift:.0f} s. The NGD arm and its claim were added "
        "after a first run with Adam alone (its claim was stated before that arm ran)."
    )
    curves = {
        opt: {
            name: {
                k: series[k][:, k_opt, j].tolist()
                for k in ("reward", "length_correct", "length_incorrect", "length", "truncated", "batch_reward")
            }
            for j, name in enumerate(methods)
        }
        for k_opt, (opt, _) in enumerate(OPTIMIZERS)
    }
    return finish(
        ctx,
        NAME,
        "Length bias: lengths of correct and incorrect completions on a length-coupled task",
        {
            "config": dataclasses.asdict(cfg),
            "curves": curves,
            "drift": {name: {str(step): drifts[name][c] for c, step in enumerate(cfg.checkpoints)} for name in methods},
            "matched_progress": {"grpo_minus_dr_grpo": m.matched, "reward_gain": gains},
            "timings": {"train": t_train, "drift": t_drift},
        },
        table,
        claims,
        "length_bias.png",
        notes,
    )


def _band(ax, x, y, label):
    """Mean over seeds (rows of y) with a 95% t-band."""
    plot_band(ax, x, y, label=label, lw=1.2, fill={"alpha": 0.2})


def _figure(ctx: Context, cfg: Config, series: dict, drifts: dict) -> None:
    fig, axes = new_figure(4, 2, size=(4.6, 3.6))
    methods = cfg.methods
    steps = np.arange(cfg.outer_steps)
    for k_opt, (_, label) in enumerate(OPTIMIZERS):
        row = axes[k_opt]
        for j, name in enumerate(methods):
            _band(row[0], steps, series["reward"][:, k_opt, j], name)
            _band(row[1], steps, series["length_correct"][:, k_opt, j], name)
            r, li = series["reward"][:, k_opt, j], series["length_incorrect"][:, k_opt, j]
            grid = np.linspace(r[:, 0].mean(), np.median(r.max(-1)), 30)
            _band(row[2], grid, values_at_levels(r, li, grid), name)
            if k_opt == 0:
                _band(row[3], steps, li, name)
        titles = (
            f"{label}: exact expected reward",
            f"{label}: E[|o| | correct]",
            f"{label}: E[|o| | incorrect] at matched progress",
        )
        xlabels = ("outer step", "outer step", "expected reward reached (first passage)")
        ylabels = ("E[r]", "tokens", "tokens")
        for ax, title, xl, yl in zip(row[:3], titles, xlabels, ylabels, strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.legend(fontsize=6)
    ax = axes[0, 3]
    ax.set_title("Adam: E[|o| | incorrect] over training", fontsize=9)
    ax.set_xlabel("outer step")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=6)
    ax = axes[1, 3]
    cis = [finite_ci([drifts[n][0][s]["incorrect_per_gain"] for s in range(cfg.seeds)]) for n in methods]
    x = np.arange(len(methods))
    ax.bar(
        x,
        [ci.center for ci in cis],
        yerr=[[ci.center - ci.lo for ci in cis], [ci.hi - ci.center for ci in cis]],
        capsize=3,
        color=[f"C{i}" for i in range(len(methods))],
    )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, methods, rotation=45, fontsize=8, ha="right")
    ax.set_ylabel("ΔE[|o| | incorrect] / ΔE[r] (95% CI)")
    ax.set_title("exact drift along the expected gradient at θ_0", fontsize=9)
    fig.tight_layout()
    save_figure(fig, ctx.out / "length_bias.png")
