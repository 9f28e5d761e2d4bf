"""Training step: FLOP/s of one GRPO inner step (forward, backward, AdamW) against a reference matmul's FLOP/s.

The reference is a jitted float32 ``n x n @ n x n`` ``jnp.matmul`` at jax's default
matmul precision, timed interleaved with the step in the same run on the same
device (n = ``Config.matmul_n`` on a CPU, at least 8192 on an accelerator). It is
what this device reaches on the easiest dense workload here, not its datasheet
peak; the result records which device and which matmul.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from experiments.bench import env
from experiments.bench.config import Config
from experiments.bench.goals import GOALS, goal
from experiments.bench.harness import blocking, cost, op_profile, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ops, fmt_ratio, table
from experiments.bench.sections.decomposition import model, synthetic_logp_old
from jgrpo.policies import nnx_logprob_fn

__all__ = ["SECTION", "step_fn", "train_batch", "train_flops"]


def train_flops(dims: tuple[int, int, int, int, int], n_seq: int, length: int) -> float:
    """Analytic FLOPs of forward + backward: 6 x matmul params x tokens + attention 12 x layers x N L^2 d.

    Matmul parameters: per layer qkv (3 d^2), output projection (d^2), MLP (2 d d_ff),
    plus the output head (d V), applied at every one of the N x L positions.
    Attention: QK^T and AV, 2 x 2 N L^2 d per layer forward (the full masked L x L
    matrices, as computed), times 3 for forward + backward. Elementwise work,
    softmaxes, LayerNorms and the optimizer update are not counted.
    """
    d, _, layers, d_ff, vocab = dims
    matmul_params = layers * (4 * d * d + 2 * d * d_ff) + d * vocab
    tokens = n_seq * length
    return 6.0 * matmul_params * tokens + 12.0 * layers * n_seq * length * length * d


@functools.cache
def step_fn(graphdef: Any, spec: jgrpo.MethodSpec):
    """(jitted step, optimizer): the loss through the policy, its gradient, and an AdamW update."""
    logprob = nnx_logprob_fn(graphdef)
    opt = optax.adamw(1e-4)

    @jax.jit
    def step(params, opt_state, batch, prompt):
        def loss_fn(p):
            return jgrpo.loss(spec, logprob(p, batch.tokens, prompt), batch)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, opt


def train_batch(b: int, g: int, t: int, p: int, vocab: int, seed: int = 0):
    """A GroupBatch of random tokens with synthetic log pi_old, and prompts ``[B, P]``."""
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, vocab, size=(b, g, t)), jnp.int32)
    prompt = jnp.asarray(rng.integers(0, vocab, size=(b, p)), jnp.int32)
    mask = jnp.asarray((np.arange(t) < rng.integers(t // 2, t + 1, size=(b, g, 1))).astype(np.float32))
    rewards = np.asarray(rng.integers(0, 2, size=(b, g)), np.float32)
    rewards[:, :2] = (0.0, 1.0)
    logp_old = synthetic_logp_old(tokens.shape, vocab, seed)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=jnp.asarray(rewards), tokens=tokens)
    return batch, prompt


def reference_matmul(n: int) -> dict[str, Any]:
    """What the reference FLOP/s is: the matmul, its dtype and precision, and the device it runs on."""
    precision = jax.config.jax_default_matmul_precision or "default"
    return {
        "what": f"jitted jnp.matmul of two float32 {n}x{n} matrices (2 n^3 FLOPs)",
        "n": n,
        "dtype": "float32",
        # jax's default favours speed: float32 dots may run as TF32 on recent NVIDIA GPUs and as bfloat16
        # passes on TPUs (docs.jax.dev, "Matmul precision"); the train step runs at the same precision
        "precision": f"jax_default_matmul_precision={precision} (by default float32 matmuls may run as TF32 on "
        "recent NVIDIA GPUs, bfloat16 passes on TPUs; the train step uses the same setting)",
        "device": env.device(),
        "measured": "in this run, interleaved with the train step",
    }


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """FLOP/s of a GRPO inner step vs the reference matmul."""
    b, g, t, p = cfg.train_shape
    config, graphdef, params = model(2, cfg.train_model, p + t * max((1, *cfg.scale_factors)))
    spec = jgrpo.methods.get("grpo", beta=0.0)
    step, opt = step_fn(graphdef, spec)
    batch, prompt = train_batch(b, g, t, p, cfg.train_model[4])
    opt_state = opt.init(params)
    n = cfg.matmul_n if env.backend() == "cpu" else max(cfg.matmul_n, 8192)
    key_a, key_b = jax.random.split(jax.random.key(4))
    ma, mb = jax.random.normal(key_a, (n, n), jnp.float32), jax.random.normal(key_b, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    ctx.log("train: compile")
    compiled = step.lower(params, opt_state, batch, prompt).compile()
    xla = cost(compiled)
    flops = train_flops(cfg.train_model, b * g, p + t)
    ctx.log("train: timing")
    times = race(
        {"train_step": blocking(compiled, params, opt_state, batch, prompt), "matmul": blocking(matmul, ma, mb)},
        rounds=cfg.rounds,
        budget_s=cfg.budget_s,
    )
    step_flops = flops / times["train_step"].median
    mm_flops = 2.0 * n**3 / times["matmul"].median
    out = {
        "model": dataclasses.asdict(config),
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "shape": {"B": b, "G": g, "T": t, "P": p, "tokens": b * g * (p + t)},
        "flops_analytic": flops,
        "flops_xla": xla.get("flops"),
        "flop_count": "analytic (6 x matmul params x tokens + attention); XLA cost analysis alongside",
        "train_step_s": times["train_step"].median,
        "matmul_n": n,
        "matmul_s": times["matmul"].median,
        "reference": reference_matmul(n),
        "train_GFLOPs": step_flops / 1e9,
        "matmul_GFLOPs": mm_flops / 1e9,
        "fraction_of_matmul": step_flops / mm_flops,
        "samples": {k: v.samples for k, v in times.items()},
    }
    if cfg.profile and out["fraction_of_matmul"] < GOALS["train_vs_matmul"]:
        out["ops_ms"] = op_profile(blocking(compiled, params, opt_state, batch, prompt), calls=1, top=8)
    return out


def _reference(train: dict[str, Any]) -> str:
    ref = train.get("reference") or {"what": f"float32 {train['matmul_n']}^3 matmul", "device": "?"}
    return f"{ref['what']} on {ref['device']}"


def goals(train: dict[str, Any]) -> list[dict[str, Any]]:
    m = train["model"]
    key = f"d_model={m['d_model']}, layers={m['n_layers']}, {train['shape']['tokens']} tokens"
    return [
        goal(
            "train_vs_matmul",
            key,
            train["fraction_of_matmul"],
            what=f"{key}: train-step FLOP/s / reference matmul FLOP/s ({_reference(train)})",
        )
    ]


def render(train: dict[str, Any]) -> list[str]:
    m, shape = train["model"], train["shape"]
    xla = (train["flops_xla"] or 0.0) / 1e9
    ref = train.get("reference") or {}
    lines = [
        f"d_model={m['d_model']}, layers={m['n_layers']}, d_ff={m['d_ff']}, vocab={m['vocab']} "
        f"({train['params']} params), "
        f"B={shape['B']}, G={shape['G']}, P+T={shape['P'] + shape['T']}: {train['flops_analytic'] / 1e9:.3g} GFLOP "
        f"per step counted analytically (6 x matmul params x tokens + attention), "
        f"{xla:.3g} GFLOP by XLA's cost analysis.",
        f"Reference rate: {_reference(train)}; {ref.get('precision', '')}; measured {ref.get('measured', '')}. "
        "It is this device's rate on a large dense matmul, not its datasheet peak.",
        "",
        table(
            ["train step GFLOP/s", f"reference matmul {train['matmul_n']}^3 GFLOP/s", "fraction of the reference"],
            [(train["train_GFLOPs"], train["matmul_GFLOPs"], train["fraction_of_matmul"])],
        ),
    ]
    if "ops_ms" in train:
        lines += [f"Top ops (ms per step, all threads): {fmt_ops(train['ops_ms'])}", ""]
    return lines


def summary(train: dict[str, Any]) -> list[str]:
    return [
        f"Train step ({train['params']} params, {train['shape']['tokens']} tokens): "
        f"{train['train_GFLOPs']:.3g} GFLOP/s against {train['matmul_GFLOPs']:.3g} GFLOP/s of the reference "
        f"({_reference(train)}, same run): {fmt_ratio(train['fraction_of_matmul'])} of it."
    ]


SECTION = Section(name="train", title="Training step", measure=measure, goals=goals, render=render, summary=summary)
