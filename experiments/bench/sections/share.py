"""Shared-prompt compute: log-prob + gradient with the prompt run once per group against G copies of it.

Both paths are :func:`jgrpo.models.logprob_fn` of one Hugging Face-architecture model
(Qwen2 layout: q/k/v biases, GQA, tied embeddings; small: a few layers, narrow), the
GRPO loss (−J of Eq. 1) on top and its gradient w.r.t. the parameters, jitted, timed
interleaved in one process (:func:`experiments.bench.harness.race`). ``share_prompt=True``
runs the B prompts once and the B G completions over the broadcast prompt K/V:
``B (P + G T)`` token rows; ``share_prompt=False`` runs the B G sequences ``prompt +
completion``: ``B G (P + T)`` rows. The theoretical ratio of the work is ``G (P + T) / (P + G T)``
(4.0 at P = 1024, T = 256, G = 16); XLA's cost analysis counts the FLOPs of both compiled
programs (attention, the output layer on the T scored positions, the same in both, and the
elementwise work included, so its ratio differs from the theory). XLA counts a while-loop body
once: the layers run as one ``lax.scan``, so the count holds one layer of the L (the same for both
paths) next to the output layer; the FLOP ratio is that of one layer plus the scoring. The goal:
wall ratio ≥ 0.7 x the theoretical ratio.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
import jgrpo.models as M
from experiments.bench.config import Config
from experiments.bench.goals import goal
from experiments.bench.harness import blocking, cost, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ratio, table
from experiments.bench.sections.decomposition import synthetic_logp_old

__all__ = ["SECTION", "hf_config", "ratios", "theory_ratio"]


def hf_config(dims: tuple[int, int, int, int, int, int]) -> M.ModelConfig:
    """A Qwen2-layout :class:`jgrpo.models.ModelConfig` of ``dims = (hidden, heads, kv_heads, layers, mlp, vocab)``.

    q/k/v biases, grouped-query attention and tied embeddings as Qwen2.5-0.5B, float32.
    """
    d, heads, kv_heads, layers, mlp, vocab = dims
    return M.ModelConfig.qwen2_5_0_5b(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=d // heads,
        dtype="float32",
    )


def theory_ratio(g: int, t: int, p: int) -> float:
    """``G (P + T) / (P + G T)``: token rows of the G-copies path over the shared path's (per prompt)."""
    return g * (p + t) / (p + g * t)


def ratios(unshared_s: float, shared_s: float, flops_unshared: float | None, flops_shared: float | None, theory):
    """(wall ratio, XLA FLOP ratio or None, wall ratio / theoretical ratio): the goal's measured value is the last."""
    wall = unshared_s / shared_s
    flops = flops_unshared / flops_shared if flops_unshared and flops_shared else None
    return wall, flops, wall / theory


