"""A dependency-free reader of safetensors checkpoints (single file or sharded with an index).

The format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {...}}``, then the raw little-endian tensor bytes. Reading it needs
only NumPy (and ``ml_dtypes`` for bfloat16, which JAX already depends on), so loading a
checkpoint on a TPU host does not need torch or the ``safetensors`` package.

Everything is validated before any tensor is read: :func:`index_checkpoint` parses every
header (and the shard index), checks offsets against the file sizes and returns a
name -> :class:`TensorInfo` map; tensors are then read with ``np.memmap`` (no copy
until converted). No pickle is ever read: a directory with only ``*.bin`` /
``*.pt`` weights is refused with the command that converts it.
"""

from __future__ import annotations

import json
import os
import struct
from typing import NamedTuple

import ml_dtypes
import numpy as np

__all__ = ["TensorInfo", "index_checkpoint", "read_tensor", "weight_files"]

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_MAX_HEADER = 100 * 1024 * 1024
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"

CONVERT_HINT = (
    "convert it once with transformers (torch installed): "
    "AutoModelForCausalLM.from_pretrained(src, torch_dtype='auto').save_pretrained(dst, safe_serialization=True), "
    "then load dst"
)


class TensorInfo(NamedTuple):
    """Where one tensor lives: file, dtype, shape and the absolute byte range in the file."""

    file: str
    dtype: np.dtype
    dtype_name: str
    shape: tuple[int, ...]
    begin: int
    end: int


def weight_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint directory, from its index when sharded.

    Raises:
      FileNotFoundError: the directory does not exist or has no safetensors weights
        (the message says how to convert pickle ``.bin`` weights, which are never read).
      ValueError: a malformed index.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a checkpoint directory")
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): {e}") from e
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: 'weight_map' must be a non-empty object name -> shard file")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if missing:
            names = sorted(k for k, v in weight_map.items() if v == missing[0])
            raise FileNotFoundError(
                f"{os.path.join(path, missing[0])}: shard listed in {INDEX} is missing "
                f"(it holds {len(names)} tensors, e.g. {names[0]!r}); missing shards: {missing}"
            )
        return [os.path.join(path, f) for f in files]
    single = os.path.join(path, SINGLE)
    if os.path.isfile(single):
        return [single]
    others = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if others:
        return [os.path.join(path, f) for f in others]
    pickles = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if pickles:
        raise FileNotFoundError(
            f"{path}: only pickle weights ({', '.join(pickles)}); jgrpo loads safetensors only, because unpickling "
            f"runs arbitrary code. To use this checkpoint, {CONVERT_HINT}"
        )
    raise FileNotFoundError(f"{path}: no weights ({SINGLE}, {INDEX} or *.safetensors) in the checkpoint directory")


def _read_header(file: str) -> dict[str, TensorInfo]:
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{file}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"{file}: not a safetensors file (header length {n} for a file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{file}: corrupt safetensors header (not a JSON object)")
    out = {}
    base = 8 + n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = meta["dtype"], tuple(int(s) for s in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{file}: tensor {name!r} has a malformed header entry {meta!r}") from e
        if dtype_name not in _DTYPES:
            raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        dtype = _DTYPES[dtype_name]
        want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != want or begin < 0 or base + end > size:
            raise ValueError(
                f"{file}: tensor {name!r} ({dtype_name}, shape {shape}) has byte range [{begin}, {end}) of "
                f"{end - begin} bytes, expected {want} within the file's {size - base} data bytes (truncated file?)"
            )
        out[name] = TensorInfo(file, dtype, dtype_name, shape, base + begin, base + end)
    return out


def index_checkpoint(path: str) -> dict[str, TensorInfo]:
    """Every tensor of the checkpoint directory ``path``: name -> :class:`TensorInfo`.

    Reads only headers. When an index is present, checks that each tensor it lists is in
    the shard it names.

    Raises:
      FileNotFoundError / ValueError: see :func:`weight_files`; a corrupt or truncated
        header; a tensor present in two files; an index entry whose shard lacks it.
    """
    path = os.fspath(path)
    files = weight_files(path)
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in _read_header(file).items():
            if name in tensors:
                raise ValueError(f"tensor {name!r} is in two files: {tensors[name].file} and {file}")
            tensors[name] = info
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        for name, shard in weight_map.items():
            info = tensors.get(name)
            if info is None or os.path.basename(info.file) != shard:
                raise ValueError(f"{os.path.join(path, shard)}: tensor {name!r} listed in {INDEX} is not in this shard")
    return tensors


def read_tensor(info: TensorInfo) -> np.ndarray:
    """The tensor as a read-only NumPy array backed by a memory map of its file (no copy)."""
    if info.end == info.begin:
        return np.zeros(info.shape, info.dtype)
    mm = np.memmap(info.file, dtype=np.uint8, mode="r", offset=info.begin, shape=(info.end - info.begin,))
    return mm.view(info.dtype).reshape(info.shape)
