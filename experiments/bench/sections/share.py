"""Shared-prompt compute: log-prob + gradient with the prompt run once per group against G copies of it.

Both paths are :func:`jgrpo.models.logprob_fn` of one Hugging Face-architecture model
(Qwen2 layout: q/k/v biases, GQA, tied embeddings; small: a few layers, narrow), the
GRPO loss (−J of Eq. 1) on top and its gradient w.r.t. the parameters, jitted, timed
interleaved in one process (:func:`experiments.bench.harness.race`). ``share_prompt=True``
runs the B prompts once and the B G completions over the broadcast prompt K/V:
``B (P + G T)`` token rows; ``share_prompt=False`` runs the B G sequences ``prompt +
completion``: ``B G (P + T)`` rows. The theoretical ratio of the work is ``G (P + T) / (P + G T)``
(4.0 at P = 1024, T = 256, G = 16). The goal: wall ratio ≥ 0.7 x the theoretical ratio.

Defaults: the Hugging Face-architecture models (:func:`jgrpo.models.logprob_fn`) and the training loop
(:func:`jgrpo.train.train`) share the prompt by default (``share_prompt=True``); the NNX transformer's
:func:`jgrpo.policies.nnx_logprob_fn` / ``nnx_logprob_and_entropy_fn`` default to ``share_prompt=False``
(the experiments keep their compiled programs; their prompts are 1-5 tokens, nothing to save).

FLOPs, three numbers, each labelled:

* **XLA layer-stack ratio** (the criterion's measurement): XLA's cost analysis of the compiled layer
  stack of each path alone, with every layer counted: :func:`jgrpo.models.transformer.hidden_states` of the
  ``B G`` sequences ``prompt + completion`` against
  :func:`jgrpo.models.transformer.grouped_hidden_states` of the prompts and the completions' first
  ``T - 1`` tokens (what ``logprob_fn`` runs: the last token predicts nothing scored), both with
  ``unroll=True`` (XLA counts a ``while`` body once, so a rolled ``lax.scan`` holds one layer of the L).
  No output layer. Counted for the forward pass and for the forward + VJP.
* **XLA whole-program ratio** (a diagnostic): the cost analysis of the timed program (loss value and
  gradient): the layer scan counted once (one layer of the L) next to the output layer on the T scored
  positions (the same in both paths, which dilutes the ratio) and the loss.
* **Theory** ``G (P + T) / (P + G T)``: token rows, the per-token layer work alone.

The analytic count (:func:`analytic_counts`), derived from the model's shapes: per layer, every token row
costs ``c_row = 2 D (Hq + 2 Hkv) hd + 2 Hq hd D + 6 D F`` FLOPs (q/k/v, o, SwiGLU) and every (query, key)
pair of attention ``c_pair = 4 Hq hd`` (scores and probs x values; masked pairs are computed too). The
G-copies path has ``R_u = B G (P + T)`` rows and ``A_u = B G (P + T)^2`` pairs; the shared path, with
``Tc = T - 1`` completion rows, ``R_s = B (P + G Tc)`` and ``A_s = B (P^2 + G Tc (P + Tc))``. The analytic
ratio is ``(R_u c_row + A_u c_pair) / (R_s c_row + A_s c_pair)``, a mediant of the row ratio ``R_u / R_s``
and the pair ratio ``A_u / A_s``, so it lies between them; and ``A_u / A_s >= R_u / R_s`` (cross-multiplied:
the difference is ``T P + G Tc (T - Tc) >= 0``), ``R_u / R_s >= G (P + T) / (P + G T)`` (``Tc <= T``).
Hence any count made of per-row and per-pair work, XLA's included (its elementwise work: norms, RoPE,
softmax, SiLU, is per row or per pair too), has ``theory <= row ratio <= ratio <= pair ratio``; the
backward pass (two matmuls per forward matmul) keeps the same ratio.

Criterion (fixed before the measurement, :func:`flop_criterion`): the XLA layer-stack ratio is within 10% of
the analytic ratio, at least 0.95 x the theory ratio and at most 1.05 x the pair ratio (5% for work outside
the row/pair model: per-program constants, and in the VJP the shared path's sum of the prompt K/V gradient
over the G completions), for the forward count and for the forward + VJP count. Falsified by a shared
path that recomputes the prompt G times (its ratio is about 1) or a count missing layers of one path.
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
from jgrpo.models import transformer

__all__ = [
    "SECTION",
    "analytic_counts",
    "flop_criterion",
    "hf_config",
    "layer_stack_flops",
    "ratios",
    "theory_ratio",
]

CRITERION = (
    "XLA layer-stack FLOP ratio (every layer counted, no output layer) within 10% of the analytic ratio "
    "(rows x c_row + attention pairs x c_pair), >= 0.95 x theory G (P + T) / (P + G T) and <= 1.05 x the pair ratio"
)


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


def analytic_counts(config: M.ModelConfig, b: int, g: int, t: int, p: int) -> dict[str, Any]:
    """The layer stack's matmul FLOPs of both paths from the model's shapes (see the module docstring).

    Forward pass, all ``config.num_layers`` layers, no output layer; 2 FLOPs per multiply-add (XLA's
    convention). The shared path runs ``Tc = T - 1`` completion rows (as :func:`jgrpo.models.logprob_fn`).

    Returns:
      ``{"c_row", "c_pair", "rows": {path: n}, "pairs": {path: n}, "flops": {path: n}, "ratio", "row_ratio",
      "pair_ratio"}`` with paths ``"shared"`` and ``"unshared"`` (Python ints, exact).
    """
    for name, v, lo in (("b", b, 1), ("g", g, 1), ("t", t, 1), ("p", p, 1)):
        if int(v) != v or v < lo:
            raise ValueError(f"analytic_counts: {name} must be an integer >= {lo}, got {v!r}")
    d, hd, f = config.hidden_size, config.head_dim, config.intermediate_size
    hq, hkv = config.num_heads, config.num_kv_heads
    c_row = 2 * d * (hq + 2 * hkv) * hd + 2 * hq * hd * d + 6 * d * f
    c_pair = 4 * hq * hd
    tc = t - 1
    rows = {"unshared": b * g * (p + t), "shared": b * (p + g * tc)}
    pairs = {"unshared": b * g * (p + t) ** 2, "shared": b * (p * p + g * tc * (p + tc))}
    flops = {k: config.num_layers * (rows[k] * c_row + pairs[k] * c_pair) for k in rows}
    return {
        "c_row": c_row,
        "c_pair": c_pair,
        "rows": rows,
        "pairs": pairs,
        "flops": flops,
        "ratio": flops["unshared"] / flops["shared"],
        "row_ratio": rows["unshared"] / rows["shared"],
        "pair_ratio": pairs["unshared"] / pairs["shared"],
    }


def flop_criterion(xla_ratio: float, analytic_ratio: float, theory: float, pair_ratio: float) -> dict[str, Any]:
    """The FLOP criterion (fixed before the measurement; derived in the module docstring), on measured numbers.

    ``theory <= ratio <= pair ratio`` holds for any count of per-row and per-pair work; XLA's is such a count.
    Met when ``|xla / analytic - 1| <= 0.10``, ``xla >= 0.95 theory`` and ``xla <= 1.05 pair_ratio``.

    Returns:
      ``{"within_10pct_of_analytic", "at_least_0.95_theory", "at_most_1.05_pair_ratio", "met", "criterion"}``
      (``met`` None when ``xla_ratio`` is missing or not finite).
    """
    if xla_ratio is None or not math.isfinite(xla_ratio):
        checks = dict.fromkeys(("within_10pct_of_analytic", "at_least_0.95_theory", "at_most_1.05_pair_ratio"))
        return {**checks, "met": None, "criterion": CRITERION}
    checks = {
        "within_10pct_of_analytic": abs(xla_ratio / analytic_ratio - 1.0) <= 0.10,
        "at_least_0.95_theory": xla_ratio >= 0.95 * theory,
        "at_most_1.05_pair_ratio": xla_ratio <= 1.05 * pair_ratio,
    }
    return {**checks, "met": all(checks.values()), "criterion": CRITERION}


def _stack_programs(config: M.ModelConfig, prompt: jax.Array, prompt_mask: jax.Array, tokens: jax.Array):
    """The layer stack of each path as ``f(params) -> hidden states`` (every layer unrolled, no output layer)."""
    b, g, t = tokens.shape
    p = prompt.shape[-1]

    def shared(params):
        hp, hc = transformer.grouped_hidden_states(
            config, params, prompt, tokens[..., : t - 1], prompt_mask, unroll=True
        )
        return hp, hc

    def unshared(params):
        ids = jnp.concatenate([jnp.broadcast_to(prompt[:, None], (b, g, p)), tokens], axis=-1).reshape(-1, p + t)
        pm = jnp.broadcast_to(prompt_mask[:, None], (b, g, p))
        mask = jnp.concatenate([pm, jnp.ones((b, g, t), pm.dtype)], axis=-1).reshape(-1, p + t)
        return transformer.hidden_states(config, params, ids, mask, unroll=True)

    return {"shared": shared, "unshared": unshared}


def _with_vjp(f):
    """``params -> (value, gradient)`` of ``sum(hidden states)``: the forward pass and its VJP."""

    def total(params):
        return sum(jnp.sum(h) for h in jax.tree.leaves(f(params)))

    return jax.value_and_grad(total)


def layer_stack_flops(
    config: M.ModelConfig,
    params: Any,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    tokens: jax.Array,
    *,
    compiled: bool = True,
    programs: dict[str, Any] | None = None,
    kinds: tuple[str, ...] = ("forward", "value_and_vjp"),
) -> dict[str, dict[str, float]]:
    """XLA's FLOP count of each path's layer stack, every layer counted: ``{"forward" | "value_and_vjp": {path: n}}``.

    ``prompt [B, P]``, ``prompt_mask [B, P]``, ``tokens [B, G, T]``. ``compiled``: the optimised program's count
    (as the bench), else the lowered HLO's (no compile: fast, for the tests). ``programs``: replaces the paths'
    ``params -> hidden states`` functions (a test's control). ``kinds``: which of the two counts to make.
    """
    unknown = set(kinds) - {"forward", "value_and_vjp"}
    if unknown:
        raise ValueError(f"layer_stack_flops: kinds must be among 'forward', 'value_and_vjp', got {sorted(unknown)}")
    programs = programs or _stack_programs(config, prompt, prompt_mask, tokens)
    out: dict[str, dict[str, float]] = {k: {} for k in kinds}
    for name, f in programs.items():
        for kind in kinds:
            fn = f if kind == "forward" else _with_vjp(f)
            lowered = jax.jit(fn).lower(params)
            ca = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            out[kind][name] = float(ca["flops"])
    return out


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
    ctx.log("share: layer-stack FLOPs (every layer unrolled, compiled for the count only)")
    stack = layer_stack_flops(config, params, prompt, prompt_mask, tokens)
    analytic = analytic_counts(config, b, g, t, p)
    theory = theory_ratio(g, t, p)
    stack_ratios = {k: v["unshared"] / v["shared"] for k, v in stack.items()}
    criterion = {
        k: flop_criterion(r, analytic["ratio"], theory, analytic["pair_ratio"]) for k, r in stack_ratios.items()
    }
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
        "flop_ratio_xla": flop_ratio,  # whole program: the layer scan counted once, the output layer, the loss
        "flops_stack_xla": stack,  # {"forward" | "value_and_vjp": {path: FLOPs}}, every layer, no output layer
        "flop_ratio_stack_xla": stack_ratios["forward"],
        "flop_ratio_stack_vjp_xla": stack_ratios["value_and_vjp"],
        "flops_stack_analytic": analytic["flops"],  # forward matmuls (rows x c_row + pairs x c_pair) x L
        "flop_ratio_analytic": analytic["ratio"],
        "flop_ratio_rows": analytic["row_ratio"],
        "flop_ratio_pairs": analytic["pair_ratio"],
        "flop_criterion": {
            "criterion": CRITERION + " (forward, and forward + VJP)",
            "forward": criterion["forward"],
            "value_and_vjp": criterion["value_and_vjp"],
            "met": _all_met(c["met"] for c in criterion.values()),
        },
        "flop_ratio_theory": theory,
        "wall_ratio": wall,
        "wall_over_theory": of_theory,
        "loss_abs_diff": abs(float(va) - float(vb)),
        "grad_rel_diff": num / max(den, 1e-30),
        "samples": {k: v.samples for k, v in times.items()},
    }


def _all_met(values) -> bool | None:
    values = list(values)
    return None if any(v is None for v in values) else all(values)


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
            also={
                "wall_ratio": res["wall_ratio"],
                "flop_ratio_xla_whole_program": res["flop_ratio_xla"] or float("nan"),
                "flop_ratio_xla_layer_stack": res.get("flop_ratio_stack_xla") or float("nan"),
                "flop_ratio_analytic": res.get("flop_ratio_analytic") or float("nan"),
            },
        )
    ]


def _stack_rows(res: dict[str, Any]) -> list[tuple]:
    if "flops_stack_xla" not in res:
        return []
    crit = res["flop_criterion"]
    rows = []
    for kind, label in (("forward", "forward"), ("value_and_vjp", "forward + VJP")):
        f = res["flops_stack_xla"][kind]
        ok = crit[kind]["met"]
        rows.append(
            (
                f"XLA layer stack, {label}",
                f"{f['unshared'] / 1e9:.3g} / {f['shared'] / 1e9:.3g}",
                f["unshared"] / f["shared"],
                "met" if ok else ("not met" if ok is False else "n/a"),
            )
        )
    a = res["flops_stack_analytic"]
    rows.append(
        (
            "analytic layer stack, forward (rows x c_row + pairs x c_pair)",
            f"{a['unshared'] / 1e9:.3g} / {a['shared'] / 1e9:.3g}",
            res["flop_ratio_analytic"],
            "",
        )
    )
    pair = f"{res['flop_ratio_rows']:.4g} / {res['flop_ratio_pairs']:.4g}"
    rows.append(("analytic: token rows alone / attention pairs alone (the bounds)", "", pair, ""))
    return rows


def render(res: dict[str, Any]) -> list[str]:
    gf = [(res[k] or 0.0) / 1e9 for k in ("flops_unshared_xla", "flops_shared_xla")]
    lines = [
        f"{_key(res)} ({res['params']} params, Qwen2 layout): {res['what']}, the prompt once per group (shared) "
        f"against G copies of it. Median of {res['rounds']} interleaved rounds. Same loss to "
        f"{res['loss_abs_diff']:.1e} (absolute), same gradient to {res['grad_rel_diff']:.1e} (max relative). "
        "Defaults: jgrpo.models.logprob_fn (HF architectures) and the training loop share the prompt "
        "(share_prompt=True); the NNX transformer's nnx_logprob_fn defaults to share_prompt=False (the "
        "experiments' prompts are 1-5 tokens).",
        "",
        table(
            ["G-copies s", "shared s", "wall ratio", "theory G(P+T)/(P+GT)", "wall ratio / theory"],
            [
                (
                    res["unshared_s"],
                    res["shared_s"],
                    res["wall_ratio"],
                    res["flop_ratio_theory"],
                    res["wall_over_theory"],
                )
            ],
        ),
    ]
    rows = [
        *_stack_rows(res),
        (
            "XLA whole program (loss value + gradient; layer scan counted once, output layer included)",
            f"{gf[0]:.3g} / {gf[1]:.3g}",
            res["flop_ratio_xla"],
            "diagnostic",
        ),
        ("theory G(P+T)/(P+GT) (token rows)", "", res["flop_ratio_theory"], ""),
    ]
    lines.append(table(["FLOP count", "GFLOP G-copies / shared", "ratio", "criterion"], rows))
    if "flop_criterion" in res:
        crit = res["flop_criterion"]
        verdict = {True: "met", False: "NOT met", None: "not measured"}[crit["met"]]
        lines += [
            "",
            f"FLOP criterion (fixed before the run): {crit['criterion']}: {verdict}. The layer stack is "
            "hidden_states (G copies, P + T rows each) against grouped_hidden_states (prompt once, T - 1 rows per "
            "completion, as logprob_fn runs it), each compiled with its layers unrolled for the count only (XLA "
            "counts a while-loop body once); the output layer is left out, since it is the same in both paths.",
        ]
    return lines


def summary(res: dict[str, Any]) -> list[str]:
    stack = ""
    if "flop_ratio_stack_xla" in res:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[res["flop_criterion"]["met"]]
        stack = (
            f"; XLA-counted layer-stack FLOPs {fmt_ratio(res['flop_ratio_stack_xla'])}x fewer (analytic "
            f"{res['flop_ratio_analytic']:.3g}x, FLOP criterion {verdict})"
        )
    return [
        f"Shared-prompt log-prob + gradient ({_key(res)}): {fmt_ratio(res['wall_ratio'])}x faster than G copies of "
        f"the prompt, {res['wall_over_theory']:.2f} of the theoretical {res['flop_ratio_theory']:.3g}x{stack}; "
        f"whole-program XLA count (one layer + output layer) {fmt_ratio(res['flop_ratio_xla'])}x."
    ]


SECTION = Section(
    name="share", title="Shared-prompt compute", measure=measure, goals=goals, render=render, summary=summary
)
