"""The clipping experiment's report: the table, the figure and the notes; the only place with I/O."""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments import stats
from experiments.clipping.config import LABELS, NAME, VARIANTS, Config
from experiments.common import finish, markdown_table, new_figure, save_figure
from experiments.shared.seeds import plot_band


def write(ctx, cfg: Config, grid: dict, claims: list, runtime: float):
    """Writes the figure, table.md and result.json; returns the Outcome."""
    pcfg = cfg.policy
    rows = []
    for j, lr in enumerate(pcfg.learning_rates):
        for mu in cfg.mus:
            for v in VARIANTS:
                g = grid[v][mu]
                ci = stats.mean_ci(g["gain"][j])
                rows.append(
                    (
                        f"{lr:g}",
                        mu,
                        LABELS[v],
                        f"{1e3 * ci.center:.3f} [{1e3 * ci.lo:.3f}, {1e3 * ci.hi:.3f}]",
                        float(g["acc"][j, :, -1].mean()),
                        float(g["clip_active"][j].mean()),
                        float(g["escape"][j].mean()),
                        float(g["kl"][j].mean()),
                    )
                )
    table = markdown_table(
        [
            "η",
            "μ",
            "variant",
            "ΔE per sample × 1e3 (95% CI)",
            "final accuracy",
            "clip active",
            "escape frac",
            "KL / batch",
        ],
        rows,
    )
    _figure(cfg, grid, ctx.out / "clipping.png")
    result = {
        "config": dataclasses.asdict(cfg),
        "grid": {v: {str(mu): d for mu, d in grid[v].items()} for v in grid},
        "runtime_s": runtime,
    }
    notes = (
        f"Policy: exact tabular softmax policy (V = {pcfg.vocab}, T = {pcfg.completion_len}); reward 1 iff the "
        f"completion contains token 0, exact accuracy from analysis.tabular. {pcfg.seeds} seeds × η ∈ "
        f"{{{', '.join(f'{x:g}' for x in pcfg.learning_rates)}}}; K = {pcfg.num_batches} batches of "
        f"B = {pcfg.num_prompts} × G = {pcfg.group_size} samples; Adam β1 0.9, β2 {cfg.beta2}, ε {cfg.adam_eps:g}; "
        f"GRPO β = 0. ΔE per sample = (E_K − E_0)/(K·B·G), exact. Runtime {runtime:.0f} s."
    )
    return finish(ctx, NAME, "Is clipping needed? (Limitations)", result, table, claims, "clipping.png", notes=notes)


def _figure(cfg: Config, grid: dict, path) -> None:
    pcfg = cfg.policy
    mid = len(pcfg.learning_rates) - 1  # the η of the claims
    fig, axes = new_figure(ncols=3, nrows=1, size=(4.6, 3.5))
    ax = axes[0, 0]
    x = np.arange(len(cfg.mus))
    width = 0.8 / len(VARIANTS)
    for k, v in enumerate(VARIANTS):
        cis = [stats.mean_ci(grid[v][mu]["gain"][mid]) for mu in cfg.mus]
        ax.bar(
            x + k * width,
            [1e3 * c.center for c in cis],
            width,
            yerr=[[1e3 * (c.center - c.lo) for c in cis], [1e3 * (c.hi - c.center) for c in cis]],
            capsize=2,
            label=LABELS[v],
        )
    ax.set_xticks(x + width * (len(VARIANTS) - 1) / 2, [str(m) for m in cfg.mus])
    ax.set(
        xlabel="μ (inner steps per batch)",
        ylabel="exact ΔE per sample × 1e3",
        title=f"ΔE per sample, η = {pcfg.learning_rates[mid]:g} (95% CI)",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    mu = max(cfg.mus)
    steps = np.arange(pcfg.num_batches + 1)
    for v in VARIANTS:
        plot_band(ax, steps, grid[v][mu]["acc"][mid], label=LABELS[v])  # acc [S, K+1]
    ax.set(xlabel="batch", ylabel="exact accuracy E[reward]", title=f"accuracy over training, μ = {mu} (95% CI)")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    for v in VARIANTS:
        gains = np.array([grid[v][mu]["gain"].mean(1) for mu in cfg.mus])  # [n_mu, n_lr]
        for j in range(len(pcfg.learning_rates)):
            ax.plot(cfg.mus, 1e3 * gains[:, j], "o-" if j == mid else ":", label=f"{LABELS[v]}" if j == mid else None)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(cfg.mus), [str(m) for m in cfg.mus])
    ax.set(xlabel="μ", ylabel="exact ΔE per sample × 1e3", title="every η (solid: the claims' η), mean over seeds")
    ax.legend(fontsize=7)
    fig.subplots_adjust(wspace=0.3)
    save_figure(fig, path)
