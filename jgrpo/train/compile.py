"""Compiler options as cache keys, and the jit used by the warm-up, evaluation and outer step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax


def _options(compiler_options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Compiler options as a hashable, sorted tuple (a cache key)."""
    if compiler_options is None:
        return ()
    if not isinstance(compiler_options, Mapping):
        raise TypeError(f"compiler_options must be a mapping or None, got {type(compiler_options).__name__}")
    return tuple(sorted(compiler_options.items()))


def _jit(fn: Callable, options: tuple[tuple[str, Any], ...], **kwargs: Any) -> Callable:
    return jax.jit(fn, compiler_options=dict(options) if options else None, **kwargs)
