"""Device check: train-step MFU and decomposition time of a Qwen2.5-0.5B-shaped model (random weights, bf16).

Run through ``scripts/device_check.sh`` (one GPU or TPU host, <= 5 minutes). Builds the model
from its config (``jgrpo.models.ModelConfig.qwen2_5_0_5b``, the shape of Qwen2.5-0.5B's
config.json; no weights are downloaded), a GRPO batch of B prompts x G = 16 completions of
256 prompt + 768 completion tokens, and measures:

* the train step (``jgrpo.train.make_train_step``: logprob through the model, GRPO loss,
  gradient, AdamW update; layers rematerialised): seconds per step and model FLOPs
  utilisation, MFU = (3 x forward matmul FLOPs of the batch) / (step time x peak FLOP/s).
  The log-probs run each prompt once per group (``share_prompt=True``, the default of
  ``jgrpo.models.logprob_fn``; ``--no-share-prompt``: G copies). Forward FLOPs count every
  projection of the rows computed (B P prompt rows and B G T completion rows; G copies:
  B G (P + T) rows), the full masked attention matmuls (P keys for prompt rows, P + T
  otherwise) and the output layer on the T completion positions
  (``ModelConfig.flops_per_token``); the peak is the device's dense bf16 peak (a table
  below, or ``--peak-tflops``);
* the exact Prop. 1 decomposition of the same batch (``analysis.prefix.decompose`` through
  the model's logprob_fn: one forward pass and 3 vmapped VJPs): seconds per call;
* sampling the batch with the KV cache (``jgrpo.sample``): seconds and tokens/s.

``--tiny`` runs the same code on a 2-layer model with short sequences (the CPU path the tests run).
Writes one JSON object (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jgrpo  # noqa: E402
import jgrpo.models as M  # noqa: E402
from jgrpo import methods  # noqa: E402
from jgrpo import train as jtrain  # noqa: E402

# Dense bf16 peak FLOP/s per device (vendor data sheets; no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def peak_tflops(kind: str) -> float | None:
    for name, value in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return value
    return None


def timed(fn, *args, repeats: int):
    """(first call incl. compile, [seconds of each later call]); results are blocked on."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, times, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="2-layer model, short sequences (CPU smoke run)")
    ap.add_argument("--prompts", type=int, default=2, help="B prompts per step (x G completions)")
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--completion-len", type=int, default=768)
    ap.add_argument("--steps", type=int, default=5, help="timed train steps after the compiling one")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--no-remat", action="store_true")
    ap.add_argument("--no-decompose", action="store_true")
    ap.add_argument(
        "--no-share-prompt", action="store_true", help="score G copies of each prompt (the default runs it once)"
    )
    ap.add_argument("--no-sample", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak (dense, per device)")
    ap.add_argument("--out", default=None, help="write the JSON result here (atomically)")
    args = ap.parse_args(argv)

    remat = not args.no_remat
    if args.tiny:
        config = M.ModelConfig.tiny("qwen2", vocab_size=512, dtype=args.dtype, remat=remat)
        b, g, p, t = min(args.prompts, 2), min(args.group, 4), min(args.prompt_len, 8), min(args.completion_len, 24)
    else:
        config = M.ModelConfig.qwen2_5_0_5b(dtype=args.dtype, remat=remat)
        b, g, p, t = args.prompts, args.group, args.prompt_len, args.completion_len
    devices = jax.devices()
    mesh = jtrain.make_mesh(fsdp=len(devices))
    kind = devices[0].device_kind
    result = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device_kind": kind,
        "device_count": len(devices),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "model": "tiny qwen2" if args.tiny else "Qwen2.5-0.5B shape (random weights)",
        "params": config.num_params,
        "dtype": config.dtype,
        "remat": remat,
        "share_prompt": not args.no_share_prompt,
        "batch": {"prompts": b, "group": g, "prompt_len": p, "completion_len": t, "tokens": b * g * (p + t)},
    }

    key = jax.random.key(0)
    params = jtrain._place(M.init_params(config, key), mesh)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, config.vocab_size, size=(b, p)).astype(np.int32)
    tokens = rng.integers(0, config.vocab_size, size=(b, g, t)).astype(np.int32)
    lengths = rng.integers(t // 2, t + 1, size=(b, g))
    tokens[:, :, :8] = tokens[:, :1, :8]  # a shared 8-token prefix in every group (Prop. 1 has work to do)
    mask = (np.arange(t) < lengths[..., None]).astype(np.float32)
    rewards = rng.integers(0, 2, size=(b, g)).astype(np.float32)
    model_fn = M.model_fn(config)
    logprob = M.logprob_fn(model_fn, share_prompt=not args.no_share_prompt)

    # pi_old: one scoring pass (also a forward-only timing).
    score = jax.jit(logprob)
    first, times, logp_old = timed(score, params, tokens, prompt, repeats=2)
    result["score_s"] = statistics.median(times)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=np.asarray(logp_old), rewards=rewards, tokens=tokens)

    spec = methods.get("grpo", beta=0.0)
    opt = optax.adamw(1e-6)
    step = jtrain.make_train_step(logprob, spec, opt, mesh, donate=False)
    opt_state = jtrain._place(opt.init(params), mesh)
    first, times, (_, _, metrics) = timed(step, params, opt_state, batch, prompt, repeats=args.steps)
    step_s = statistics.median(times)
    head = 2 * config.hidden_size * config.vocab_size  # the output layer, on completion positions only
    if args.no_share_prompt:  # G copies of prompt + completion, every row attending all P + T keys
        fwd = b * g * (p + t) * (config.flops_per_token(p + t) - head)
    else:  # the prompt once per group (P keys), the completions over P + T keys
        fwd = b * p * (config.flops_per_token(p) - head) + b * g * t * (config.flops_per_token(p + t) - head)
    fwd += b * g * t * head
    flops = 3 * fwd
    peak = args.peak_tflops or peak_tflops(kind)
    result["train_step"] = {
        "compile_and_first_s": round(first, 3),
        "step_s_median": round(step_s, 4),
        "step_s_min": round(min(times), 4),
        "step_s_max": round(max(times), 4),
        "model_tflops_per_step": round(flops / 1e12, 4),
        "achieved_tflops_per_s": round(flops / step_s / 1e12, 3),
        "peak_tflops_per_device": peak,
        "mfu": None if peak is None else round(flops / step_s / (peak * 1e12 * len(devices)), 4),
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
    }

    if not args.no_decompose:
        from analysis import prefix

        prompt_j = jnp.asarray(prompt)
        depth = prefix.truncation_depth(prefix.prefix_tree(tokens, mask))  # the shared 8-token prefix: window 8

        @jax.jit
        def decomposition(params, batch):
            d = prefix.decompose(spec, logprob, params, batch, prompt=prompt_j, depth=depth)
            return d.total, d.shared, d.w_agg

        first, times, out = timed(decomposition, params, batch, repeats=2)
        result["decompose"] = {
            "compile_and_first_s": round(first, 3),
            "call_s_median": round(statistics.median(times), 4),
            "per_train_step": round(statistics.median(times) / step_s, 3),
            "shared_grad_norm": float(prefix.tree_norm(out[1])),
        }

    if not args.no_sample:
        dec = M.decoder(model_fn)

        def run(params, key):
            return jgrpo.sample(dec, params, prompt, key, group_size=g, max_len=t, temperature=1.0)

        first, times, s = timed(run, params, jax.random.key(1), repeats=1)
        result["sample"] = {
            "compile_and_first_s": round(first, 3),
            "call_s": round(times[0], 4),
            "tokens_per_s": round(b * g * t / times[0], 1),
        }
    text = json.dumps(result, indent=2)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.out)
    print(text)
    return result


if __name__ == "__main__":
    main()
