"""Scaling: how loss+grad, the decomposition and a train step grow with G and T (time ratios to the base size).

Each kind races all its sizes against each other (interleaved), so each ratio is
measured in one race; per-token < 1 means sublinear growth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jgrpo
from experiments.bench.config import Config
from experiments.bench.harness import Timing, blocking, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ratio, table
from experiments.bench.sections import decomposition, loss, train

__all__ = ["SECTION", "scaled_shapes", "scaling_rows"]


def scaled_shapes(g0: int, t0: int, factors: tuple[int, ...]) -> list[tuple[int, int]]:
    """The base (G, T), then G scaled by each factor, then T scaled by each factor."""
    return [(g0, t0)] + [(g0 * f, t0) for f in factors] + [(g0, t0 * f) for f in factors]


def scaling_rows(times: dict[str, Timing], shapes: list[tuple[int, int]], tokens_of: Callable) -> list[dict]:
    """Time, token count and time per token of every shape relative to the first."""
    base = times[str(shapes[0])].median
    rows = []
    for g, t in shapes:
        med = times[str((g, t))].median
        tok_ratio = tokens_of(g, t) / tokens_of(*shapes[0])
        rows.append(
            {
                "G": g,
                "T": t,
                "time_ratio": med / base,
                "tokens_ratio": tok_ratio,
                "per_token_ratio": med / base / tok_ratio,
            }
        )
    return rows


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Cost of loss+grad, decomposition and a train step vs G and T (ratios to the base size)."""
    out: dict[str, Any] = {}
    race_ = lambda fns: race(fns, rounds=cfg.rounds, budget_s=cfg.budget_s)  # noqa: E731
    # loss + grad (token-mean PPO-clip), B fixed
    b0, g0, t0 = cfg.scale_loss
    f = loss.loss_grad_fn(loss.cases()[0][1])
    shapes = scaled_shapes(g0, t0, cfg.scale_factors)
    fns = {str((g, t)): blocking(f, *loss.batch_of(loss.loss_data(b0, g, t))) for g, t in shapes}
    ctx.log("scaling: loss+grad")
    out["loss_grad"] = {"B": b0, "rows": scaling_rows(race_(fns), shapes, lambda g, t: g * t)}
    # decomposition, same model as the decomposition section
    g0, t0, p = cfg.decomp_group, cfg.decomp_len, cfg.decomp_prompt
    _, graphdef, params = decomposition.model(1, cfg.decomp_model, p + t0 * max((1, *cfg.scale_factors)))
    fns = {}
    shapes = scaled_shapes(g0, t0, cfg.scale_factors)
    for g, t in shapes:
        (decompose, *_), batch, prompt = decomposition.setup(cfg, g, t, graphdef, params, model_logp_old=False)
        fns[str((g, t))] = blocking(decompose, params, batch, prompt)
    ctx.log("scaling: decomposition")
    out["decomposition"] = {"P": p, "rows": scaling_rows(race_(fns), shapes, lambda g, t: g * (p + t))}
    # train step, a smaller model than the train section (compile time)
    b, g0, t0, p = cfg.train_shape
    config, graphdef, params = decomposition.model(2, cfg.scale_train_model, p + t0 * max((1, *cfg.scale_factors)))
    step, opt = train.step_fn(graphdef, jgrpo.methods.get("grpo", beta=0.0))
    opt_state = opt.init(params)
    fns = {}
    shapes = scaled_shapes(g0, t0, cfg.scale_factors)
    for g, t in shapes:
        batch, prompt = train.train_batch(b, g, t, p, cfg.scale_train_model[4])
        fns[str((g, t))] = blocking(step, params, opt_state, batch, prompt)
    ctx.log("scaling: train step")
    out["train_step"] = {
        "B": b,
        "P": p,
        "model": dataclasses.asdict(config),
        "rows": scaling_rows(race_(fns), shapes, lambda g, t: g * (p + t)),
    }
    return out


def render(scaling: dict[str, Any]) -> list[str]:
    lines = ["Cost relative to the first row; time per token < 1 means sublinear.", ""]
    header = ["G", "T", "time ratio", "tokens ratio", "time per token ratio"]
    for kind, s in scaling.items():
        rows = [(r["G"], r["T"], r["time_ratio"], r["tokens_ratio"], r["per_token_ratio"]) for r in s["rows"]]
        lines += [f"{kind}:", "", table(header, rows)]
    return lines


def summary(scaling: dict[str, Any]) -> list[str]:
    parts = []
    for kind, s in scaling.items():
        base = s["rows"][0]
        g_rows = [r for r in s["rows"] if r["T"] == base["T"] and r["G"] > base["G"]]
        t_rows = [r for r in s["rows"] if r["G"] == base["G"] and r["T"] > base["T"]]
        bits = []
        for axis, rows in (("G", g_rows), ("T", t_rows)):
            if rows:
                r = max(rows, key=lambda r: r[axis])
                bits.append(
                    f"{axis} x{r[axis] // base[axis]}: {fmt_ratio(r['tokens_ratio'])}x the tokens, "
                    f"{fmt_ratio(r['time_ratio'])}x the time"
                )
        if bits:
            parts.append(f"{kind} ({'; '.join(bits)})")
    return ["Scaling: " + ", ".join(parts) + "."] if parts else []


SECTION = Section(name="scaling", title="Scaling with G and T", measure=measure, render=render, summary=summary)
