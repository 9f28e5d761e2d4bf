"""The overshoot experiment's report: tables, the figure and the notes; the only place with I/O."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from experiments.common import finish, markdown_table, new_figure, save_figure
from experiments.overshoot.config import NAME, Config
from experiments.overshoot.measure import Measurement
from experiments.shared.seeds import plot_band
from experiments.shared.sweep import BASELINE, BY_NAME, NO_MOMENTUM, PolicyConfig, learning_rates_of


def _attribution_rows(meas: dict, pcfg: PolicyConfig) -> list:
    """Per optimizer: (token, step) pairs beyond the bound and the mean Δz per pair of each part (× 1e3)."""
    rows = []
    for name in pcfg.optimizers:
        m = meas[name]
        n = float(m["pairs_sum"].sum())
        per = [
            1e3 * float(m[k + "_sum"].sum()) / n if n else float("nan")
            for k in ("dz", "stale", "fresh", "corr", "resid")
        ]
        rows.append((BY_NAME[name].label, int(n), *per, float(m["own_max"].max())))
    return rows


def _sweep_rows(meas: dict, pcfg: PolicyConfig) -> list:
    rows = []
    for name in pcfg.optimizers:
        m = meas[name]
        for j, lr in enumerate(learning_rates_of(pcfg, BY_NAME[name])):
            rows.append(
                (
                    BY_NAME[name].label,
                    f"{lr:.3g}",
                    float(m["dJ"][j].mean()),
                    float(m["dE"][j].mean()),
                    float(m["kl"][j].mean()),
                    f"{m['escape_frac'][j].mean():.4f} ± {_se(m['escape_frac'][j]):.4f}",
                    float(m["max_excess"][j].mean()),
                    float(m["travel"][j].mean()),
                )
            )
    return rows


def _se(x) -> float:
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0


def _tables(cfg: Config, a: dict, meas: dict, policies: dict) -> str:
    rows = [
        (int(T), *[float(x) for x in a["closed"][i]]) for i, T in enumerate(a["T"]) if T in (2, 3, 5, 10, 20, 50, 100)
    ]
    rows.append(("∞", *[float(x) for x in a["limit_k"]]))
    text = "### (a) C_(T,k) (Eq. 36, paper's index), β1 0.9, β2 0.95\n\n"
    text += markdown_table(["T"] + [f"C_(T,{k})" for k in range(len(a["k"]))], rows) + "\n"
    e = a["eq38"]
    text += (
        f"Eq. 38 on a varying history (T = {e['T']}, ε = {e['eps']:g}): simulated C_(T,k) "
        f"{', '.join(f'{x:.4f}' for x in e['simulated'])}; exact {', '.join(f'{x:.4f}' for x in e['exact'])}; "
        f"constant-gradient shortcut {', '.join(f'{x:.4f}' for x in e['shortcut'])}.\n\n"
    )
    for kind, (pcfg, _) in policies.items():
        progress_e = "ΔE (exact)" if kind == "tabular" else "ΔE (held-out IS)"
        text += f"### (b) {kind}: per optimizer and η, mean over seeds and measured batches\n\n"
        text += markdown_table(
            ["optimizer", "η", "ΔJ", progress_e, "KL(π_old‖π)", "escape frac ± s.e.", "max excess", "travel/token"],
            _sweep_rows(meas[kind], pcfg),
        )
        text += (
            f"\n### (c) {kind}: attribution of Δz per (token, step) pair beyond the bound (mean × 1e3; "
            "Δz = stale + fresh + transform + residual)\n\n"
        )
        text += markdown_table(
            [
                "optimizer",
                "pairs",
                "Δz",
                "stale momentum",
                "fresh (other tokens)",
                "transform",
                "residual",
                "max |c_j|",
            ],
            _attribution_rows(meas[kind], pcfg),
        )
        text += "\n"
    return text


def _curve_panel(ax, meas, names, progress, metric):
    """One curve per optimizer, parametric in η: x = seed-mean progress, y = seed-mean metric ± 95% CI (band)."""
    for name in names:
        m = meas[name]
        plot_band(ax, m[progress].mean(1), m[metric], axis=1, fmt="o-", ms=2.5, lw=1.2, label=BY_NAME[name].label)


def _attribution_panel(ax, meas, names, kind):
    """Mean Δz per (token, step) pair beyond the bound, split into its parts, per optimizer (pooled over η, seeds)."""
    parts = (
        ("stale", "stale momentum"),
        ("fresh", "fresh (other tokens)"),
        ("corr", "transform"),
        ("resid", "residual"),
    )
    x = np.arange(len(names))
    width = 0.8 / (len(parts) + 1)
    for k, (key, label) in enumerate((("dz", "Δz (total)"),) + parts):
        vals = []
        for name in names:
            m = meas[name]
            n = float(m["pairs_sum"].sum())
            vals.append(1e3 * float(m[key + "_sum"].sum()) / n if n else 0.0)
        ax.bar(x + k * width, vals, width, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x + width * len(parts) / 2, [BY_NAME[n].label.replace("Adam 0.9 + ", "+") for n in names], fontsize=6)
    ax.tick_params(axis="x", rotation=30)
    ax.set(ylabel="Δz per clipped (token, step) × 1e3", title=f"(c) {kind}: attribution of Δz beyond the bound")
    ax.legend(fontsize=6)


def _figure(cfg: Config, a: dict, meas: dict, policies: dict, path) -> None:
    kinds = list(policies)
    fig, axes = new_figure(ncols=5, nrows=1 + 2 * len(kinds), size=(4.6, 3.5))
    ax = axes[0, 0]
    for k in range(len(a["k"])):
        (line,) = ax.plot(a["T"], a["closed"][:, k], lw=1.2, label=f"k = {k}")
        ax.plot(a["T"], a["simulated"][:, k], "o", ms=2.0, color=line.get_color())
    ax.axhline(a["limit"], color="k", ls="--", lw=1, label=f"β1/√β2 = {a['limit']:.3f}")
    ax.set(
        xlabel="T (step at which the gradient vanishes)", ylabel="C_(T,k)", title="(a) Eq. 36 (lines) vs optax (dots)"
    )
    ax.legend(fontsize=6, ncol=2)
    ax = axes[0, 1]
    e = a["eq38"]
    ks = np.arange(len(e["simulated"]))
    ax.plot(ks, e["simulated"], "ko", ms=5, label="optax Adam (varying history)")
    ax.plot(ks, e["exact"], "x-", label="Eq. 38 exact (v̂ before/after)")
    ax.plot(ks, e["shortcut"], "--", label="constant-gradient shortcut")
    ax.set(xlabel="k (zero-gradient steps)", ylabel="C^ε_(T,k)", title=f"(a) Eq. 38, ε = {e['eps']:g}, T = {e['T']}")
    ax.legend(fontsize=6)
    ax = axes[0, 2]
    hist = e["history"]
    ax.plot(np.arange(1, len(hist) + 1), hist, "o-", ms=3)
    ax.axhline(e["eps"], color="k", ls=":", lw=1, label="ε")
    ax.set(xlabel="step", ylabel="|g_t|", title="(a) the varying gradient history of Eq. 38")
    ax.legend(fontsize=6)
    axes[0, 3].axis("off")
    axes[0, 4].axis("off")
    for i, kind in enumerate(kinds):
        mk = meas[kind]
        adam_family = [n for n in ("adam_b0", "adam_b0.5", "adam_b0.9", "adam_b0.95", "rmsprop", "sgdm") if n in mk]
        transforms = [n for n in (BASELINE, "reset", "projection", "gate", "guard") if n in mk]
        progress_e = "exact ΔE" if kind == "tabular" else "held-out IS reward gain"
        labels = {"dJ": "surrogate gain ΔJ / batch", "kl": "KL(π_old‖π) / batch", "dE": f"{progress_e} / batch"}
        ylabels = {
            "escape_frac": "escaped fraction",
            "max_excess": "max excess beyond bound",
            "travel": "travel / token",
        }
        short = {"escape_frac": "escape", "max_excess": "max excess", "travel": "travel"}
        for j, prog in enumerate(("dJ", "kl")):
            r = 1 + 2 * i + j
            for c, metric in enumerate(("escape_frac", "max_excess", "travel")):
                ax = axes[r, c]
                _curve_panel(ax, mk, adam_family, prog, metric)
                vs = "ΔJ" if prog == "dJ" else "KL"
                ax.set(xlabel=labels[prog], ylabel=ylabels[metric], title=f"(b) {kind}: {short[metric]} vs {vs}")
                ax.legend(fontsize=6)
        for c, metric in ((3, "escape_frac"), (4, "travel")):
            ax = axes[1 + 2 * i, c]
            _curve_panel(ax, mk, transforms, "dE", metric)
            ax.set(xlabel=labels["dE"], ylabel=ylabels[metric], title=f"(b) {kind}: Pareto, {short[metric]} vs ΔE")
            ax.legend(fontsize=6)
        _attribution_panel(axes[2 + 2 * i, 3], mk, [n for n in (NO_MOMENTUM,) + tuple(transforms) if n in mk], kind)
        axes[2 + 2 * i, 4].axis("off")
    fig.text(
        0.5, 0.005, "curves: one point per η (mean over seeds); bands: 95% CI over seeds of the y value", ha="center"
    )
    fig.subplots_adjust(hspace=0.6, wspace=0.4)
    save_figure(fig, path)


def write(ctx, cfg: Config, m: Measurement, claims: list, matched: dict):
    """Writes the figure, table.md and result.json (``experiments.common.finish``); returns the Outcome.

    ``matched``: ``{policy kind: {comparison: Matched}}`` behind the claims.
    """
    spec, a, meas, policies, timings = m.spec, m.a, m.meas, m.policies, m.timings
    extras = {kind: {k: v._asdict() for k, v in extra.items()} for kind, extra in matched.items()}
    table = _tables(cfg, a, meas, policies)
    _figure(cfg, a, meas, policies, ctx.out / "overshoot.png")
    result = {
        "config": dataclasses.asdict(cfg),
        "method": {"name": "grpo", "beta": spec.beta, "eps_low": spec.eps_low, "eps_high": spec.eps_high},
        "closed_form": a,
        "policies": {k: {"description": p.description, "text": p.text} for k, (_, p) in policies.items()},
        "measured": meas,
        "matched": extras,
        "timings_s": timings,
    }
    lines = [f"Policies: {'; '.join(f'{k}: {p.text}' for k, (_, p) in policies.items())}."]
    for kind, (pcfg, _) in policies.items():
        lines.append(
            f"{kind}: {pcfg.seeds} seeds × η ∈ {{{', '.join(f'{x:g}' for x in pcfg.learning_rates)}}} (SGD × "
            f"{pcfg.sgd_lr_scale:g}); B = {pcfg.num_prompts} groups × G = {pcfg.group_size} completions of "
            f"T = {pcfg.completion_len} tokens per batch; {pcfg.num_batches} consecutive batches with μ = {pcfg.mu} "
            f"inner steps each (state carried; the first {pcfg.burn_in} not measured)."
        )
    lines.append(
        f"GRPO (β = 0, ε_low = {spec.eps_low}, ε_up = {spec.eps_high}); Adam β2 = {cfg.beta2}, ε = {cfg.adam_eps:g}. "
        "Escape after each batch's μ steps: escaped fraction (tokens with A > 0 and s > 1 + ε_up or A < 0 and "
        "s < 1 − ε_low), max excess beyond the bound, travel = Σ Δz over steps taken while beyond the bound per "
        "token (z = sign(A)·log s). Progress per batch: ΔJ (surrogate), KL(π_old‖π) (exact on the tabular policy; "
        "held-out k1 estimate on the transformer), ΔE (exact on the tabular policy; held-out sequence-level IS "
        "estimate on the transformer). Matched comparisons: common levels strictly inside the progress range "
        f"every (optimizer, seed) curve reaches, {cfg.levels} levels, each seed's escape at the first crossing "
        "along its η sweep; paired over seeds, Student-t 95% CI."
    )
    if any(pcfg.kind == "checkpoint" for pcfg, _ in policies.values()):
        lines.append(
            "--model: parts (b) and (c) ran on the checkpoint only; the tabular policy and NNX transformer rows are "
            "skipped (run without --model for them). Its members (η, seed) ran one after another from the "
            "checkpoint's one copy of the parameters (a jitted sampler, the reward on the host, a jitted μ-step "
            "update); every seed's Countdown problems and sample keys are shared by all optimizers and η (paired). "
            "The held-out ΔE and KL are estimated with the same reward on G further completions per prompt."
        )
    lines.append(f"Runtime: {timings['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).")
    return finish(
        ctx,
        NAME,
        "Prop. 3/7: momentum overshoot past the clip region, at matched progress",
        result,
        table,
        claims,
        "overshoot.png",
        notes="\n\n".join(lines),
    )
