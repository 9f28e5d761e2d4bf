"""Comparisons at matched progress: one run's metric read where it reaches the progress another run reaches.

Two readings of "equal progress", both at the *first* crossing of a progress level:

- along an η sweep (overshoot): each seed's progress rises with η; the metric is interpolated
  linearly at the first crossing of common levels (:func:`at_level`, :func:`common_levels`,
  :func:`matched`);
- along training (length_bias): the metric at the first step a run's expected reward reaches a level
  (:func:`matched_progress`, :func:`values_at_levels`).

Pure NumPy (float64) on measured numbers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from experiments.shared.seeds import band

__all__ = [
    "Matched",
    "at_level",
    "common_levels",
    "curves_at",
    "first_reach",
    "matched",
    "matched_progress",
    "values_at_levels",
]


def first_reach(x: np.ndarray, level: float) -> int | None:
    """The first index at which ``x`` reaches ``level`` (x ≥ level), or None if it never does."""
    hit = np.asarray(x, np.float64) >= level
    return int(np.argmax(hit)) if hit.any() else None


def at_level(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """y where x first reaches ``level`` along the sweep (linear interpolation); NaN if it never does.

    ``x``, ``y``: one seed's progress and escape over the η sweep, in η order. The first
    crossing is on the rising branch of the progress curve: the least η (and, escape
    rising with η, the least escape) that achieves the level.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size == 0 or not np.isfinite(level):
        return float("nan")
    k = first_reach(x, level)
    if k is None:
        return float("nan")
    if k == 0:
        return float(y[0]) if x[0] == level else float("nan")
    w = (level - x[k - 1]) / (x[k] - x[k - 1])
    return float(y[k - 1] + w * (y[k] - y[k - 1]))


def common_levels(xs: list[np.ndarray], n: int) -> np.ndarray:
    """n progress levels every curve reaches: strictly inside [max of the minima, min of the maxima].

    Each array in ``xs`` is [n_lr, S] (one optimizer's progress over η and seeds); every
    (optimizer, seed) curve is one curve. Levels are evenly spaced (geometrically when
    the range is positive) at fractions (k + 1)/(n + 1). Empty when the curves share no range.
    """
    curves = [np.asarray(x, np.float64)[:, s] for x in xs for s in range(np.shape(x)[1])]
    lo = max(float(np.nanmin(c)) for c in curves)
    hi = min(float(np.nanmax(c)) for c in curves)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.zeros((0,))
    f = (np.arange(n) + 1.0) / (n + 1.0)
    if lo > 0:
        return np.exp(np.log(lo) + f * (np.log(hi) - np.log(lo)))
    return lo + f * (hi - lo)


