"""Part (b, c)'s statistics (pure NumPy): per preset, per-unit correlations of each proxy with the exact ΔE,
the SNIS monitor's calibration, and their 95% intervals over units."""

from __future__ import annotations

import math

import numpy as np

from experiments import stats
from experiments.loss_proxy.reference import constant


def _corr(x, y) -> float:
    """Pearson r (``experiments.stats.pearson``); NaN when a value is not finite or a series is constant."""
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    return stats.pearson(x, y)


def mean_corr_ci(rs) -> stats.Interval:
    """Mean of per-unit correlations in Fisher z, Student-t 95% interval over units, back in r."""
    z = np.arctanh(np.clip(np.asarray(rs, np.float64), -0.999999, 0.999999))
    ci = stats.mean_ci(z)
    return stats.Interval(math.tanh(ci.lo), math.tanh(ci.hi), math.tanh(ci.center), ci.n)


def summarise(records: dict, methods: tuple[str, ...]) -> dict:
    """Per preset: per-unit correlations with ΔE, SNIS calibration, and their CIs over units.

    Args:
      records: ``{field: [U, K, P]}`` (part (b)'s per-batch records).
    """
    de = records["delta_e"]
    u, _, n_p = de.shape
    proxies = {
        "j_first": records["j_first"],
        "gain": records["j_after"] - records["j_first"],
        "j_after": records["j_after"],
        "snis": records["snis"],
        "is": records["is"],
        "first_order": records["first_order"],
    }
    out = {}
    for p, name in enumerate(methods):
        rec = {"corr": {}, "ci": {}, "constant": {}}
        for key, x in proxies.items():
            const = all(constant(x[k, :, p]) for k in range(u))
            rs = np.array([np.nan if const else _corr(x[k, :, p], de[k, :, p]) for k in range(u)])
            rec["constant"][key] = const
            rec["corr"][key] = rs
            rec["ci"][key] = None if const or not np.all(np.isfinite(rs)) else mean_corr_ci(rs)
        sn, d = records["snis"][..., p], de[..., p]
        sd = d.std(axis=1, ddof=1)
        slope = np.array([np.cov(sn[k], d[k])[0, 1] / np.var(d[k], ddof=1) for k in range(u)])
        bias = (sn - d).mean(axis=1) / sd
        rec.update(
            slope=slope,
            slope_ci=stats.mean_ci(slope),
            bias=bias,
            bias_ci=stats.mean_ci(bias),
            delta_e_mean=float(d.mean()),
            delta_e_sd=float(sd.mean()),
            ess_mean=float(records["ess"][..., p].mean()),
            j_first_max_abs=float(np.max(np.abs(records["j_first"][..., p]))),
        )
        out[name] = rec
    return out


def by_phase(summary: dict, runs: int, checkpoints: int) -> dict:
    """Per preset and proxy: the mean correlation at each checkpoint over the runs (95% CI), or None.

    Units are ordered run-major (unit = run · C + checkpoint). A breakdown reported beside the claims,
    not a claim: it was added after the first look at the per-unit correlations.
    """
    out = {}
    for name, s in summary.items():
        out[name] = {}
        for key in ("j_first", "gain", "snis"):
            rs = s["corr"][key].reshape(runs, checkpoints)
            out[name][key] = [
                mean_corr_ci(rs[:, j]) if runs > 1 and np.all(np.isfinite(rs[:, j])) else None
                for j in range(checkpoints)
            ]
    return out
