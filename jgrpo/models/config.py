"""Static configuration of the Hugging Face decoder families (Qwen2/Qwen2.5, Qwen3, Llama 3) and config.json parsing.

A :class:`ModelConfig` is frozen and hashable, so it is a static argument under ``jax.jit``
and one compiled program serves every parameter value. :func:`config_from_hf` reads the
``config.json`` of a checkpoint in either transformers layout:

* transformers 4: top-level ``rope_theta``, ``rope_scaling`` (``{"rope_type" | "type": ...}``)
  and ``torch_dtype``;
* transformers 5: ``rope_parameters`` (``{"rope_type": ..., "rope_theta": ...}``) and ``dtype``.

Defaults for absent keys are transformers' own (``LlamaConfig``, ``Qwen2Config``,
``Qwen3Config`` of transformers 5): RMSNorm eps 1e-6, RoPE theta 10000, untied
embeddings, no attention or MLP bias (Qwen2 always has q/k/v biases), ``head_dim``
``hidden_size // num_attention_heads`` (Qwen3: 128).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ARCHITECTURES", "ModelConfig", "config_from_hf", "load_config", "rope_inv_freq"]

# model_type -> the architecture names transformers writes for it.
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM",),
    "qwen2": ("Qwen2ForCausalLM",),
    "qwen3": ("Qwen3ForCausalLM",),
}
_ROPE_TYPES = ("default", "linear", "llama3")
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "fp32": "float32", "bf16": "bfloat16"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One decoder-only transformer of the Llama family (frozen, hashable, keyword-only).

    Attributes:
      model_type: ``"llama"``, ``"qwen2"`` or ``"qwen3"``.
      vocab_size: V.
      hidden_size: D, the residual width.
      intermediate_size: F, the SwiGLU MLP width.
      num_layers: layers.
      num_heads: query heads.
      num_kv_heads: key/value heads (GQA: ``num_heads`` is a multiple of it).
      head_dim: per-head width (``hidden_size // num_heads`` unless the config says otherwise).
      rms_norm_eps: RMSNorm epsilon.
      rope_theta: RoPE base.
      rope_type: ``"default"``, ``"linear"`` (positions divided by ``rope_factor``) or ``"llama3"``
        (Llama 3.1's frequency-dependent scaling).
      rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_len: the
        scaling parameters (``llama3``: factor, low/high_freq_factor, original_max_position_embeddings).
      max_position_embeddings: the context length the checkpoint declares (not enforced).
      tie_embeddings: the output projection is the input embedding (``tie_word_embeddings``).
      qkv_bias: q/k/v projections have biases (Qwen2; ``attention_bias`` for Llama/Qwen3).
      o_bias: the output projection has a bias (``attention_bias`` for Llama/Qwen3).
      mlp_bias: the MLP projections have biases (Llama's ``mlp_bias``).
      qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Qwen3).
      dtype: parameter and compute dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``).
      remat: rematerialise each layer in the backward pass (``jax.checkpoint``): activations of
        one layer at a time instead of all of them, for about one more forward pass of compute.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    max_position_embeddings: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        own = "ModelConfig"
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"{own}.model_type must be one of {sorted(ARCHITECTURES)}, got {self.model_type!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{own}.{name} must be an int >= 1, got {value!r}")
        if (
            isinstance(self.head_dim, bool)
            or not isinstance(self.head_dim, int)
            or self.head_dim < 2
            or self.head_dim % 2
        ):
            raise ValueError(f"{own}.head_dim must be an even int >= 2 (RoPE rotates pairs), got {self.head_dim!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{own}.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads}) (GQA)"
            )
        for name in ("rms_norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{own}.{name} must be a finite number > 0, got {value!r}")
        if self.rope_type not in _ROPE_TYPES:
            raise ValueError(f"{own}.rope_type must be one of {_ROPE_TYPES}, got {self.rope_type!r}")
        if self.rope_type == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor:
            raise ValueError(
                f"{own}: llama3 RoPE needs high_freq_factor > low_freq_factor, got "
                f"{self.rope_high_freq_factor} <= {self.rope_low_freq_factor}"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"{own}.dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
        for name in ("tie_embeddings", "qkv_bias", "o_bias", "mlp_bias", "qk_norm", "remat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{own}.{name} must be a bool, got {getattr(self, name)!r}")

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **overrides)

    @property
    def num_params(self) -> int:
        """Parameter count (the embedding counted once when tied)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        layer = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d
        layer += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + (2 * f + d) * self.mlp_bias + 2 * hd * self.qk_norm
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + embed + d

    def flops_per_token(self, context: int) -> int:
        """Forward matmul FLOPs per token (2 per multiply-add) at an attended context of ``context`` keys.

        Counts the q/k/v/o, MLP and output projections and the two attention matmuls
        (``QK^T`` and ``PV`` over ``context`` keys); norms, RoPE and softmax are ignored.
        """
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        layer = 2 * d * (q + 2 * kv) + 2 * q * d + 6 * d * f + 4 * context * q
        return self.num_layers * layer + 2 * d * self.vocab_size

    @classmethod
    def tiny(cls, model_type: str = "qwen2", **overrides: Any) -> ModelConfig:
        """A 2-layer, width-64 model of the given family (vocab 128, 4 heads, 2 KV heads): for tests."""
        kw = dict(
            model_type=model_type,
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rope_theta=10000.0,
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
        )
        return cls(**{**kw, **overrides})

    @classmethod
    def qwen2_5_0_5b(cls, **overrides: Any) -> ModelConfig:
        """The shape of Qwen2.5-0.5B (its config.json): 24 layers, width 896, 14/2 heads, vocab 151936, tied."""
        kw = dict(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_layers=24,
            num_heads=14,
            num_kv_heads=2,
            head_dim=64,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            max_position_embeddings=32768,
            tie_embeddings=True,
            qkv_bias=True,
        )
        return cls(**{**kw, **overrides})


