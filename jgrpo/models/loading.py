"""Loading a local Hugging Face checkpoint directory: ``from_pretrained(path) -> (model_fn, params)``.

The directory holds ``config.json`` (transformers 4 or 5 layout) and safetensors weights,
one file or shards with ``model.safetensors.index.json``. Every tensor is checked
against the config (name, shape, floating dtype) before any of them is read, so a bad
checkpoint fails with an error naming the file and the tensor and nothing is loaded
halfway. Pickle weights (``*.bin``) are refused (see :mod:`jgrpo.models.safetensors`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgrpo.models import safetensors as st
from jgrpo.models.config import ModelConfig, load_config
from jgrpo.models.transformer import model_fn as _model_fn
from jgrpo.models.transformer import param_shapes

__all__ = ["from_pretrained", "hf_names", "load_params"]

_LAYER = {
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "bq": ("self_attn.q_proj.bias", False),
    "bk": ("self_attn.k_proj.bias", False),
    "bv": ("self_attn.v_proj.bias", False),
    "bo": ("self_attn.o_proj.bias", False),
    "q_norm": ("self_attn.q_norm.weight", False),
    "k_norm": ("self_attn.k_norm.weight", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
    "b_gate": ("mlp.gate_proj.bias", False),
    "b_up": ("mlp.up_proj.bias", False),
    "b_down": ("mlp.down_proj.bias", False),
}
_TOP = {"embed": ("model.embed_tokens.weight", False), "final_norm": ("model.norm.weight", False)}
_LM_HEAD = "lm_head.weight"
# Buffers some older checkpoints carry; never parameters.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def hf_names(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]:
    """Our leaf path (``"layers/wq"``) -> (the transformers tensor name per layer, its on-disk shape, transposed?)."""
    shapes = param_shapes(config)
    out = {}
    for key, (name, _) in _TOP.items():
        out[key] = ((name,), shapes[key], False)
    if "lm_head" in shapes:
        d, v = shapes["lm_head"]
        out["lm_head"] = ((_LM_HEAD,), (v, d), True)
    for key, shape in shapes["layers"].items():
        suffix, transposed = _LAYER[key]
        per_layer = shape[1:][::-1] if transposed else shape[1:]
        names = tuple(f"model.layers.{i}.{suffix}" for i in range(config.num_layers))
        out[f"layers/{key}"] = (names, per_layer, transposed)
    return out


def _check(config: ModelConfig, tensors: dict[str, st.TensorInfo], path: str) -> None:
    expected = hf_names(config)
    wanted = {n for names, _, _ in expected.values() for n in names}
    for _, (names, shape, _) in expected.items():
        for name in names:
            info = tensors.get(name)
            if info is None:
                files = sorted({os.path.basename(t.file) for t in tensors.values()})
                raise ValueError(
                    f"{path}: tensor {name!r} is missing from the weights ({', '.join(files)}); "
                    f"the config.json ({config.model_type}, {config.num_layers} layers) needs it"
                )
            if info.shape != tuple(shape):
                raise ValueError(
                    f"{info.file}: tensor {name!r} has shape {info.shape} but config.json implies {tuple(shape)} "
                    f"(hidden {config.hidden_size}, intermediate {config.intermediate_size}, heads "
                    f"{config.num_heads}/{config.num_kv_heads} x {config.head_dim}, vocab {config.vocab_size})"
                )
            if info.dtype_name not in ("F32", "F16", "BF16", "F64"):
                raise ValueError(f"{info.file}: tensor {name!r} has dtype {info.dtype_name}, expected a float dtype")
    extra = sorted(n for n in tensors if n not in wanted and not _IGNORED.match(n))
    if config.tie_embeddings and _LM_HEAD in extra:
        info = tensors[_LM_HEAD]
        if info.shape != (config.vocab_size, config.hidden_size):
            raise ValueError(f"{info.file}: tied {_LM_HEAD!r} has shape {info.shape}, expected the embedding's")
        extra.remove(_LM_HEAD)
    if extra:
        raise ValueError(
            f"{path}: {len(extra)} tensors that a {config.model_type} model with this config.json does not have, "
            f"e.g. {extra[:3]} in {tensors[extra[0]].file}"
        )


def load_params(config: ModelConfig, path: str | os.PathLike, *, sharding: Any = None) -> dict[str, Any]:
    """The parameter pytree of ``config`` read from the safetensors weights in ``path``.

    Args:
      config: the model's configuration (its ``dtype`` is the dtype of the returned arrays).
      path: the checkpoint directory.
      sharding: where to put each leaf: None (the default device), one ``jax.sharding.Sharding``
        for every leaf, a function ``shape -> Sharding`` (e.g.
        ``lambda shape: NamedSharding(mesh, jgrpo.train.fsdp_spec(shape, mesh.shape["fsdp"]))``),
        or a pytree of shardings with the params' structure (e.g. :func:`jgrpo.train.fsdp_shardings`
        of ``jax.eval_shape`` of the params), so a large model lands sharded without a full copy
        on one device.

    Raises:
      FileNotFoundError / ValueError: missing or pickle-only weights, a missing shard, a
        missing/unexpected tensor or a shape/dtype that the config does not imply (each names
        the file and the tensor). Everything is validated before the first tensor is read.
    """
    path = os.fspath(path)
    tensors = st.index_checkpoint(path)
    _check(config, tensors, path)
    dtype = jnp.dtype(config.dtype)
    shapes = param_shapes(config)
    flat_shardings = _flat_shardings(sharding, shapes)
    out: dict[str, Any] = {"layers": {}}
    for key, (names, _, transposed) in hf_names(config).items():
        arrays = [st.read_tensor(tensors[n]) for n in names]
        arrays = [a.T if transposed else a for a in arrays]
        host = (np.stack(arrays) if key.startswith("layers/") else arrays[0]).astype(dtype)
        dest = flat_shardings.get(key)
        value = jax.device_put(host, dest) if dest is not None else jnp.asarray(host)
        if key.startswith("layers/"):
            out["layers"][key.split("/", 1)[1]] = value
        else:
            out[key] = value
    return out


def _flat_shardings(sharding: Any, shapes: dict[str, Any]) -> dict[str, Any]:
    if sharding is None:
        return {}
    flat = {k: v for k, v in shapes.items() if k != "layers"}
    flat.update({f"layers/{k}": v for k, v in shapes["layers"].items()})
    if isinstance(sharding, jax.sharding.Sharding):
        return dict.fromkeys(flat, sharding)
    if callable(sharding):
        return {k: sharding(tuple(shape)) for k, shape in flat.items()}
    if not isinstance(sharding, dict) or set(sharding) != set(shapes):
        raise ValueError(f"sharding must be None, a Sharding, or a dict with the params' keys {sorted(shapes)}")
    out = {k: v for k, v in sharding.items() if k != "layers"}
    out.update({f"layers/{k}": v for k, v in sharding["layers"].items()})
    return out


def from_pretrained(
    path: str | os.PathLike, dtype: Any = jnp.float32, *, remat: bool = False, sharding: Any = None
) -> tuple[Callable[..., jax.Array], dict[str, Any]]:
    """Loads a local Qwen2/Qwen2.5, Qwen3 or Llama 3 checkpoint: ``(model_fn, params)``.

    ``model_fn(params, input_ids [B, L] int, attention_mask=None) -> logits [B, L, V]``
    float32 (see :mod:`jgrpo.models.transformer`); ``params`` is a dict of arrays in
    ``dtype`` (parameters and compute), so ``jax.jit(model_fn)`` and ``jax.grad`` work on it.
    ``model_fn.config`` is the :class:`ModelConfig`.

    Args:
      path: the checkpoint directory (config.json + safetensors).
      dtype: parameter and compute dtype (``jnp.float32``, ``jnp.bfloat16``, ``jnp.float16``);
        None keeps the checkpoint's (``dtype`` / ``torch_dtype`` in config.json).
      remat: rematerialise each layer in the backward pass.
      sharding: see :func:`load_params`.

    Raises:
      FileNotFoundError: no directory, no config.json, no safetensors weights (pickle-only
        checkpoints get the conversion command), a missing shard.
      ValueError: an unsupported architecture or feature, or tensors that do not match the config.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a checkpoint directory")
    config = load_config(path, dtype=dtype).replace(remat=bool(remat))
    params = load_params(config, path, sharding=sharding)
    return _model_fn(config), params