def curves_at(x: np.ndarray, y: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[n_levels, S]: each seed's y at each level (``at_level``)."""
    return np.array([[at_level(x[:, s], y[:, s], L) for s in range(x.shape[1])] for L in levels]).reshape(
        len(levels), x.shape[1]
    )


class Matched(NamedTuple):
    """A paired comparison of optimizers a and b at common progress levels."""

    levels: np.ndarray  # [n]
    a: np.ndarray  # [n, S] escape of a
    b: np.ndarray  # [n, S] escape of b
    diff: np.ndarray  # [S'] per-seed mean over levels of a − b (seeds with every level defined)
    reduction: np.ndarray  # [S'] per-seed 1 − Σ_L a / Σ_L b (NaN where Σ b = 0)
    base: float  # mean of b over levels and seeds
    pooled: bool = False  # progress curves averaged over seeds before matching
    resolved: bool = True  # pooled progress curves resolved from 0 where used (see ``matched``)


def matched(ma: dict, mb: dict, progress: str, metric: str, n_levels: int, *, pooled: bool = False) -> Matched:
    """Compare optimizer a with b at equal ``progress`` ("dJ", "kl" or "dE") on ``metric``.

    ``pooled``: the progress curve of an optimizer is its mean over seeds (for progress
    that is only estimated, e.g. the held-out IS reward gain, whose per-seed noise would
    make per-seed crossings meaningless); the metric stays per seed, so the comparison
    is still paired over seeds. The pooled curve must then be *resolved* where it is
    used — the 95% CI over seeds of its mean excludes 0 at every η from the one before
    the lowest level's crossing to the highest level's — else ``resolved`` is False and
    the claims built on it are inconclusive (the progress axis is noise).
    """
    xa, xb = np.asarray(ma[progress], np.float64), np.asarray(mb[progress], np.float64)
    raw = (xa, xb)
    if pooled:
        xa = np.broadcast_to(xa.mean(1, keepdims=True), xa.shape)
        xb = np.broadcast_to(xb.mean(1, keepdims=True), xb.shape)
    levels = common_levels([xa, xb], n_levels)
    resolved = not pooled or (levels.size > 0 and all(_resolved(x, levels) for x in raw))
    ya = curves_at(xa, ma[metric], levels)
    yb = curves_at(xb, mb[metric], levels)
    ok = np.all(np.isfinite(ya) & np.isfinite(yb), axis=0) if levels.size else np.zeros(0, bool)
    diff = (ya - yb)[:, ok].mean(0) if levels.size else np.zeros(0)
    sa, sb = ya[:, ok].sum(0), yb[:, ok].sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        red = np.where(sb > 0, 1.0 - sa / np.where(sb > 0, sb, 1.0), np.nan)
    base = float(np.nanmean(yb[:, ok])) if ok.any() else float("nan")
    return Matched(
        levels=levels, a=ya, b=yb, diff=diff, reduction=red, base=base, pooled=pooled, resolved=bool(resolved)
    )


def _resolved(x: np.ndarray, levels: np.ndarray) -> bool:
    """The seed-mean of ``x`` [n_lr, S] has a 95% CI excluding 0 wherever ``levels`` are interpolated."""
    mean = x.mean(1)  # the pooled curve of :func:`matched`
    if x.shape[1] < 2:
        return False
    lo = band(x, axis=1)[1]
    cross = [int(np.argmax(mean >= L)) if np.any(mean >= L) else mean.size - 1 for L in levels]
    first, last = max(min(cross) - 1, 0), max(cross)
    return bool(np.all(lo[first : last + 1] > 0))


def matched_progress(reward, value, other_reward, other_value, *, levels: int, min_gain: float):
    """Mean over reward levels of (value − other_value) at the first step each run reaches the level.

    Args:
      reward, value: ``[N]`` exact series of one run over training; ``other_*`` of the run compared with.
      levels: how many levels; min_gain: the least common gain of expected reward that is compared.

    Returns:
      ``(mean difference, top − start)``: NaN difference when the runs gain less than ``min_gain``.
      Levels: ``start + f (top − start)``, f = 0.1 .. 1 (``levels`` of them), start = the common initial
      E[r], top = the highest E[r] both runs reach.
    """
    r1, l1, r2, l2 = (np.asarray(x, np.float64) for x in (reward, value, other_reward, other_value))
    start, top = max(r1[0], r2[0]), min(r1.max(), r2.max())
    if not top - start >= min_gain:
        return math.nan, float(top - start)
    diffs = []
    for lv in start + np.linspace(0.1, 1.0, levels) * (top - start):
        i, j = (first_reach(r, lv - 1e-12) or 0 for r in (r1, r2))  # every level lies within both runs
        diffs.append(l1[i] - l2[j])
    return float(np.mean(diffs)), float(top - start)


def values_at_levels(reward: np.ndarray, value: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``[S, L]``: per seed (rows of ``reward``, ``value``), ``value`` at the first step ``reward`` reaches each
    level (the last step when it never does)."""
    last = np.shape(reward)[-1] - 1
    idx = [[last if (k := first_reach(r, lv)) is None else k for lv in levels] for r in reward]
    return np.stack([np.asarray(v)[i] for v, i in zip(value, idx, strict=True)])
