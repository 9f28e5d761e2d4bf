"""Loading checkpoints: config layouts, bad input (each error names the file and tensor), nothing loaded halfway.

The checkpoints here are written with the ``safetensors`` package (an implementation
independent of jgrpo's NumPy reader) from random parameters, in transformers' tensor naming.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import jgrpo.models as M
from jgrpo.models import loading
from jgrpo.models import safetensors as st
from tests.model_utils import random_params

CONFIG = M.ModelConfig.tiny("qwen2", vocab_size=32, hidden_size=16, intermediate_size=32, head_dim=4, num_layers=2)
HF_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def _tensors(seed=0, dtype=ml_dtypes.bfloat16) -> dict[str, np.ndarray]:
    params = random_params(CONFIG, seed, std=0.5)
    out = {}
    for key, (names, _, transposed) in loading.hf_names(CONFIG).items():
        leaf = params[key] if "/" not in key else params["layers"][key.split("/")[1]]
        for i, name in enumerate(names):
            a = np.asarray(leaf[i] if key.startswith("layers/") else leaf, np.float32)
            out[name] = np.ascontiguousarray(a.T if transposed else a).astype(dtype)
    return out


def write(path, tensors=None, config=None, shards=1):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(HF_CONFIG if config is None else config))
    tensors = _tensors() if tensors is None else tensors
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
        return path
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(path / file))
        weight_map.update(dict.fromkeys(part, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def test_config_layouts_agree():
    v4 = M.config_from_hf(HF_CONFIG)
    v5 = {k: v for k, v in HF_CONFIG.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    v5 = M.config_from_hf(
        {**v5, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "dtype": "bfloat16"}
    )
    assert v4 == v5 and v4.dtype == "bfloat16" and v4.qkv_bias and not v4.o_bias and v4.head_dim == 4
    scaled = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    base = {**HF_CONFIG, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 128}
    a = M.config_from_hf({**base, "rope_scaling": {**scaled, "original_max_position_embeddings": 64}})
    b = M.config_from_hf({**base, "rope_scaling": None, "rope_parameters": {**scaled, "rope_theta": 1e4}})
    assert a.rope_type == b.rope_type == "llama3" and a.rope_original_max_len == 64 and b.rope_original_max_len == 128
    hash(a)


def test_loads_single_and_sharded_identically(tmp_path):
    tensors = _tensors()
    fn1, p1 = M.from_pretrained(write(tmp_path / "one", tensors), dtype=jnp.float32)
    fn3, p3 = M.from_pretrained(write(tmp_path / "three", tensors, shards=3), dtype=jnp.float32)
    assert fn1 is fn3  # model_fn is cached per config
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3), strict=True):
        np.testing.assert_array_equal(a, b)
    # bf16 on disk -> float32 exactly; our layout is [in, out] (transformers stores [out, in]).
    w = tensors["model.layers.1.self_attn.q_proj.weight"].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(p1["layers"]["wq"][1]), w.T)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    seen = []
    _, placed = M.from_pretrained(tmp_path / "one", sharding=lambda shape: seen.append(shape) or device)
    assert (32, 16) in seen and all(x.sharding == device for x in jax.tree.leaves(placed))  # embed [V, D]
    _, native = M.from_pretrained(tmp_path / "one", dtype=None)  # torch_dtype bfloat16
    assert {x.dtype for x in jax.tree.leaves(native)} == {jnp.dtype(jnp.bfloat16)}
    assert jax.eval_shape(fn1, p1, jax.ShapeDtypeStruct((1, 3), jnp.int32)).shape == (1, 3, 32)


def test_reader_matches_the_safetensors_package(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.normal(size=(3, 5)).astype(np.float32),
        "b": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
        "c": rng.integers(0, 9, size=(2, 2, 2)).astype(np.int64),
        "d": np.zeros((0, 4), np.float16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    index = st.index_checkpoint(str(tmp_path))
    assert set(index) == set(tensors)
    for name, value in tensors.items():
        got = st.read_tensor(index[name])
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)


def _no_reads(monkeypatch):
    calls = []
    monkeypatch.setattr(st, "read_tensor", lambda info: calls.append(info) or pytest.fail("read before validation"))
    return calls


def test_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        M.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        M.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(FileNotFoundError, match="no weights"):
        M.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match=r"only pickle weights \(pytorch_model\.bin\).*save_pretrained"):
        M.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        M.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture model_type='gpt2'"),
        ({"architectures": ["Qwen2ForSequenceClassification"]}, "unsupported architecture"),
        ({"use_sliding_window": True}, "sliding-window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"hidden_size": None}, "has no 'hidden_size'"),
        ({"num_key_value_heads": 3}, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
        ({"torch_dtype": "int8"}, "dtype must be float32, bfloat16 or float16"),
    ],
)
def test_unsupported_configs(tmp_path, monkeypatch, change, message):
    write(tmp_path, config={**HF_CONFIG, **change})
    _no_reads(monkeypatch)
    with pytest.raises(ValueError, match=message) as e:
        M.from_pretrained(tmp_path, dtype=None)  # None: the checkpoint's torch_dtype
    assert str(tmp_path / "config.json") in str(e.value)


def test_tensor_errors_name_file_and_tensor_before_any_read(tmp_path, monkeypatch):
    q1 = "model.layers.1.self_attn.q_proj.weight"
    good = _tensors()
    cases = [
        ({**good, q1: good[q1][:, :8]}, rf"model\.safetensors: tensor '{q1}' has shape \(16, 8\) but config\.json"),
        ({k: v for k, v in good.items() if k != q1}, rf"tensor '{q1}' is missing"),
        ({**good, q1: good[q1].astype(np.int32)}, rf"tensor '{q1}' has dtype I32, expected a float dtype"),
        ({**good, "model.layers.2.mlp.up_proj.weight": good[q1]}, "tensors that a qwen2 model with this config"),
        ({k: v for k, v in good.items() if k != "lm_head.weight"}, "'lm_head.weight' is missing"),
    ]
    _no_reads(monkeypatch)
    for i, (tensors, message) in enumerate(cases):
        path = write(tmp_path / str(i), tensors)
        with pytest.raises(ValueError, match=message):
            M.from_pretrained(path)


def test_tied_checkpoint_may_omit_or_carry_lm_head(tmp_path):
    tied = {**HF_CONFIG, "tie_word_embeddings": True}
    good = _tensors()
    without = {k: v for k, v in good.items() if k != "lm_head.weight"}
    fn, params = M.from_pretrained(write(tmp_path / "a", without, config=tied))
    assert "lm_head" not in params and fn.config.tie_embeddings
    _, params_b = M.from_pretrained(
        write(tmp_path / "b", {**without, "lm_head.weight": good["model.embed_tokens.weight"]}, config=tied)
    )
    assert "lm_head" not in params_b


def test_missing_shard_and_truncated_file(tmp_path, monkeypatch):
    path = write(tmp_path / "s", shards=3)
    (path / "model-00002-of-00003.safetensors").unlink()
    _no_reads(monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00003\.safetensors: shard listed in .* is missing"):
        M.from_pretrained(path)
    path = write(tmp_path / "t")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .* \(truncated file\?\)"):
        M.from_pretrained(path)
    (path / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(ValueError, match="not a safetensors file"):
        M.from_pretrained(path)
