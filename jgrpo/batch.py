"""The group batch pytree and its input checks."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupBatch:
    """One batch of prompts, each with a group of G completions of T padded tokens.

    Leading batch dims ``...`` are arbitrary (``[B]``, ``[]``, ``[B1, B2]``); the
    loss averages over them.

    Attributes:
      mask: ``[..., G, T]``, 1 on completion tokens, 0 on padding (any dtype).
      logp_old: ``[..., G, T]`` log pi_old of the sampled tokens (float).
      rewards: ``[..., G]`` scalar reward per completion.
      logp_ref: optional ``[..., G, T]`` log pi_ref, needed by KL regularizers.
      tokens: optional ``[..., G, T]`` int token ids (shared prefixes, GTPO).
      entropy: optional ``[..., G, T]`` per-token policy entropy (GTPO).
      advantages: optional ``[..., G]`` advantages overriding the computed A_i
        (still multiplied by the preset's scale, e.g. 1/sigma).
    """

    mask: Any
    logp_old: Any
    rewards: Any
    logp_ref: Any = None
    tokens: Any = None
    entropy: Any = None
    advantages: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        """``(..., G, T)``."""
        return tuple(np.shape(self.mask))


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _shape_str(shape: tuple[int, ...]) -> str:
    return str(tuple(int(s) for s in shape))


def check_inputs(
    logp: Any,
    batch: GroupBatch,
    *,
    need_ref: bool = False,
    need_tokens: bool = False,
    need_entropy: bool = False,
    min_group: int = 1,
) -> None:
    """Checks ranks, shapes and dtypes at trace time; NaNs when values are concrete.

    Raises:
      TypeError: a log-probability array is not floating point, tokens not integer.
      ValueError: a shape or rank mismatch, a missing optional field, a group
        too small, or NaN log-probabilities on completion tokens.
    """
    if not isinstance(batch, GroupBatch):
        raise TypeError(f"batch must be a jgrpo.GroupBatch, got {type(batch).__name__}")
    mask_shape = tuple(np.shape(batch.mask))
    if len(mask_shape) < 2:
        raise ValueError(f"mask must have shape [..., G, T] (rank >= 2), got shape {_shape_str(mask_shape)}")
    lead, (g, t) = mask_shape[:-2], mask_shape[-2:]
    dims = "[" + ", ".join(["B"] * len(lead) + ["G", "T"]) + "]"
    expected = _shape_str(mask_shape)
    arrays = {"logp": logp, "logp_old": batch.logp_old}
    for opt in ("logp_ref", "tokens", "entropy"):
        if getattr(batch, opt) is not None:
            arrays[opt] = getattr(batch, opt)
    for name, arr in arrays.items():
        shape = tuple(np.shape(arr))
        if shape != mask_shape:
            raise ValueError(f"{name} must have shape {dims} = {expected} like mask, got {_shape_str(shape)}")
    for name in ("logp", "logp_old", "logp_ref", "entropy"):
        if name in arrays and not jnp.issubdtype(jnp.result_type(arrays[name]), jnp.floating):
            raise TypeError(f"{name} must be a floating-point array, got dtype {jnp.result_type(arrays[name])}")
    if "tokens" in arrays and not jnp.issubdtype(jnp.result_type(arrays["tokens"]), jnp.integer):
        raise TypeError(f"tokens must be an integer array, got dtype {jnp.result_type(arrays['tokens'])}")
    rshape = tuple(np.shape(batch.rewards))
    if rshape != mask_shape[:-1]:
        gdims = "[" + ", ".join(["B"] * len(lead) + ["G"]) + "]"
        raise ValueError(f"rewards must have shape {gdims} = {_shape_str(mask_shape[:-1])}, got {_shape_str(rshape)}")
    if batch.advantages is not None and tuple(np.shape(batch.advantages)) != mask_shape[:-1]:
        raise ValueError(
            f"advantages must have shape {_shape_str(mask_shape[:-1])} like rewards, "
            f"got {_shape_str(tuple(np.shape(batch.advantages)))}"
        )
    if need_ref and batch.logp_ref is None:
        raise ValueError("this method has a KL regularizer with beta > 0: batch.logp_ref is required")
    if need_tokens and batch.tokens is None:
        raise ValueError("this method needs batch.tokens (token ids) to find shared/conflict tokens")
    if need_entropy and batch.entropy is None:
        raise ValueError("this method needs batch.entropy (per-token entropies)")
    if g < min_group:
        raise ValueError(
            f"this method divides by a group reward std and needs a group size G >= {min_group}; "
            f"got G = {g} (mask shape {expected})"
        )
    del t
    # Value checks only when values are available (not under jit).
    for name in ("logp", "logp_old", "logp_ref"):
        arr = arrays.get(name)
        if arr is None or not _is_concrete(arr) or not _is_concrete(batch.mask):
            continue
        bad = np.isnan(np.asarray(arr, dtype=np.float32)) & (np.asarray(batch.mask) != 0)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} has NaN on {int(bad.sum())} completion token(s), first at index {idx}")
    if _is_concrete(batch.rewards):
        r = np.asarray(batch.rewards, dtype=np.float64)
        if not np.isfinite(r).all():
            raise ValueError(f"rewards must be finite; got {int((~np.isfinite(r)).sum())} non-finite value(s)")