def _get(cfg: Mapping[str, Any], key: str, default: Any, where: str) -> Any:
    value = cfg.get(key, default)
    if value is None:
        return default
    return value


def _require(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{where}: the config has no {key!r} (required for a {cfg.get('model_type')} model)")
    return cfg[key]


def _rope(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """RoPE settings from either layout: ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4)."""
    params = cfg.get("rope_parameters")
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"{where}: rope_parameters must be a JSON object, got {params!r}")
    scaling = cfg.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, Mapping):
        raise ValueError(f"{where}: rope_scaling must be a JSON object or null, got {scaling!r}")
    if params and "rope_theta" not in params and any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError(f"{where}: per-layer-type rope_parameters are not supported (got keys {sorted(params)})")
    merged = dict(scaling or {})
    merged.update(params or {})
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(
            f"{where}: RoPE type {rope_type!r} is not supported; supported: {', '.join(_ROPE_TYPES)} "
            "(yarn, dynamic and longrope are not implemented)"
        )
    if merged.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) not in (1, 1.0):
        raise ValueError(f"{where}: partial_rotary_factor != 1 is not supported")
    out = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        if "factor" not in merged:
            raise ValueError(f"{where}: RoPE type {rope_type!r} needs a 'factor'")
        out["rope_factor"] = float(merged["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in merged:
                raise ValueError(f"{where}: llama3 RoPE scaling needs {key!r}")
        out["rope_low_freq_factor"] = float(merged["low_freq_factor"])
        out["rope_high_freq_factor"] = float(merged["high_freq_factor"])
        orig = merged.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
        if orig is None:
            raise ValueError(f"{where}: llama3 RoPE scaling needs 'original_max_position_embeddings'")
        out["rope_original_max_len"] = int(orig)
    return out


def config_from_hf(cfg: Mapping[str, Any], *, dtype: Any = None, where: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` from a parsed Hugging Face ``config.json`` (either transformers layout).

    Args:
      cfg: the parsed JSON object.
      dtype: the parameter/compute dtype; None uses the checkpoint's ``dtype`` / ``torch_dtype``
        (float32 when absent).
      where: the file name used in error messages.

    Raises:
      ValueError: an unsupported architecture or feature (sliding-window attention, a RoPE
        type other than default/linear/llama3, an activation other than SiLU), or a missing
        required key, each naming the file and the key.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must hold a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{where}: unsupported architecture model_type={model_type!r} (architectures={archs}); jgrpo.models "
            f"supports {', '.join(sorted(ARCHITECTURES))} ({', '.join(a for v in ARCHITECTURES.values() for a in v)})"
        )
    bad = [a for a in archs if a not in ARCHITECTURES[model_type]]
    if bad:
        raise ValueError(
            f"{where}: unsupported architecture {bad} for model_type {model_type!r}; "
            f"only {list(ARCHITECTURES[model_type])} (a causal LM head) is supported"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}: hidden_act {act!r} is not supported (only 'silu', SwiGLU)")
    if cfg.get("use_sliding_window", False):
        raise ValueError(f"{where}: use_sliding_window=true (sliding-window attention) is not supported")
    layer_types = cfg.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise ValueError(f"{where}: layer_types other than 'full_attention' are not supported, got {set(layer_types)}")
    hidden = int(_require(cfg, "hidden_size", where))
    heads = int(_require(cfg, "num_attention_heads", where))
    default_head_dim = 128 if model_type == "qwen3" else hidden // heads
    head_dim = cfg.get("head_dim") or default_head_dim
    attention_bias = bool(cfg.get("attention_bias", False))
    if dtype is None:
        dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    dtype_name = _dtype_name(dtype, where)
    try:
        return _build(
            model_type=model_type,
            vocab_size=int(_require(cfg, "vocab_size", where)),
            hidden_size=hidden,
            intermediate_size=int(_require(cfg, "intermediate_size", where)),
            num_layers=int(_require(cfg, "num_hidden_layers", where)),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(_get(cfg, "rms_norm_eps", 1e-6, where)),
            max_position_embeddings=int(_get(cfg, "max_position_embeddings", 2048, where)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            dtype=dtype_name,
            **_rope(cfg, where),
        )
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _build(**kw: Any) -> ModelConfig:
    return ModelConfig(**kw)


def _dtype_name(dtype: Any, where: str) -> str:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None) or str(np.dtype(dtype))
    name = str(name).replace("torch.", "")
    if name not in _DTYPES:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name not in _DTYPES:
        raise ValueError(f"{where}: dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return _DTYPES[name]


def load_config(path: str | os.PathLike, *, dtype: Any = None) -> ModelConfig:
    """Reads ``path/config.json`` (or ``path`` itself when it is the file) into a :class:`ModelConfig`.

    Raises:
      FileNotFoundError: no config.json.
      ValueError: invalid JSON or an unsupported configuration (see :func:`config_from_hf`).
    """
    path = os.fspath(path)
    file = path if os.path.isfile(path) else os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no config.json in the checkpoint directory {path}")
    try:
        with open(file, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    return config_from_hf(cfg, dtype=dtype, where=file)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies ``[head_dim // 2]`` float32, with the config's scaling.

    ``inv_freq_j = theta^(-2j / head_dim)``; ``linear`` divides them by ``factor``; ``llama3``
    (Llama 3.1) divides the low frequencies (wavelength above ``original_max_len /
    low_freq_factor``) by ``factor``, keeps the high ones (wavelength below
    ``original_max_len / high_freq_factor``) and interpolates in between with
    ``s = (original_max_len / wavelength - low) / (high - low)``:
    ``(1 - s) inv_freq / factor + s inv_freq`` (transformers' ``_compute_llama3_parameters``).
    Computed in float64 and rounded once to float32.
    """
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if config.rope_type == "linear":
        inv = inv / config.rope_factor
    elif config.rope_type == "llama3":
        factor, low, high = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
        old = config.rope_original_max_len
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv.astype(np.float32)
