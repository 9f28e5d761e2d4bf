"""Small statistics for the experiments' verdicts: confidence intervals over seeds, correlations.

Everything here is plain NumPy (float64) on measured numbers; nothing is traced.
The experiments decide their verdicts from these intervals (see
:class:`experiments.common.Claim`), so each function states exactly what its
interval covers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Interval",
    "bootstrap_ci",
    "mean_ci",
    "paired_diff_ci",
    "pearson",
    "pearson_ci",
    "t_quantile",
]

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard table values).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


class Interval(tuple):
    """A confidence interval ``(lo, hi)`` with its point estimate ``center`` and sample size ``n``."""

    def __new__(cls, lo: float, hi: float, center: float, n: int):
        self = super().__new__(cls, (float(lo), float(hi)))
        self.center = float(center)
        self.n = int(n)
        return self

    @property
    def lo(self) -> float:
        return self[0]

    @property
    def hi(self) -> float:
        return self[1]

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside [lo, hi]."""
        return not (self.lo <= value <= self.hi)

    def __repr__(self) -> str:
        return f"Interval({self.center:.4g} [{self.lo:.4g}, {self.hi:.4g}], n={self.n})"

    def fmt(self, spec: str = ".3g") -> str:
        """``'center [lo, hi]'`` with the given format spec."""
        return f"{self.center:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


def t_quantile(df: int) -> float:
    """t_{0.975, df}, the two-sided 95% Student-t quantile (normal beyond df = 30, error < 2%)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile: accurate to ~1e-3 for df > 30.
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _clean(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite values: {x[~np.isfinite(x)][:5]}")
    return x


def mean_ci(values: Sequence[float] | np.ndarray) -> Interval:
    """95% Student-t interval for the mean of independent values (e.g. one per seed).

    With one value the interval is (−inf, inf): a single seed decides nothing.
    """
    x = _clean(values, "values")
    n = x.size
    m = float(x.mean())
    if n < 2:
        return Interval(-math.inf, math.inf, m, n)
    half = t_quantile(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(m - half, m + half, m, n)


def paired_diff_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Interval:
    """95% interval for mean(a − b) over paired values (same seed, same batch): Student-t on the differences."""
    xa, xb = _clean(a, "a"), _clean(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must pair up, got {xa.shape} and {xb.shape}")
    return mean_ci(xa - xb)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two equally long series; NaN when either is constant."""
    xx, yy = _clean(x, "x"), _clean(y, "y")
    if xx.shape != yy.shape:
        raise ValueError(f"x and y must have the same length, got {xx.size} and {yy.size}")
    xx, yy = xx - xx.mean(), yy - yy.mean()
    den = math.sqrt(float(xx @ xx) * float(yy @ yy))
    return float(xx @ yy) / den if den > 0 else float("nan")


def pearson_ci(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> Interval:
    """Pearson r with its 95% Fisher-z interval (independent pairs, n ≥ 4)."""
    r = pearson(x, y)
    n = np.asarray(x).size
    if n < 4 or not math.isfinite(r):
        return Interval(-1.0, 1.0, r, n)
    z = math.atanh(min(max(r, -0.999999), 0.999999))
    half = _Z975 / math.sqrt(n - 3)
    return Interval(math.tanh(z - half), math.tanh(z + half), r, n)


def bootstrap_ci(statistic, *samples: np.ndarray, num_resamples: int = 2000, seed: int = 0, axis: int = 0) -> Interval:
    """Percentile bootstrap 95% interval of ``statistic(*samples)``, resampling rows of ``axis`` jointly.

    Args:
      statistic: a function of the samples (same number of rows each) returning a float.
      samples: arrays whose ``axis`` indexes independent units (seeds, batches).
      num_resamples: bootstrap resamples.
      seed: the resampling seed (the interval is deterministic for a given seed).
    """
    arrs = [np.asarray(s, np.float64) for s in samples]
    if not arrs:
        raise ValueError("bootstrap_ci needs at least one sample")
    n = arrs[0].shape[axis]
    if any(a.shape[axis] != n for a in arrs):
        raise ValueError(f"samples must have the same number of rows along axis {axis}")
    center = float(statistic(*arrs))
    rng = np.random.default_rng(seed)
    stats = np.empty(num_resamples)
    for k in range(num_resamples):
        idx = rng.integers(0, n, size=n)
        stats[k] = statistic(*[np.take(a, idx, axis=axis) for a in arrs])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Interval(-math.inf, math.inf, center, n)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return Interval(lo, hi, center, n)
