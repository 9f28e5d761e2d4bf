"""Tiny random-weight Hugging Face checkpoints written by transformers (torch CPU) for the model tests.

Nothing is downloaded: each builder makes a 2-layer, width-64 model of one family with
transformers' own classes, perturbs every parameter (so norms, biases and both RoPE
halves matter), and writes it with ``save_pretrained`` (safetensors). The torch model is
returned too: it is the reference implementation the JAX logits are compared with.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise / np.sqrt(p.shape[-1]))


def build(
    family: str, path: str | os.PathLike, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
) -> torch.nn.Module:
    """Writes a tiny ``family`` ("qwen2", "qwen3", "llama") checkpoint to ``path``; returns the float32 torch model.

    ``dtype``: the dtype of the tensors on disk (the returned model holds the same values in float32).
    ``overrides``: config fields (e.g. ``tie_word_embeddings``, ``rope_parameters``, ``head_dim``).
    """
    cls_cfg, cls_model = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    }[family]
    kw = dict(TINY)
    if family == "qwen3":
        kw["head_dim"] = 24  # != hidden / heads = 16: the explicit head_dim must be read
    shard = overrides.pop("max_shard_size", "5GB")
    kw.update(overrides)
    config = cls_cfg(**kw)
    torch.manual_seed(seed)
    model = cls_model(config).eval()
    _perturb(model, seed)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.to(dtype).save_pretrained(os.fspath(path), max_shard_size=shard)
    # A fresh float32 model with the (possibly bf16-rounded) weights: .to(bfloat16) also rounds the
    # RoPE inv_freq buffer, which is not saved and which the reference must not inherit.
    reference = cls_model(config).eval()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return reference


def to_transformers4_layout(path: str | os.PathLike) -> dict:
    """Rewrites ``path/config.json`` in the transformers 4 layout: rope_theta, rope_scaling, torch_dtype."""
    file = os.path.join(os.fspath(path), "config.json")
    with open(file) as f:
        cfg = json.load(f)
    rope = dict(cfg.pop("rope_parameters", None) or {})
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg.pop("layer_types", None)
    with open(file, "w") as f:
        json.dump(cfg, f, indent=2)
    return cfg


def torch_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray | None = None, positions=None) -> np.ndarray:
    """The reference logits ``[B, L, V]`` (float32) of the transformers model."""
    with torch.no_grad():
        kw = {}
        if mask is not None:
            kw["attention_mask"] = torch.as_tensor(np.asarray(mask), dtype=torch.long)
        if positions is not None:
            kw["position_ids"] = torch.as_tensor(np.asarray(positions), dtype=torch.long)
        out = model(input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long), **kw)
    return out.logits.float().numpy()