def _inputs(config: M.ModelConfig, b: int, g: int, t: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    v = config.vocab_size
    tokens = jnp.asarray(rng.integers(0, v, size=(b, g, t)), jnp.int32)
    prompt = jnp.asarray(rng.integers(0, v, size=(b, p)), jnp.int32)
    prompt_mask = np.ones((b, p), np.int32)
    prompt_mask[:, : p // 8] = 0  # left padding: 1/8 of each prompt
    mask = (np.arange(t) < rng.integers(t // 2, t + 1, size=(b, g, 1))).astype(np.float32)
    rewards = rng.integers(0, 2, size=(b, g)).astype(np.float32)
    rewards[:, :2] = (0.0, 1.0)
    return tokens, prompt, jnp.asarray(prompt_mask), jnp.asarray(mask), jnp.asarray(rewards)


def _loss_grad(config: M.ModelConfig, share: bool, spec: jgrpo.MethodSpec):
    logprob = M.logprob_fn(M.model_fn(config), share_prompt=share)

    @jax.jit
    def f(params, batch, prompt, prompt_mask):
        return jax.value_and_grad(lambda q: jgrpo.loss(spec, logprob(q, batch.tokens, prompt, prompt_mask), batch)[0])(
            params
        )

    return f


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    b, g, t, p = cfg.share_shape
    config = hf_config(cfg.share_model)
    params = M.init_params(config, jax.random.key(0))
    tokens, prompt, prompt_mask, mask, rewards = _inputs(config, b, g, t, p)
    spec = jgrpo.methods.get("grpo", beta=0.0)
    logp_old = synthetic_logp_old(tokens.shape, config.vocab_size)  # random init: near-uniform (saves a compile)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=rewards, tokens=tokens)
    ctx.log("share: compile")
    compiled = {
        name: _loss_grad(config, share, spec).lower(params, batch, prompt, prompt_mask).compile()
        for name, share in (("shared", True), ("unshared", False))
    }
    xla = {name: cost(c) for name, c in compiled.items()}
    (va, ga), (vb, gb) = (compiled[n](params, batch, prompt, prompt_mask) for n in ("shared", "unshared"))
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True))
    den = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(gb))
    ctx.log("share: timing")
    times = race(
        {n: blocking(c, params, batch, prompt, prompt_mask) for n, c in compiled.items()},
        rounds=max(cfg.rounds, 4),  # at least 4 interleaved rounds whatever the time budget
        budget_s=math.inf,
        min_sample_s=0.0,
    )
    theory = theory_ratio(g, t, p)
    wall, flop_ratio, of_theory = ratios(
        times["unshared"].median,
        times["shared"].median,
        xla["unshared"].get("flops"),
        xla["shared"].get("flops"),
        theory,
    )
    return {
        "model": dataclasses.asdict(config),
        "params": config.num_params,
        "shape": {"B": b, "G": g, "T": t, "P": p},
        "what": "value and gradient of the GRPO loss through jgrpo.models.logprob_fn (jitted, float32)",
        "shared_s": times["shared"].median,
        "unshared_s": times["unshared"].median,
        "rounds": len(times["shared"].samples),
        "flops_shared_xla": xla["shared"].get("flops"),
        "flops_unshared_xla": xla["unshared"].get("flops"),
        "flop_ratio_xla": flop_ratio,
        "flop_ratio_theory": theory,
        "wall_ratio": wall,
        "wall_over_theory": of_theory,
        "loss_abs_diff": abs(float(va) - float(vb)),
        "grad_rel_diff": num / max(den, 1e-30),
        "samples": {k: v.samples for k, v in times.items()},
    }


def _key(res: dict[str, Any]) -> str:
    s, m = res["shape"], res["model"]
    return f"P={s['P']}, T={s['T']}, G={s['G']}, B={s['B']}, hidden={m['hidden_size']}, layers={m['num_layers']}"


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        goal(
            "share_vs_theory",
            _key(res),
            res["wall_over_theory"],
            what=f"{_key(res)}: (G-copies time / shared-prompt time) / (G (P + T) / (P + G T) = "
            f"{res['flop_ratio_theory']:.3g})",
            also={"wall_ratio": res["wall_ratio"], "flop_ratio_xla": res["flop_ratio_xla"] or float("nan")},
        )
    ]


def render(res: dict[str, Any]) -> list[str]:
    gf = [(res[k] or 0.0) / 1e9 for k in ("flops_unshared_xla", "flops_shared_xla")]
    return [
        f"{_key(res)} ({res['params']} params, Qwen2 layout): {res['what']}, the prompt once per group (shared) "
        f"against G copies of it. Median of {res['rounds']} interleaved rounds. Same loss to "
        f"{res['loss_abs_diff']:.1e} (absolute), same gradient to {res['grad_rel_diff']:.1e} (max relative). "
        "XLA's count holds the layer scan's body once (one layer of the L, in both paths) and the output layer.",
        "",
        table(
            [
                "G-copies s",
                "shared s",
                "wall ratio",
                "XLA GFLOP G-copies / shared",
                "XLA FLOP ratio",
                "theory G(P+T)/(P+GT)",
                "wall ratio / theory",
            ],
            [
                (
                    res["unshared_s"],
                    res["shared_s"],
                    res["wall_ratio"],
                    f"{gf[0]:.3g} / {gf[1]:.3g}",
                    res["flop_ratio_xla"],
                    res["flop_ratio_theory"],
                    res["wall_over_theory"],
                )
            ],
        ),
    ]


def summary(res: dict[str, Any]) -> list[str]:
    return [
        f"Shared-prompt log-prob + gradient ({_key(res)}): {fmt_ratio(res['wall_ratio'])} faster than G copies of "
        f"the prompt (XLA-counted FLOPs {fmt_ratio(res['flop_ratio_xla'])} fewer, theory "
        f"{res['flop_ratio_theory']:.3g}x): {res['wall_over_theory']:.2f} of the theoretical ratio."
    ]


SECTION = Section(
    name="share", title="Shared-prompt compute", measure=measure, goals=goals, render=render, summary=summary
)
