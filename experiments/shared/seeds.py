"""Summaries over seeds: 95% intervals over the finite values, paired intervals, their text, figure bands.

A seed whose statistic is undefined (NaN: e.g. a run that gained no expected reward) is left out
of an interval; the interval's ``n`` says how many seeds are behind it, and the claims decide
nothing below :data:`experiments.common.MIN_SEEDS` (:func:`experiments.common.decided`).
Every interval here is :func:`experiments.stats.mean_ci` (Student t over seeds) on the kept values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from experiments.stats import Interval, mean_ci, paired_diff_ci

__all__ = ["band", "finite_ci", "fmt_ci", "lies_above", "paired_finite_ci", "plot_band"]


def finite_ci(values: Sequence[float] | np.ndarray) -> Interval:
    """:func:`mean_ci` over the finite values; with fewer than 2 of them no interval: (−inf, inf) around NaN."""
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    return mean_ci(v) if v.size >= 2 else Interval(-math.inf, math.inf, math.nan, v.size)


def paired_finite_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Interval:
    """:func:`paired_diff_ci` of mean(a − b) over the seeds where both values are finite (fewer than 2: as
    :func:`finite_ci`)."""
    xa, xb = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must pair up, got {xa.shape} and {xb.shape}")
    keep = np.isfinite(xa) & np.isfinite(xb)
    if keep.sum() < 2:
        return Interval(-math.inf, math.inf, math.nan, int(keep.sum()))
    return paired_diff_ci(xa[keep], xb[keep])


def fmt_ci(ci: Interval | None, spec: str = "+.3f") -> str:
    """``'center [lo, hi]'`` (``spec`` format), or ``'undefined'`` for a missing interval."""
    return "undefined" if ci is None else ci.fmt(spec)


def lies_above(ci: Interval | None, threshold: float = 0.0) -> bool | None:
    """The usual decision on an interval: True when it lies above ``threshold``, False when it lies below,
    None when it contains it (or is missing)."""
    if ci is None:
        return None
    return True if ci.lo > threshold else (False if ci.hi < threshold else None)


def band(y: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) of the 95% interval over ``axis`` (the seeds) for every other index.

    Each column's interval is :func:`mean_ci`; with one seed the band has zero width; a column
    with a non-finite value is NaN (not drawn).
    """
    y = np.moveaxis(np.asarray(y, np.float64), axis, 0)
    n = y.shape[0]
    flat = y.reshape(n, -1)
    mean, lo, hi = (np.full(flat.shape[1], np.nan) for _ in range(3))
    for j in range(flat.shape[1]):
        col = flat[:, j]
        if not np.all(np.isfinite(col)):
            continue
        if n == 1:
            mean[j] = lo[j] = hi[j] = col[0]
            continue
        ci = mean_ci(col)
        mean[j], lo[j], hi[j] = ci.center, ci.lo, ci.hi
    shape = y.shape[1:]
    return mean.reshape(shape), lo.reshape(shape), hi.reshape(shape)


def plot_band(ax, x, y: np.ndarray, *, axis: int = 0, fmt: str | None = None, fill: dict | None = None, **plot_kw):
    """Plots the mean over seeds (``axis`` of ``y``) against ``x`` with its 95% band (:func:`band`).

    ``fmt`` and ``plot_kw`` go to ``ax.plot``; ``fill`` to ``ax.fill_between`` (default: alpha 0.18, no edge).
    Returns the line.
    """
    mean, lo, hi = band(y, axis)
    (line,) = ax.plot(x, mean, **plot_kw) if fmt is None else ax.plot(x, mean, fmt, **plot_kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), **({"alpha": 0.18, "lw": 0} if fill is None else fill))
    return line
