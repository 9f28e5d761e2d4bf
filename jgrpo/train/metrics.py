"""Per-step metrics of the training loop computed inside the jitted step, and the metrics-hook protocol.

The loop's own metrics use jgrpo only (the escape of ratios beyond the clip bound is
:func:`jgrpo.optim.clip_excess`'s clipped set). Further statistics, e.g. the shared-prefix
aggregates of Prop. 1 (``experiments.shared.metrics.prefix_metrics``, built on
``analysis.prefix``), come in through a :class:`MetricsFn` hook passed to :func:`jgrpo.train.train`:
jgrpo never imports ``analysis``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jgrpo import optim
from jgrpo.batch import GroupBatch
from jgrpo.methods import MethodSpec

__all__ = ["MetricsFn", "escape_metrics", "masked_mean"]


class MetricsFn(Protocol):
    """``(spec, logp [B, G, T], batch) -> {name: scalar}``, traced inside the outer step.

    Called once per outer step at the first inner step (``logp`` = log π_old, the batch's
    ``logp_old``); the values join the step's metrics (cast to float32). Must be a hashable
    object (a module-level function): it keys the compiled step.
    """

    def __call__(self, spec: MethodSpec, logp: jax.Array, batch: GroupBatch) -> dict[str, Any]: ...


def masked_mean(x: jax.Array, where: jax.Array) -> jax.Array:
    """Mean of ``x`` over ``where``; NaN when ``where`` is empty."""
    w = where.astype(jnp.float32)
    n = jnp.sum(w)
    return jnp.where(n > 0, jnp.sum(jnp.where(where, x, 0.0)) / jnp.maximum(n, 1.0), jnp.nan)


def escape_metrics(spec: MethodSpec, ratio: jax.Array, advantages: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Tokens whose ratio ``[..., G, T]`` is beyond the clip bound in the advantage-favoured direction (Prop. 3).

    ``advantages`` are ``[..., G]`` (one per completion), ``mask`` ``[..., G, T]``.

    ``escape_frac_high`` / ``escape_frac_low``: fractions of completion tokens with A > 0 and
    s > 1 + ε_high / A < 0 and s < 1 − ε_low (:func:`jgrpo.optim.clip_excess`); ``escape_frac``
    their sum; ``escape_max`` the largest excess beyond the bound (0 when none).
    """
    m = mask.astype(bool)
    e = optim.clip_excess(ratio, advantages[..., None], m, eps_low=spec.eps_low, eps_high=spec.eps_high)
    n = jnp.maximum(jnp.sum(m), 1)
    hi, lo = jnp.sum(e.high > 0) / n, jnp.sum(e.low > 0) / n
    return {
        "escape_frac_high": hi,
        "escape_frac_low": lo,
        "escape_frac": hi + lo,
        "escape_max": jnp.maximum(jnp.maximum(jnp.max(e.high), jnp.max(e.low)), 0.0),
    }
