"""The reward_scaling experiment's report: the map tables, the figure and the notes; the only place with I/O."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from analysis import reward_scale as rs
from experiments.common import Context, finish, markdown_table, new_figure, save_figure
from experiments.reward_scaling.cells import (
    BROKEN_DECADES,
    INVARIANT_DECADES,
    LOG_RATIO_RANGE,
    Cell,
    cell_class,
    pooled_log_ratio,
    seed_log_ratio,
)
from experiments.reward_scaling.config import CPPO_STD, NAME, Config
from experiments.reward_scaling.measure import Measurement
from experiments.shared.seeds import band
from experiments.stats import mean_ci

ZERO_PLOTTED_AT = 1e-9  # log-scale figures: where an exact 0 is drawn

_MARK = {"invariant": "✓", "between": "~", "broken": "✗", "no reference": "?"}


def _groups(cells):
    out: dict[tuple[str, str], dict[str, dict[str, Cell]]] = {}
    for c in cells:
        out.setdefault((c.policy, c.dtype), {}).setdefault(c.preset, {})[c.setting] = c
    return out


def _degree_text(d: int | None) -> str:
    return "none" if d is None else str(d)


def _preset_tables(rows, cells, fmt) -> list[str]:
    """One Markdown table per (policy, dtype): a row per preset (with its reward degree), a column per setting,
    each cell ``fmt(cell)`` ("—" where not run)."""
    out = []
    for (policy, dtype), by_preset in _groups(cells).items():
        header = ["preset (d)"] + [s.label for s in rows]
        trows = []
        for name, by_setting in by_preset.items():
            row = [f"{name} ({_degree_text(next(iter(by_setting.values())).degree)})"]
            row += [fmt(by_setting[s.key]) if s.key in by_setting else "—" for s in rows]
            trows.append(row)
        out += [f"#### {policy}, {dtype}", "", markdown_table(header, trows)]
    return out


def _map_tables(cfg, rows, cells) -> str:
    real = cfg.realistic_phis
    cols = [list(cfg.scales).index(p) for p in real]
    text = [
        "### Map: log10(max deviation / max noise floor) over data sets and φ ≠ 1",
        "",
        f"✓ invariant (≤ {INVARIANT_DECADES:g}, and the median data set ≤ {INVARIANT_DECADES:g} decade above its own "
        f"floor), ✗ broken (every data set ≥ {BROKEN_DECADES:g} decades above its own floor), ~ between; 'div' = a "
        "φ-run diverged (counted as 12); −3: deviation exactly 0; d = the preset's reward degree. Every cell is "
        "shown, the failing ones too.",
        "",
    ]

    def ratio_cell(c: Cell) -> str:
        r = pooled_log_ratio(c)
        val = "?" if math.isnan(r) else f"{r:.1f}"
        return f"{_MARK[cell_class(c)]} " + ("div " if np.any(np.isinf(c.dev)) else "") + val

    text += _preset_tables(rows, cells, ratio_cell)
    text += [
        f"### How far: mean over data sets of the relative deviation at φ = {' / '.join(f'{p:g}' for p in real)}",
        "",
        "The size of the effect in units of the distance the φ = 1 run travels (1 = as far as the whole run).",
        "",
    ]

    def size_cell(c: Cell) -> str:
        return " / ".join("div" if not np.isfinite(v) else f"{v:.1e}" for v in np.mean(c.dev[:, cols], axis=0))

    text += _preset_tables(rows, cells, size_cell)
    text += ["### Noise floor: median over presets and data sets (its ulp-run and reordering parts)", ""]
    header = ["policy, dtype"] + [s.label for s in rows]
    trows = []
    for (policy, dtype), by_preset in _groups(cells).items():
        row = [f"{policy}, {dtype}"]
        for s in rows:
            cs = [bs[s.key] for bs in by_preset.values() if s.key in bs]
            if not cs:
                row.append("—")
                continue
            fl = np.median(np.concatenate([c.floor for c in cs]))
            ulp = np.median(np.concatenate([c.ulp_floor for c in cs if c.ulp_floor is not None] or [[np.nan]]))
            reo = np.median(np.concatenate([c.reorder_floor for c in cs if c.reorder_floor is not None] or [[np.nan]]))
            row.append(f"{fl:.0e} ({ulp:.0e} / {reo:.0e})")
        trows.append(row)
    text += [markdown_table(header, trows)]
    return "\n".join(text)


def _figure(ctx, cfg, rows, cells) -> None:
    groups = _groups(cells)
    heat = [k for k in (("tabular", "float32"), ("tabular", "bfloat16")) if k in groups]
    heat += [k for k in groups if k[0] == "transformer"][:1]
    curves = [n for n in ("dr_grpo", "grpo", "cppo") if n in groups.get(("tabular", "float32"), {})]
    ncols = max(len(heat), len(curves), 1)
    fig, axes = new_figure(ncols=ncols, nrows=2, size=(6.2, 4.6))
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, key in zip(axes[0], heat, strict=False):
        ax.set_visible(True)
        by_preset = groups[key]
        names = list(by_preset)
        z = np.full((len(names), len(rows)), np.nan)
        marks = np.full(z.shape, "", dtype=object)
        for i, n in enumerate(names):
            for j, s in enumerate(rows):
                if s.key in by_preset[n]:
                    z[i, j] = pooled_log_ratio(by_preset[n][s.key])
                    marks[i, j] = _MARK[cell_class(by_preset[n][s.key])]
        im = ax.imshow(z, aspect="auto", cmap="viridis", vmin=LOG_RATIO_RANGE[0], vmax=9.0)
        ax.set_xticks(range(len(rows)), [s.label for s in rows], rotation=70, fontsize=6, ha="right")
        ax.set_yticks(range(len(names)), [f"{n} (d={_degree_text(next(iter(by_preset[n].values())).degree)})"
                                          for n in names], fontsize=6)  # fmt: skip
        for (i, j), v in np.ndenumerate(z):
            if np.isfinite(v):
                ax.text(j, i, marks[i, j], ha="center", va="center", fontsize=6, color="w" if v < 4 else "k")
        ax.set_xlabel("optimizer setting")
        ax.set_ylabel("preset (reward degree d)")
        ax.set_title(f"{key[0]}, {key[1]}: log10(max deviation / max noise floor)", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="log10(max dev / max floor)")
    show = ("adamw", f"eps_{1e-8:g}", f"eps_{1e-5:g}", "beta", "coupled_l2", "sgd")
    phis = np.asarray(cfg.scales)
    order = np.argsort(phis)
    for ax, name in zip(axes[1], curves, strict=False):
        ax.set_visible(True)
        by_setting = groups[("tabular", "float32")][name]
        for key in show:
            if key not in by_setting:
                continue
            c = by_setting[key]
            logd = np.log10(np.clip(c.dev, ZERO_PLOTTED_AT, 1e6))  # [D, K]
            mean = np.mean(logd, axis=0)
            _, lo, hi = band(logd)
            label = next(s.label for s in rows if s.key == key)
            (line,) = ax.plot(phis[order], 10 ** mean[order], marker="o", ms=3, label=label)
            ax.fill_between(phis[order], 10 ** np.asarray(lo)[order], 10 ** np.asarray(hi)[order],
                            color=line.get_color(), alpha=0.2)  # fmt: skip
        fl = np.log10(np.maximum(by_setting["adamw"].floor, ZERO_PLOTTED_AT))
        ci = mean_ci(fl)
        ax.axhspan(10**ci.lo, 10**ci.hi, color="grey", alpha=0.3, label="noise floor (AdamW ε→0), 95% CI")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"reward scale φ (an exact 0 is plotted at {ZERO_PLOTTED_AT:g})")
        ax.set_ylabel("max_t ‖θ_t(φ) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖")
        d = next(iter(by_setting.values())).degree
        ax.set_title(
            f"tabular float32 {name} (d = {_degree_text(d)}): deviation vs φ (mean of log, 95% CI)", fontsize=8
        )
        ax.legend(fontsize=6)
    fig.suptitle(f"Prop. 2: reward-scale invariance (μ = {cfg.num_steps} steps, {cfg.seeds} seeds per reward kind)")
    fig.subplots_adjust(hspace=0.9, wspace=0.6)
    save_figure(fig, ctx.out / "reward_scaling.png")


def _cell_json(c: Cell) -> dict:
    return {
        "policy": c.policy,
        "dtype": c.dtype,
        "preset": c.preset,
        "degree": c.degree,
        "setting": c.setting,
        "kinds": list(c.kinds),
        "dev": c.dev,
        "floor": c.floor,
        "ulp_floor": c.ulp_floor,
        "reorder_floor": c.reorder_floor,
        "rms_sqrt_v": c.rms_sqrt_v,
        "displacement": c.displacement,
        "log10_ratio": pooled_log_ratio(c),
        "log10_ratio_per_data_set": seed_log_ratio(c),
        "class": cell_class(c),
    }


def write(ctx: Context, cfg: Config, m: Measurement, claims: list):
    """Writes the figure, table.md and result.json; returns the Outcome."""
    rows, specs, cells, model, timings = m
    table = _map_tables(cfg, rows, cells)
    _figure(ctx, cfg, rows, cells)
    cppo_std = specs.get(CPPO_STD) is not None
    result = {
        "config": dataclasses.asdict(cfg),
        "phis": list(cfg.scales),
        "settings": [dataclasses.asdict(s) for s in rows],
        "degrees": {n: (None if s is None else rs.reward_degree(s)) for n, s in specs.items()},
        "cppo_standardised_available": cppo_std,
        "entropy_thresholds": {
            n: s.entropy_threshold for n, s in specs.items() if s is not None and s.entropy_threshold
        },
        "cells": [_cell_json(c) for c in cells],
        "transformer_model": model,
        "timings_s": timings,
    }
    notes = (
        f"Tabular policy: V = {cfg.vocab}, T = {cfg.completion_len}, B = {cfg.num_prompts} prompts × G = "
        f"{cfg.group_size}; random tokens, lengths and θ_0 per data set; {cfg.seeds} seeds × reward kinds "
        f"{cfg.reward_kinds} (binary = Bernoulli(1/2), uniform in [0, 1)); logp_ref from a perturbed table; "
        f"μ = {cfg.num_steps} steps on the fixed batch from π_old = θ_0. AdamW η = {cfg.adam_lr:g} (β1 0.9, "
        f"β2 0.999, ε_root 0), SGD η = {cfg.sgd_lr:g}; 'ε → 0' is ε = {cfg.eps_limit:g}. β is a traced override of "
        "the KL coefficient; presets without a regularizer get a k3 KL for the β rows (β = 0 rows are the presets "
        "themselves). bf16 = parameters (and Adam's moments) stored in bfloat16; the tabular policy computes its "
        "log-softmax in float32, the transformer computes in bf16. "
        f"bf16 runs: {', '.join(cfg.bf16_presets)}"
        + (" (one preset per reward degree at this scale; --scale paper runs every preset)" if ctx.quick else "")
        + ".\n\n"
        + "".join(
            f"{n}'s entropy filter δ_i: threshold {s.entropy_threshold:.3f} nats, the median completion-mean entropy "
            "of the tabular data sets (the GTPO paper's ln 2 is for a language model's entropies; here it would "
            "filter out every completion and leave no update to test).\n\n"
            for n, s in specs.items()
            if s is not None and s.entropy_threshold is not None
        )
        + "Noise floor: the runs φ = 1 ± 1 ulp and φ = 1 on reordered batches compute the reference objective up to "
        "rounding. With ε → 0 their deviation is often ~1e-7, but where a gradient coordinate is exactly 0 in exact "
        "arithmetic (e.g. cancelling contributions of completions with opposite advantages on a shared context, "
        "Prop. 1) its float32 residue (~1e-11) is turned by Adam into a ±η step whose sign depends on the rounding: "
        "then rounding alone moves the trajectory by 10-30 % of its displacement. The ulp runs reproduce this; "
        "reordering alone often does not, which is why both are part of the floor. A larger ε (1e-8) damps those "
        "residues but is itself not negligible against small real gradients (see the ε claims).\n\n"
        + (
            "CPPO with pruning on standardised advantages: available and run as `cppo_std`."
            if cppo_std
            else "CPPO with pruning on standardised advantages |A/σ| > γ: not in this jgrpo (no such MethodSpec "
            "option on main yet), so only Table 1's centred pruning is measured; `cppo_std` runs automatically "
            "once the option exists (its reward degree is 0)."
        )
    )
    if model is not None and cfg.model is not None:
        notes += (
            f"\n\nCheckpoint rows: {model['description']} ({cfg.model}); B = {cfg.tf_num_prompts} Countdown prompts × "
            f"G = {cfg.tf_group_size} completions of T ≤ {cfg.tf_completion_len} tokens sampled from it; synthetic "
            f"reward kinds {cfg.tf_reward_kinds}; AdamW η = {cfg.tf_adam_lr:g}, SGD η = {cfg.tf_sgd_lr:g}; presets "
            f"{', '.join(cfg.tf_presets)}; dtypes {', '.join(cfg.tf_dtypes)}."
        )
    elif model is not None:
        notes += (
            f"\n\nTransformer: {cfg.tf_model} NNX ({model['n_layers']} layers, d_model {model['d_model']}, "
            f"V = {cfg.tf_vocab}), B = {cfg.tf_num_prompts} × G = {cfg.tf_group_size} random completions of "
            f"T ≤ {cfg.tf_completion_len} after a P = {cfg.tf_prompt_len} prompt; reward kinds {cfg.tf_reward_kinds}; "
            f"AdamW η = {cfg.tf_adam_lr:g}, SGD η = {cfg.tf_sgd_lr:g}; presets {', '.join(cfg.tf_presets)}; dtypes "
            f"{', '.join(cfg.tf_dtypes)}."
        )
    notes += "\n\nRuntime: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + "."
    return finish(
        ctx,
        NAME,
        "Prop. 2 in full: reward-scale invariance of every preset × optimizer × β × ε × λ × dtype",
        result,
        table,
        claims,
        "reward_scaling.png",
        notes=notes,
    )
