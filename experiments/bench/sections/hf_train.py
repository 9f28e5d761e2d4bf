"""A Qwen2.5-shaped model (small) through the real train step and the decomposition, against the matmul rate.

The model is a :class:`jgrpo.models.ModelConfig` built from Qwen2.5-0.5B's config with the sizes
shrunk (q/k/v biases, GQA, tied embeddings; ``Config.hf_model``), random weights, float32. Timed
interleaved in one process with the same reference matmul as the train section (a jitted float32
``n x n`` ``jnp.matmul``, n = ``Config.matmul_n`` on a CPU, at least 8192 on an accelerator):

* the train step :func:`jgrpo.train.make_train_step` with :func:`jgrpo.models.logprob_fn` (shared
  prompt, the default), the GRPO loss (−J of Eq. 1), its gradient and an AdamW update;
* :func:`analysis.prefix.decompose` (Prop. 1) of the same batch with ``prompt=`` a
  :class:`jgrpo.models.Prompt` (left-padded), its truncation window from the batch.

FLOP/s: analytic counts (3 x forward matmul FLOPs of the rows computed: B P prompt rows over P keys,
B G T completion rows over P + T keys, the output layer on the B G T scored positions; decompose adds
its window) divided by the measured time and by the matmul's FLOP/s. XLA's cost-analysis count of
decompose is recorded as a diagnostic only (see :data:`XLA_NOTE`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
import jgrpo.models as M
from analysis import prefix
from experiments.bench import env
from experiments.bench.config import Config
from experiments.bench.goals import goal
from experiments.bench.harness import blocking, cost, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ratio, table
from experiments.bench.sections.decomposition import synthetic_logp_old
from experiments.bench.sections.share import hf_config
from experiments.bench.sections.train import reference_matmul
from jgrpo import train as jtrain

__all__ = ["SECTION", "XLA_NOTE", "shared_step_flops"]

XLA_NOTE = (
    "XLA's cost analysis counts a while-loop body once: the layers run as one lax.scan, so its count holds one "
    "of the L layers (a diagnostic, not the FLOPs done); the fractions use the analytic count"
)


def shared_step_flops(config: M.ModelConfig, b: int, g: int, t: int, p: int) -> float:
    """3 x forward matmul FLOPs of the shared-prompt log-probs (``ModelConfig.flops_per_token``, full masked keys)."""
    head = 2 * config.hidden_size * config.vocab_size
    fwd = b * p * (config.flops_per_token(p) - head) + b * g * t * (config.flops_per_token(p + t) - head)
    return 3.0 * (fwd + b * g * t * head)


def _batch(config: M.ModelConfig, b: int, g: int, t: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    v = config.vocab_size
    tokens = rng.integers(0, v, size=(b, g, t)).astype(np.int32)
    stem = min(8, t // 2)
    tokens[:, :, :stem] = tokens[:, :1, :stem]  # a shared prefix in every group (Prop. 1 has work to do)
    prompt = rng.integers(0, v, size=(b, p)).astype(np.int32)
    prompt_mask = np.ones((b, p), np.int32)
    prompt_mask[:, : p // 4] = 0  # left padding
    mask = (np.arange(t) < rng.integers(t // 2, t + 1, size=(b, g, 1))).astype(np.float32)
    rewards = rng.integers(0, 2, size=(b, g)).astype(np.float32)
    rewards[:, :2] = (0.0, 1.0)
    return tokens, jnp.asarray(prompt), jnp.asarray(prompt_mask), mask, rewards


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    b, g, t, p = cfg.hf_shape
    config = hf_config(cfg.hf_model)
    params = M.init_params(config, jax.random.key(1))
    tokens, prompt, prompt_mask, mask, rewards = _batch(config, b, g, t, p)
    logprob = M.logprob_fn(M.model_fn(config))  # the default: shared prompt
    logp_old = synthetic_logp_old(tokens.shape, config.vocab_size)  # random init: near-uniform (saves a compile)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=rewards, tokens=tokens)
    spec = jgrpo.methods.get("grpo", beta=0.0)
    opt = optax.adamw(1e-4)
    opt_state = opt.init(params)
    step = jtrain.make_train_step(logprob, spec, opt, donate=False)
    tree = prefix.prefix_tree(tokens, mask)
    depth = prefix.truncation_depth(tree)
    rows = prefix.truncation_rows(tree, depth=depth)
    full_prompt = M.Prompt(prompt, prompt_mask)

    @jax.jit
    def decomposition(params, batch, prompt):
        d = prefix.decompose(spec, logprob, params, batch, prompt=prompt, depth=depth, rows=rows)
        return d.total, d.shared, d.divergent

    n = cfg.matmul_n if env.backend() == "cpu" else max(cfg.matmul_n, 8192)
    ka, kb = jax.random.split(jax.random.key(4))
    ma, mb = jax.random.normal(ka, (n, n), jnp.float32), jax.random.normal(kb, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    ctx.log("hf_train: compile")
    new_batch = jnp.asarray(True)
    dec_compiled = decomposition.lower(params, batch, full_prompt).compile()
    xla_dec = cost(dec_compiled)
    ctx.log("hf_train: timing")
    times = race(
        {
            "train_step": blocking(step, params, opt_state, batch, prompt, prompt_mask, new_batch),
            "decompose": blocking(dec_compiled, params, batch, full_prompt),
            "matmul": blocking(matmul, ma, mb),
        },
        rounds=cfg.rounds,
        budget_s=cfg.budget_s,
    )
    mm = 2.0 * n**3 / times["matmul"].median
    analytic = shared_step_flops(config, b, g, t, p)
    # decompose: the total's forward + VJP over the batch (as the step) and the window's forward + 1 VJP
    # (one cotangent: the shared part) over [B, rows, depth]
    analytic_dec = analytic + shared_step_flops(config, b, min(rows, g), min(depth, t), p)
    step_s, dec_s = times["train_step"].median, times["decompose"].median
    fx_dec = xla_dec.get("flops")
    return {
        "model": dataclasses.asdict(config),
        "params": config.num_params,
        "shape": {"B": b, "G": g, "T": t, "P": p, "depth": int(depth), "rows": int(rows)},
        "share_prompt": True,
        "train_step_s": step_s,
        "decompose_s": dec_s,
        "matmul_n": n,
        "matmul_s": times["matmul"].median,
        "matmul_GFLOPs": mm / 1e9,
        "reference": reference_matmul(n),
        "flops_step_analytic": analytic,
        "flops_decompose_xla": fx_dec,
        "flops_decompose_analytic": analytic_dec,
        "step_fraction_analytic": analytic / step_s / mm,
        "decompose_fraction_analytic": analytic_dec / dec_s / mm,
        "xla_note": XLA_NOTE,
        "decompose_per_step": dec_s / step_s,
        "samples": {k: v.samples for k, v in times.items()},
    }


def _key(res: dict[str, Any]) -> str:
    m, s = res["model"], res["shape"]
    return (
        f"Qwen2.5-shaped hidden={m['hidden_size']}, layers={m['num_layers']}, heads={m['num_heads']}/"
        f"{m['num_kv_heads']}, vocab={m['vocab_size']}; B={s['B']}, G={s['G']}, P={s['P']}, T={s['T']}"
    )


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        goal(
            "train_vs_matmul",
            _key(res),
            res["step_fraction_analytic"],
            what=f"{_key(res)}: train-step FLOP/s (analytic, shared prompt) / reference matmul FLOP/s "
            f"({res['reference']['what']} on {res['reference']['device']})",
            also={"decompose": res["decompose_fraction_analytic"]},
        )
    ]


def render(res: dict[str, Any]) -> list[str]:
    gf = lambda x: (x or 0.0) / 1e9  # noqa: E731
    return [
        f"{_key(res)} ({res['params']} params, random weights, float32), log-probs with the shared prompt; "
        f"decompose's window depth {res['shape']['depth']}. Reference: {res['reference']['what']} on "
        f"{res['reference']['device']}, measured in this run interleaved with both.",
        "",
        table(
            ["program", "s", "GFLOP analytic", "GFLOP XLA-counted", "fraction of the matmul's FLOP/s (analytic)"],
            [
                ("train step", res["train_step_s"], gf(res["flops_step_analytic"]), "—", res["step_fraction_analytic"]),
                (
                    "decompose",
                    res["decompose_s"],
                    gf(res["flops_decompose_analytic"]),
                    gf(res["flops_decompose_xla"]),
                    res["decompose_fraction_analytic"],
                ),
                ("matmul", res["matmul_s"], 2 * res["matmul_n"] ** 3 / 1e9, "—", 1.0),
            ],
        ),
        f"Analytic: 3 x forward matmul FLOPs of the rows computed (ModelConfig.flops_per_token; decompose: the "
        f"batch's forward + VJP and the window's [B, {res['shape']['rows']}, {res['shape']['depth']}] forward + one "
        f"VJP). {res['xla_note']}.",
        "",
        f"decompose / train step: {fmt_ratio(res['decompose_per_step'])}.",
        "",
    ]


def summary(res: dict[str, Any]) -> list[str]:
    return [
        f"{_key(res)}: train step at {fmt_ratio(res['step_fraction_analytic'])} of the reference matmul's FLOP/s, "
        f"decompose at {fmt_ratio(res['decompose_fraction_analytic'])} (analytic FLOP counts; "
        f"{fmt_ratio(res['decompose_per_step'])} train steps per decomposition)."
    ]


SECTION = Section(
    name="hf_train",
    title="Qwen2.5-shaped train step and decomposition",
    measure=measure,
    goals=goals,
    render=render,
    summary=summary,
)
