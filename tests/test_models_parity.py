"""jgrpo.models against transformers' PyTorch implementation on tiny random checkpoints (float32, CPU).

Criterion: max |logits_jax - logits_torch| / max |logits_torch| <= 1e-4 over every real
(non-padding) position. Falsified by any wrong piece of the architecture: the positive
controls below show that ignoring the llama3 RoPE scaling or Qwen2's q/k/v biases moves
the logits by more than 1e-2 relative, so the criterion can fail.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jgrpo.models as M
from tests import hf_checkpoints as hf

REL = 1e-4
LLAMA31_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # small, so the scaling acts within the tested positions
}
B, L = 2, 24
LENGTHS = np.array([L, 13])


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


IDS = np.random.default_rng(1).integers(0, hf.TINY["vocab_size"], size=(B, L)).astype(np.int32)
RIGHT = (np.arange(L)[None] < LENGTHS[:, None]).astype(np.int32)
LEFT = RIGHT[:, ::-1].copy()
# The right-padded rows' real tokens, moved to the end (left padding).
LEFT_IDS = np.stack([np.roll(row, L - n) for row, n in zip(IDS, LENGTHS, strict=True)])
# One batch, one compile per checkpoint: unpadded rows, right-padded rows, left-padded rows.
ALL_IDS = np.concatenate([IDS, IDS, LEFT_IDS])
ALL_MASK = np.concatenate([np.ones_like(RIGHT), RIGHT, LEFT])

_DEFAULT4, _DEFAULT6 = ({"rope_type": "default", "rope_theta": t} for t in (1e4, 1e6))
CASES = {
    # family, build overrides, rewrite config.json in the transformers-4 layout, on-disk dtype
    "qwen2-tied-v5": ("qwen2", dict(tie_word_embeddings=True, rope_parameters=_DEFAULT4), False, torch.float32),
    "qwen3-untied-v4": ("qwen3", dict(tie_word_embeddings=False, rope_parameters=_DEFAULT6), True, torch.float32),
    "llama31-bf16-sharded-v4": (
        "llama",
        dict(rope_parameters=LLAMA31_ROPE, max_shard_size="40KB"),
        True,
        torch.bfloat16,
    ),
    "llama31-bias-tied-v5": (
        "llama",
        dict(rope_parameters=LLAMA31_ROPE, attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
        False,
        torch.float32,
    ),
}

_BUILT: dict = {}


def _checkpoint(name, tmp_path_factory):
    if name not in _BUILT:
        family, overrides, v4, dtype = CASES[name]
        path = tmp_path_factory.mktemp(name)
        model = hf.build(family, path, seed=len(name), dtype=dtype, **overrides)
        if v4:
            hf.to_transformers4_layout(path)
        ref = np.concatenate(
            [hf.torch_logits(model, IDS), hf.torch_logits(model, IDS, RIGHT)]
            + [hf.torch_logits(model, LEFT_IDS, LEFT, np.maximum(np.cumsum(LEFT, axis=1) - 1, 0))]
        )
        _BUILT[name] = (path, ref)
    return _BUILT[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(name, tmp_path_factory):
    """Unpadded, right-padded (mask only) and left-padded (positions from the mask, as generate) rows."""
    path, ref = _checkpoint(name, tmp_path_factory)
    if "sharded" in name:
        assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 1
    if name.endswith("v4"):
        cfg = json.loads((path / "config.json").read_text())
        assert "rope_parameters" not in cfg and "rope_theta" in cfg and "torch_dtype" in cfg
    model_fn, params = M.from_pretrained(path, dtype=jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out = np.asarray(jax.jit(model_fn)(params, ALL_IDS, ALL_MASK))
    assert out.shape == ref.shape and out.dtype == np.float32
    valid = ALL_MASK.astype(bool)
    err = rel_err(out[valid], ref[valid])
    assert err <= REL, (name, err)
    # Padding is invisible: the same 13 real tokens, right- (row 3) or left-padded (row 5), get the same logits.
    n = LENGTHS[1]
    np.testing.assert_allclose(out[5, L - n :], out[3, :n], rtol=0, atol=1e-5 * np.abs(out).max())


def test_bfloat16_params_and_compute(tmp_path_factory):
    path, ref = _checkpoint("llama31-bf16-sharded-v4", tmp_path_factory)
    model_fn, params = M.from_pretrained(path, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert model_fn.config.dtype == "bfloat16"
    hidden = jax.eval_shape(lambda p, x: M.transformer.hidden_states(model_fn.config, p, x), params, IDS)
    assert hidden.dtype == jnp.bfloat16  # the compute runs in bf16, not just the storage
    err = rel_err(jax.jit(model_fn)(params, IDS), ref[:B])
    assert 1e-4 < err < 5e-2, err  # bf16 rounding is visible but small
    native, _ = M.from_pretrained(path, dtype=None)  # the checkpoint's own dtype (torch_dtype bfloat16)
    assert native.config.dtype == "bfloat16"


def test_controls_detect_wrong_semantics(tmp_path_factory):
    """Positive controls: ignoring the llama3 scaling or Qwen2's biases breaks parity by more than 1e-2."""
    path, ref = _checkpoint("llama31-bf16-sharded-v4", tmp_path_factory)
    model_fn, params = M.from_pretrained(path)
    wrong = jax.jit(M.model_fn(model_fn.config.replace(rope_type="default")))
    assert rel_err(wrong(params, IDS), ref[:B]) > 1e-2
    path, ref = _checkpoint("qwen2-tied-v5", tmp_path_factory)
    fn, params = M.from_pretrained(path)
    no_bias = {**params, "layers": {k: (v * 0 if k in ("bq", "bk", "bv") else v) for k, v in params["layers"].items()}}
    jitted = jax.jit(fn)
    assert rel_err(jitted(params, ALL_IDS, ALL_MASK)[:B], ref[:B]) <= REL
    assert rel_err(jitted(no_bias, ALL_IDS, ALL_MASK)[:B], ref[:B]) > 1e-2


def test_rope_inv_freq_matches_transformers():
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = transformers.LlamaConfig(**hf.TINY, rope_parameters=dict(LLAMA31_ROPE))
    ref, scale = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours = M.config.rope_inv_freq(M.config_from_hf(cfg.to_dict()))
    assert scale == 1.0
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    plain = {k: v for k, v in cfg.to_dict().items() if k != "rope_parameters"}
    plain = M.config.rope_inv_freq(M.config_from_hf({**plain, "rope_theta": 1e4}))
    assert np.sum(~np.isclose(plain, ours, rtol=1e-3)) >= 3  # the scaling changes most frequencies here


@pytest.mark.slow
def test_remat_gives_the_same_gradient(tmp_path):
    hf.build("qwen3", tmp_path)
    fn, params = M.from_pretrained(tmp_path)
    fn_r, _ = M.from_pretrained(tmp_path, remat=True)
    assert fn_r.config.remat and not fn.config.remat
    ids = jnp.asarray(IDS)

    def loss(f):
        return lambda p: jnp.mean(jax.nn.log_softmax(f(p, ids))[..., 0])

    g = jax.jit(jax.grad(loss(fn)))(params)
    g_r = jax.jit(jax.grad(loss(fn_r)))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_r), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g)) > 0
