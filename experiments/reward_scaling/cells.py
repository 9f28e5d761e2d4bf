"""A map cell — one (policy, dtype, preset, setting) measured over D data sets — and its classification (pure).

The decision rules on cells (fixed before the runs; decades of the measured floor, not tuned values):
``classify`` says invariant / broken / between from the per-data-set and pooled log10 ratios.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

INVARIANT_DECADES = 1.0  # invariant: deviation ≤ 10× the measured floor
BROKEN_DECADES = 2.0  # broken: deviation ≥ 100× the measured floor
LOG_RATIO_RANGE = (-3.0, 12.0)  # per-data-set log10 ratios are clipped here (0 deviation: −3, diverged: 12)


@dataclasses.dataclass
class Cell:
    """Measured numbers of one (policy, dtype, preset, setting) over D data sets (the claims' input).

    Attributes:
      dev: ``[D, K]`` max over steps of the relative deviation at each φ ≠ 1 (``inf``: diverged,
        NaN: the φ = 1 reference diverged).
      floor: ``[D]`` the measured noise floor (max over the floor runs and steps).
      kinds: ``[D]`` reward kind of each data set.
      rms_sqrt_v: ``[D]`` RMS of Adam's √v̂ at the last step of the φ = 1 run.
      displacement: ``[D]`` ‖θ_μ(1) − θ_0‖.
      ulp_floor, reorder_floor: ``[D]`` the two parts of ``floor``.
    """

    policy: str
    dtype: str
    preset: str
    degree: int | None
    setting: str
    dev: np.ndarray
    floor: np.ndarray
    kinds: tuple[str, ...]
    rms_sqrt_v: np.ndarray | None = None
    displacement: np.ndarray | None = None
    ulp_floor: np.ndarray | None = None
    reorder_floor: np.ndarray | None = None

    @property
    def label(self) -> str:
        return f"{self.policy}/{self.dtype}/{self.preset}"


def seed_log_ratio(cell: Cell, cols: Sequence[int] | None = None) -> np.ndarray:
    """``[D]`` per data set log10(max over φ columns ``cols`` (default all) of dev(φ) / floor).

    A data set whose floor runs all reproduce the reference bit for bit (floor exactly 0: no
    rounding event happened to occur in them, common in bf16 where a 1-ulp change of φ is often
    absorbed) has no floor estimate of its own; the cell's pooled floor (max over data sets, as in
    :func:`pooled_log_ratio`) stands in for it.

    Clipped to ``LOG_RATIO_RANGE``: a deviation of exactly 0 gives the lower end, a
    diverged run (inf) or a positive deviation over a floor of exactly 0 in every data set the
    upper end. NaN (the φ = 1 reference diverged) stays NaN.
    """
    dev = cell.dev if cols is None else cell.dev[:, list(cols)]
    dev = np.max(dev, axis=1)
    floor = np.asarray(cell.floor, np.float64)
    finite = floor[np.isfinite(floor)]
    floor = np.where(floor > 0, floor, float(np.max(finite)) if finite.size else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(dev > 0, dev / floor, 0.0)
        out = np.log10(np.clip(ratio, 10 ** LOG_RATIO_RANGE[0], 10 ** LOG_RATIO_RANGE[1]))
    return np.where(np.isnan(dev), np.nan, out)


def phi_columns(phis: Sequence[float], which: Sequence[float]) -> list[int]:
    """Indices of ``which`` in ``phis``."""
    return [list(phis).index(p) for p in which]


def pooled_log_ratio(cell: Cell, cols: Sequence[int] | None = None) -> float:
    """log10(max over data sets and φ columns of dev / max over data sets of the floor), clipped like
    :func:`seed_log_ratio`; NaN when a reference diverged. Both maxima run over the same number of runs."""
    dev = cell.dev if cols is None else cell.dev[:, list(cols)]
    if np.any(np.isnan(dev)):
        return float("nan")
    top, floor = float(np.max(dev)), float(np.max(cell.floor))
    if top == 0:
        return LOG_RATIO_RANGE[0]
    ratio = top / floor if floor > 0 else math.inf
    return float(np.clip(np.log10(ratio), *LOG_RATIO_RANGE))


def classify(pooled: float, per_data_set: np.ndarray) -> str:
    """A map cell: ``invariant`` when the pooled log ratio is ≤ ``INVARIANT_DECADES`` (the largest deviation is
    within 10× the largest floor) and so is the median over data sets of the per-data-set ratios; ``broken`` when
    every data set's ratio is ≥ ``BROKEN_DECADES`` (each at least 100× its own floor); ``between`` otherwise;
    ``no reference`` when a reference diverged.

    The two sides are exclusive (every data set ≥ 100× its floor implies a pooled ratio ≥ 100). Pooling makes the
    invariant side robust to floating-point events that occur in some runs only (a rounding residue amplified by
    Adam flips the trajectory in a φ-run but, by chance, in none of that data set's floor runs); the median keeps
    one data set with a large floor from hiding an effect that most data sets show.
    """
    r = np.asarray(per_data_set, np.float64)
    if math.isnan(pooled) or r.size == 0 or np.any(np.isnan(r)):
        return "no reference"
    if pooled <= INVARIANT_DECADES and np.median(r) <= INVARIANT_DECADES:
        return "invariant"
    if np.all(r >= BROKEN_DECADES):
        return "broken"
    return "between"


def cell_class(cell: Cell) -> str:
    """:func:`classify` over every φ ≠ 1."""
    return classify(pooled_log_ratio(cell), seed_log_ratio(cell))
