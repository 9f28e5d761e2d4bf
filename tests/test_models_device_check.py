"""scripts/device_check.py: its FLOP count against XLA's, the peak table, and a tiny CPU run."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import pytest

import jgrpo.models as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("device_check", os.path.join(ROOT, "scripts", "device_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flops_per_token_matches_xla_cost_analysis():
    """Our analytic forward FLOPs (matmuls only) vs XLA's count of the compiled forward (all ops): within 10%."""
    # One layer: XLA counts a while-loop body (the layer scan) once, whatever its trip count.
    cfg = M.ModelConfig.tiny("qwen2", vocab_size=256, hidden_size=128, intermediate_size=384, head_dim=32, num_layers=1)
    n, length = 2, 64
    params = jax.eval_shape(lambda k: M.init_params(cfg, k), jax.random.key(0))
    ids = jax.ShapeDtypeStruct((n, length), jnp.int32)
    cost = jax.jit(M.model_fn(cfg)).lower(params, ids).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = n * length * cfg.flops_per_token(length)
    assert 0.9 < ours / cost["flops"] <= 1.0, (ours, cost["flops"])
    q = M.ModelConfig.qwen2_5_0_5b()
    assert 0.49e9 < q.num_params < 0.50e9  # Qwen2.5-0.5B: 494M parameters (tied embeddings)


def test_peak_table():
    mod = _script()
    assert mod.peak_tflops("NVIDIA H200") == 989.0 and mod.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert mod.peak_tflops("TPU v5 lite") == 197.0 and mod.peak_tflops("cpu") is None


@pytest.mark.slow
def test_tiny_cpu_run(tmp_path):
    out = tmp_path / "dc.json"
    result = _script().main(["--tiny", "--steps", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["train_step"]["step_s_median"] > 0 and result["decompose"]["call_s_median"] > 0
    assert result["sample"]["tokens_per_s"] > 0 and result["train_step"]["mfu"] is None  # no CPU peak
