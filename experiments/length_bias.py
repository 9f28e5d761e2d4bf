"""End-to-end GRPO on the arithmetic task: completion lengths per method (the length bias of 1/|o_i|)."""

from __future__ import annotations

import math

import jax
import numpy as np

from experiments.common import Context, finish, markdown_table, new_figure, save_figure
from experiments.policy import setup

MARGIN = 0.25  # tokens; a smaller difference of mean lengths is treated as inconclusive

RUNS = (
    ("grpo", ()),
    ("dr_grpo", ()),
    ("dapo", ()),
    ("grpo+debias", (("prefix_debias", True),)),
)


def _config(scale: str, method: str, overrides: tuple, seed: int):
    from jgrpo.train import TrainConfig

    s = setup(scale)
    quick = scale != "paper"
    return TrainConfig(
        task=s.task,
        model=s.model,
        method=method.split("+")[0],
        method_overrides=(("beta", 0.0),) + overrides,  # compare the weightings alone
        group_size=8 if quick else 16,
        prompts_per_step=8 if quick else 64,
        inner_steps=2 if quick else 4,
        learning_rate=3e-4 if quick else 1e-4,
        steps=40 if quick else 300,
        seed=seed,
        warmup_steps=s.warmup_steps,
        warmup_batch=s.warmup_batch,
    )


def _tail_mean(values, frac=1 / 3):
    v = np.asarray(values, np.float64)
    v = v[-max(1, int(math.ceil(len(v) * frac))) :]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def run(ctx: Context):
    from jgrpo.train import train

    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    histories = {}
    for k, (label, overrides) in enumerate(RUNS):
        config = _config(ctx.scale, label, overrides, ctx.seed)

        def on_step(step, metrics, k=k, label=label, steps=config.steps):
            ctx.progress((k + (step + 1) / steps) / len(RUNS), f"{label} step {step + 1}/{steps}")

        result = train(config, on_step=on_step, compiler_options=options)
        histories[label] = result.history
    keys = ("accuracy", "reward_mean", "length_correct", "length_incorrect", "length_mean", "filler_mean")
    curves = {label: {k: [float(h[k]) for h in hist] for k in keys} for label, hist in histories.items()}
    rows, summary = [], {}
    for label, c in curves.items():
        rec = {k: _tail_mean(c[k]) for k in keys}
        rec["accuracy_first"] = c["accuracy"][0]
        summary[label] = rec
        rows.append(
            (
                label,
                rec["accuracy_first"],
                rec["accuracy"],
                rec["length_correct"],
                rec["length_incorrect"],
                rec["filler_mean"],
            )
        )
    fig, axes = new_figure(3, 1, size=(4.6, 3.4))
    for label, c in curves.items():
        steps = np.arange(len(c["accuracy"]))
        axes[0, 0].plot(steps, c["accuracy"], label=label)
        axes[0, 1].plot(steps, c["length_correct"], label=label)
        axes[0, 2].plot(steps, c["length_incorrect"], label=label)
    for ax, title in zip(
        axes[0], ("accuracy", "length of correct completions", "length of incorrect completions"), strict=True
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("outer step")
        ax.legend(fontsize=7)
    save_figure(fig, ctx.out / "length_bias.png")
    g, d = summary["grpo"], summary["dr_grpo"]
    gap = g["length_incorrect"] - d["length_incorrect"]
    claims = [
        (
            "1/|o_i| (grpo) lets incorrect completions grow longer than constant weights (dr_grpo)",
            f"incorrect length, last third: grpo {g['length_incorrect']:.2f} vs dr_grpo {d['length_incorrect']:.2f}",
            # pre-stated margin: a gap within +-0.25 token is inconclusive at this scale (one seed)
            (None if abs(gap) <= MARGIN else bool(gap > 0)) if math.isfinite(gap) else None,
        ),
        (
            "prefix-debiased grpo keeps grpo's accuracy",
            f"accuracy, last third: {summary['grpo+debias']['accuracy']:.2f} vs grpo {g['accuracy']:.2f}",
            None,
        ),
    ]
    first = _config(ctx.scale, "grpo", (), ctx.seed)
    notes = (
        f"{first.steps} outer steps of {first.prompts_per_step} prompts x {first.group_size} completions, mu = "
        f"{first.inner_steps}, AdamW lr {first.learning_rate}, beta = 0 (weightings compared alone), the same seed "
        "(same warm-up, same first batch) for every method. One seed: a difference of mean incorrect length within "
        f"+-{MARGIN} token is reported as inconclusive (n/a)."
    )
    table = markdown_table(
        ["method", "accuracy (step 0)", "accuracy (last third)", "len correct", "len incorrect", "fillers"], rows
    )
    return finish(
        ctx,
        "length_bias",
        "Length bias in end-to-end training",
        {"curves": curves, "summary": summary},
        table,
        claims,
        "length_bias.png",
        notes,
    )
