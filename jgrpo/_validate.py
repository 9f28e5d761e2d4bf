"""Private input checks shared by jgrpo.optim, jgrpo.policies and analysis.

Every check raises at trace time with a message that names the argument, what was
expected and what was received. Values are inspected only when they are concrete:
traced values (under ``jit``/``vmap``) pass through unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(*xs: Any) -> bool:
    """True when none of ``xs`` is a tracer (their values can be read at trace time)."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def shape_str(shape: Sequence[int]) -> str:
    """``(2, 4, 8)`` (and ``(3,)``, ``()``): a shape as the error messages print it."""
    return str(tuple(int(s) for s in shape))


def concrete_values(x: Any) -> np.ndarray | None:
    """``x`` as a float64 NumPy array when its value is known (not traced), else None."""
    if x is None or not is_concrete(x):
        return None
    try:
        return np.asarray(x, np.float64)
    except (TypeError, ValueError):
        return None


def check_number(
    name: str,
    x: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    allow_inf: bool = False,
) -> None:
    """Raises ValueError naming ``name`` when a concrete ``x`` (number or array) is NaN, infinite or out of range.

    Traced values pass through (they cannot be inspected at trace time).
    """
    a = concrete_values(x)
    if a is None or a.size == 0:
        return
    bad = np.isnan(a)
    if not allow_inf:
        bad |= np.isinf(a)
    fin = np.where(np.isfinite(a), a, 0.0)
    if lo is not None:
        bad |= (a <= lo) if lo_open else (a < lo)
    if hi is not None:
        bad |= (a >= hi) if hi_open else (a > hi)
    if integer:
        bad |= np.isfinite(a) & (fin != np.round(fin))
    if bad.any():
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        what = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
        kind = "an integer" if integer else "a number"
        value = x if np.ndim(x) == 0 else a[bad].reshape(-1)[:5]
        raise ValueError(f"{name} must be {kind} in {what}{' (or inf)' if allow_inf else ''}, got {value!r}")


def check_adam(b1: Any, b2: Any, eps: Any = 0.0, eps_root: Any = 0.0, *, b2_zero: bool = True) -> None:
    """Adam's hyperparameters with optax's names: b1 ∈ [0, 1), b2 ∈ [0, 1) (or (0, 1)), eps, eps_root ≥ 0."""
    check_number("b1", b1, lo=0.0, hi=1.0, hi_open=True)
    check_number("b2", b2, lo=0.0, hi=1.0, lo_open=not b2_zero, hi_open=True)
    check_number("eps", eps, lo=0.0)
    check_number("eps_root", eps_root, lo=0.0)


def check_int(owner: str, name: str, value: Any, low: int) -> int:
    """``value`` when it is a Python/NumPy int (not a bool) >= ``low``; else ValueError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}.{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_float(owner: str, name: str, value: Any, ok: bool, what: str) -> None:
    """ValueError naming ``owner.name`` unless ``value`` is a non-NaN Python number (not a bool) and ``ok``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or value != value
        or not ok
    ):
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}")


def check_static_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """``value`` as an int when it is a Python/NumPy int (not a bool) in [low, high]; else ValueError."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    where = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name} must be a static Python int {where}, got {value!r}")


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is a Python bool; else ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a Python bool, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` when it is one of ``choices``; else ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_shape(name: str, x: Any, shape: Sequence[int], dims: str, *, note: str = "") -> None:
    """``chex.assert_shape`` with a ValueError such as ``mask must have shape [G, T] = (4, 8), got (4,)``.

    ``note`` follows the expected shape (e.g. ``" like mask"``).
    """
    message = f"{name} must have shape {dims} = {shape_str(shape)}{note}, got {shape_str(np.shape(x))}"
    try:
        chex.assert_shape(x, tuple(shape), custom_message=message)
    except AssertionError:
        raise ValueError(message) from None


def check_min_rank(name: str, x: Any, min_rank: int, dims: str) -> tuple[int, ...]:
    """The shape of ``x`` when its rank is ≥ ``min_rank``; else ValueError naming ``dims``."""
    shape = tuple(np.shape(x))
    if len(shape) < min_rank:
        raise ValueError(f"{name} must have shape {dims} (rank >= {min_rank}), got shape {shape_str(shape)}")
    return shape


def scalar(name: str, x: Any, dtype: Any = jnp.float32) -> jax.Array:
    """``x`` as a rank-0 array of ``dtype`` (``chex.assert_rank``); ValueError naming ``name`` otherwise."""
    x = jnp.asarray(x)
    try:
        chex.assert_rank(x, 0)
    except AssertionError:
        raise ValueError(f"{name} must be a scalar, got shape {x.shape}") from None
    return x.astype(dtype)


def check_int_array(name: str, x: Any, *, min_rank: int, dims: str) -> tuple[int, ...]:
    """The shape of an integer array ``x`` of rank ≥ ``min_rank``; ValueError (rank) or TypeError (dtype)."""
    shape = check_min_rank(name, x, min_rank, dims)
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {dtype}")
    return shape


def check_ids(name: str, x: Any, vocab: int) -> None:
    """``0 <= x < vocab`` when the values are concrete (not under jit); else ValueError with the range found."""
    if not is_concrete(x) or np.size(x) == 0:
        return
    arr = np.asarray(x)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"{name} must hold token ids in [0, {vocab}) (vocab = {vocab}), got values in [{lo}, {hi}]")
