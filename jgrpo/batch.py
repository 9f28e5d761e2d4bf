"""The group batch pytree and its input checks."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from jgrpo._validate import check_shape, is_concrete, shape_str

_FIELDS = ("mask", "logp_old", "rewards", "logp_ref", "tokens", "entropy", "advantages")


def as_array(name: str, value: Any) -> Any:
    """``value`` unchanged, or a Python list/tuple converted to a NumPy array (a short error if ragged)."""
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{name}: a Python {type(value).__name__} could not be converted to an array "
                f"(ragged nesting or non-numeric entries): {type(e).__name__}"
            ) from None
    return value


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupBatch:
    """One batch of prompts, each with a group of G completions of T padded tokens.

    Leading batch dims ``...`` are arbitrary (``[B]``, ``[]``, ``[B1, B2]``); the
    loss averages over them. Python lists are converted to arrays.

    Attributes:
      mask: ``[..., G, T]``, 1 on completion tokens, 0 on padding (any dtype; only 0 and 1).
      logp_old: ``[..., G, T]`` log pi_old of the sampled tokens (float, <= 0).
      rewards: ``[..., G]`` scalar reward per completion, or ``[..., G, K]`` for K
        reward functions (combined by ``MethodSpec.multi_reward``).
      logp_ref: optional ``[..., G, T]`` log pi_ref, needed by KL regularizers.
      tokens: optional ``[..., G, T]`` int token ids (shared prefixes, GTPO).
      entropy: optional ``[..., G, T]`` per-token policy entropy (GTPO, TRL's entropy options).
      advantages: optional ``[..., G]`` advantages overriding the computed A_i
        (still multiplied by the preset's scale, e.g. 1/sigma).
    """

    mask: ArrayLike
    logp_old: ArrayLike
    rewards: ArrayLike
    logp_ref: ArrayLike | None = None
    tokens: ArrayLike | None = None
    entropy: ArrayLike | None = None
    advantages: ArrayLike | None = None

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, as_array(f"GroupBatch.{name}", value))

    @property
    def shape(self) -> tuple[int, ...]:
        """``(..., G, T)``."""
        return tuple(np.shape(self.mask))

    def replace(self, **fields: Any) -> GroupBatch:
        """A copy with some fields replaced (``dataclasses.replace``)."""
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown GroupBatch field(s) {unknown}; fields: {', '.join(_FIELDS)}")
        return dataclasses.replace(self, **fields)


# The small input checks are jgrpo._validate's (one copy for jgrpo and analysis).
_is_concrete = is_concrete
_shape_str = shape_str


def logp_tolerance(dtype: Any) -> float:
    """How far above 0 a log-probability may be from rounding alone: 4 * eps of its dtype (float32: 4.8e-7)."""
    return 4.0 * float(jnp.finfo(dtype).eps)


def check_inputs(
    logp: ArrayLike,
    batch: GroupBatch,
    *,
    need_ref: bool = False,
    need_tokens: bool = False,
    need_entropy: bool = False,
    min_group: int = 1,
    min_group_reason: str = "this method divides by a group reward std",
) -> None:
    """Checks ranks, shapes and dtypes at trace time; values when they are concrete.

    Value checks (concrete inputs only; under jit use :func:`jgrpo.checked_loss`):
    the mask holds only 0 and 1; log-probabilities on completion tokens are finite and
    <= 0 (up to :func:`logp_tolerance`); entropies are finite; rewards are finite.

    Raises:
      TypeError: a log-probability array is not floating point, tokens not integer.
      ValueError: a shape or rank mismatch, a missing optional field, a group
        too small, or a bad value (the message names the argument, the count and
        the first index).
    """
    if not isinstance(batch, GroupBatch):
        raise TypeError(f"batch must be a jgrpo.GroupBatch, got {type(batch).__name__}")
    mask_shape = tuple(np.shape(batch.mask))
    if len(mask_shape) < 2:
        raise ValueError(f"mask must have shape [..., G, T] (rank >= 2), got shape {_shape_str(mask_shape)}")
    lead, (g, _) = mask_shape[:-2], mask_shape[-2:]
    dims = "[" + ", ".join(["B"] * len(lead) + ["G", "T"]) + "]"
    expected = _shape_str(mask_shape)
    arrays = {"logp": logp, "logp_old": batch.logp_old}
    for opt in ("logp_ref", "tokens", "entropy"):
        if getattr(batch, opt) is not None:
            arrays[opt] = getattr(batch, opt)
    for name, arr in arrays.items():
        check_shape(name, arr, mask_shape, dims, note=" like mask")
    for name in ("logp", "logp_old", "logp_ref", "entropy"):
        if name in arrays and not jnp.issubdtype(jnp.result_type(arrays[name]), jnp.floating):
            raise TypeError(f"{name} must be a floating-point array, got dtype {jnp.result_type(arrays[name])}")
    if "tokens" in arrays and not jnp.issubdtype(jnp.result_type(arrays["tokens"]), jnp.integer):
        raise TypeError(f"tokens must be an integer array, got dtype {jnp.result_type(arrays['tokens'])}")
    rshape = tuple(np.shape(batch.rewards))
    if rshape != mask_shape[:-1] and not (len(rshape) == len(mask_shape) and rshape[:-1] == mask_shape[:-1]):
        gdims = "[" + ", ".join(["B"] * len(lead) + ["G"]) + "]"
        raise ValueError(
            f"rewards must have shape {gdims} = {_shape_str(mask_shape[:-1])} (or {gdims[:-1]}, K] for K reward "
            f"functions), got {_shape_str(rshape)}"
        )
    if not jnp.issubdtype(jnp.result_type(batch.rewards), jnp.number) or jnp.issubdtype(
        jnp.result_type(batch.rewards), jnp.complexfloating
    ):
        raise TypeError(f"rewards must be a real numeric array, got dtype {jnp.result_type(batch.rewards)}")
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
        raise ValueError(
            "this method needs batch.entropy (per-token entropies: GTPO's delta_i or R, TRL's "
            "top_entropy_quantile or entropy_coef)"
        )
    if g < min_group:
        raise ValueError(
            f"{min_group_reason} and needs a group size G >= {min_group}; got G = {g} (mask shape {expected})"
        )
    if all(_is_concrete(x) for x in (batch.mask, *arrays.values(), batch.rewards)):
        for ok, message in value_problems(logp, batch):
            if not ok:
                raise ValueError(message)


def _first_bad(bad: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{int(bad.sum())} completion token(s), first at index {idx}"


def value_problems(logp: ArrayLike, batch: GroupBatch) -> list[tuple[bool, str]]:
    """``(ok, message)`` per value check on concrete inputs (NumPy), with counts and first indices."""
    out = []
    mask = np.asarray(batch.mask)
    binary = (mask == 0) | (mask == 1)
    if not binary.all():
        bad = ~binary
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        out.append(
            (
                False,
                f"mask must hold only 0 and 1 (1 on completion tokens); got {int(bad.sum())} other value(s), "
                f"first {mask[first]!r} at index {first}",
            )
        )
        return out
    on = mask != 0
    for name, arr in (("logp", logp), ("logp_old", batch.logp_old), ("logp_ref", batch.logp_ref)):
        if arr is None:
            continue
        dtype = jnp.result_type(arr)
        a = np.asarray(arr, dtype=np.float64)
        nan = np.isnan(a) & on
        if nan.any():
            out.append((False, f"{name} has NaN on {_first_bad(nan)}"))
            continue
        inf = np.isinf(a) & on
        if inf.any():
            sign = "+inf" if (a[inf] > 0).any() else "-inf"
            out.append(
                (
                    False,
                    f"{name} has {sign} on {_first_bad(inf)}: a sampled token's log-probability must be finite "
                    "(-inf means probability 0, impossible for a sampled token; clamp it, e.g. to -1e4, if intended)",
                )
            )
            continue
        pos = (a > logp_tolerance(dtype)) & on
        if pos.any():
            first = tuple(int(i) for i in np.argwhere(pos)[0])
            out.append(
                (
                    False,
                    f"{name} must be <= 0 (a log-probability); got positive values on {_first_bad(pos)} "
                    f"(value {a[first]:.6g}; pass log-probabilities, not probabilities or logits)",
                )
            )
    if batch.entropy is not None:
        h = np.asarray(batch.entropy, dtype=np.float64)
        bad = ~np.isfinite(h) & on
        if bad.any():
            out.append((False, f"entropy must be finite; got NaN/inf on {_first_bad(bad)}"))
    r = np.asarray(batch.rewards, dtype=np.float64)
    if not np.isfinite(r).all():
        out.append((False, f"rewards must be finite; got {int((~np.isfinite(r)).sum())} non-finite value(s)"))
    return out


def checkify_inputs(logp: jax.Array, batch: GroupBatch) -> None:
    """The value checks of :func:`value_problems` as ``checkify.check`` calls (traced inputs).

    Functionalise with ``jax.experimental.checkify.checkify`` (as :func:`jgrpo.checked_loss` does).
    """
    mask = jnp.asarray(batch.mask)
    checkify.check(jnp.all((mask == 0) | (mask == 1)), "mask must hold only 0 and 1 (1 on completion tokens)")
    on = mask != 0
    for name, arr in (("logp", logp), ("logp_old", batch.logp_old), ("logp_ref", batch.logp_ref)):
        if arr is None:
            continue
        a = jnp.asarray(arr)
        checkify.check(~jnp.any(jnp.isnan(a) & on), f"{name} has NaN on completion tokens")
        checkify.check(~jnp.any(jnp.isinf(a) & on), f"{name} has +-inf on completion tokens")
        tol = logp_tolerance(a.dtype)
        checkify.check(
            ~jnp.any((a > tol) & on),
            f"{name} must be <= 0 (a log-probability); got positive values on completion tokens",
        )
    if batch.entropy is not None:
        h = jnp.asarray(batch.entropy)
        checkify.check(~jnp.any(~jnp.isfinite(h) & on), "entropy must be finite on completion tokens")
    checkify.check(jnp.all(jnp.isfinite(jnp.asarray(batch.rewards))), "rewards must be finite")
