"""A tiny random-weight Qwen2 checkpoint directory written with NumPy (no torch, no transformers, no download).

``config.json`` in the transformers layout, one ``model.safetensors`` (written here: an 8-byte header
length, the JSON header, the raw little-endian float32 data), and the tiny byte-level BPE tokenizer of
``tests/test_tasks.py`` (trained on Countdown text). Tensor names and on-disk shapes come from
``jgrpo.models.loading.hf_names``, so the loader reads it as it reads a transformers checkpoint (the
torch-written one of ``tests/hf_checkpoints.py`` is checked against transformers' logits elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jgrpo.models.config import config_from_hf
from jgrpo.models.loading import hf_names

QWEN2_TINY = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "vocab_size": 320,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
}


def _save_safetensors(tensors: dict[str, np.ndarray], file: Path) -> None:
    header, offset, blobs = {}, 0, []
    for name, x in tensors.items():
        data = np.ascontiguousarray(x, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(x.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    file.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def write(path: Path, *, seed: int = 0, **overrides) -> Path:
    """Writes the checkpoint (``QWEN2_TINY`` with ``overrides``) and the tokenizer into ``path``; returns it."""
    from tests.test_tasks import make_tokenizer

    path = Path(path)
    make_tokenizer(path)
    cfg = {**QWEN2_TINY, **overrides}
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)
    tensors = {}
    for names, shape, _ in hf_names(config_from_hf(cfg)).values():
        for name in names:
            if "norm" in name:
                tensors[name] = 1.0 + 0.1 * rng.standard_normal(shape)
            elif name.endswith("bias"):
                tensors[name] = 0.1 * rng.standard_normal(shape)
            else:
                tensors[name] = rng.standard_normal(shape) / np.sqrt(shape[-1])
    _save_safetensors(tensors, path / "model.safetensors")
    return path
