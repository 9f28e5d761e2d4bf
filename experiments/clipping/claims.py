"""The clipping experiment's claims: pure functions from the measured grid to :class:`Claim` objects.

``grid`` is ``{variant: {mu: {"gain": [n_lr, S], "acc": [n_lr, S, K+1], "clip_active": [n_lr, S], ...}}}``
(:func:`experiments.clipping.measure.run_grid`). Each claim's criterion and falsification condition
are module-level text next to its decision rule.
"""

from __future__ import annotations

import math

import numpy as np

from experiments import stats
from experiments.clipping.config import LABELS, Config
from experiments.common import Claim, decided, verdict

MARGIN = 0.10  # non-inferiority margin: 10% of the clipped run's ΔE per sample
MU1_TOL = 64 * float(np.finfo(np.float32).eps)  # float32 rounding of a few dozen steps

# ----------------------------------------------------------------------------- Sec. 5: μ = 1

MU1_CLAIM = "Sec. 5: at μ = 1 clipping is inactive — clip and no clip give the same training run"
MU1_CRITERION = f"max |accuracy(clip) − accuracy(no clip)| over every batch, η and seed ≤ {MU1_TOL:.1e} (float32)"
MU1_FALSIFIED = "a larger difference"


def mu1_claim(grid: dict) -> Claim:
    """At μ = 1 the clip never acts: clip and no clip give the same run."""
    a, b = grid["clip"][1]["acc"], grid["no_clip"][1]["acc"]
    diff = float(np.max(np.abs(a - b)))
    return Claim(
        claim=MU1_CLAIM,
        kind="verification",
        criterion=MU1_CRITERION,
        falsified_if=MU1_FALSIFIED,
        measured=f"{diff:.2e}",
        verdict=verdict(diff <= MU1_TOL),
        proposition="Sec. 5",
    )


# ----------------------------------------------------------------------------- Limitations: omit the clip

NONINFERIOR_CLAIM = "{where}: {what} does not lose exact reward gain per sample against clip (μ ∈ {{{mus}}})"
NONINFERIOR_CRITERION = (
    "paired over seeds at the largest η, exact ΔE per sample of {label} minus clip, at every μ > 1 where the clip acts "
    "(Bonferroni-adjusted 95% CIs): reproduced if every CI lies above −{margin:.0%} of clip's gain (non-inferior); "
    "not reproduced if some CI lies below 0 and non-inferiority fails; inconclusive otherwise or when the clip never "
    "acts"
)
NONINFERIOR_FALSIFIED = "at some μ the CI lies below 0 and non-inferiority fails there"


def _interval(diff: np.ndarray, comparisons: int) -> stats.Interval:
    """Student-t interval for mean(diff) at level 1 − 0.05/comparisons (Bonferroni)."""
    from scipy import stats as sps  # a dependency of jax

    x = np.asarray(diff, np.float64)
    n = x.size
    if n < 2:
        return stats.Interval(-math.inf, math.inf, float(x.mean()), n)
    q = float(sps.t.ppf(1 - 0.025 / comparisons, n - 1))
    half = q * float(x.std(ddof=1)) / math.sqrt(n)
    return stats.Interval(x.mean() - half, x.mean() + half, x.mean(), n)


def noninferiority_decision(cis: list[stats.Interval], margins: list[float]) -> bool | None:
    """Non-inferior at every μ (True); worse somewhere (some CI below 0, and not all non-inferior: False); else
    undecided, also with no μ to compare."""
    if not cis:
        return None
    non_inferior = [ci.lo > -margin for ci, margin in zip(cis, margins, strict=True)]
    if all(non_inferior):
        return True
    if any(ci.hi < 0 for ci in cis):
        return False
    return None


def noninferiority_claim(grid: dict, variant: str, mus: tuple[int, ...], lr_index: int, *, paper: bool) -> Claim:
    """``variant`` vs clip at every μ > 1 where the clip acts: non-inferior (reproduced), worse (not), or neither."""
    active = [m for m in mus if m > 1 and float(np.mean(grid["clip"][m]["clip_active"][lr_index])) > 0]
    rows, cis, margins = [], [], []
    for mu in active:
        ref = grid["clip"][mu]["gain"][lr_index]
        ci = _interval(grid[variant][mu]["gain"][lr_index] - ref, len(active))
        margin = MARGIN * abs(float(np.mean(ref)))
        cis.append(ci)
        margins.append(margin)
        acc_v = float(np.mean(grid[variant][mu]["acc"][lr_index][..., -1]))
        acc_c = float(np.mean(grid["clip"][mu]["acc"][lr_index][..., -1]))
        rows.append(f"μ = {mu}: {ci.fmt('.3g')} (margin {margin:.2g}; final accuracy {acc_v:.3f} vs clip {acc_c:.3f})")
    skipped = [m for m in mus if m > 1 and m not in active]
    n = min(ci.n for ci in cis) if cis else 1
    measured = "; ".join(rows) + " (difference of ΔE per sample, Bonferroni 95% CI)" if rows else "the clip never acts"
    if skipped:
        measured += f"; μ = {', '.join(map(str, skipped))} left out: the clip never acts there"
    where = "Limitations" if paper else "beyond"
    return Claim(
        claim=NONINFERIOR_CLAIM.format(
            where=where,
            what="omitting the clip" if variant == "no_clip" else LABELS[variant],
            mus=", ".join(str(m) for m in mus if m > 1),
        ),
        kind="experiment",
        criterion=NONINFERIOR_CRITERION.format(label=LABELS[variant], margin=MARGIN),
        falsified_if=NONINFERIOR_FALSIFIED,
        measured=measured,
        verdict=decided(noninferiority_decision(cis, margins), n),
        proposition=where,
        ci=(min(ci.lo for ci in cis), max(ci.hi for ci in cis)) if rows else (float("nan"), float("nan")),
        seeds=n,
    )


def claims_of(grid: dict, cfg: Config) -> list[Claim]:
    """The μ = 1 verification, then no clip (the paper's suggestion), the projection and the guard against clip."""
    top = len(cfg.policy.learning_rates) - 1  # the largest η: where the clip acts the most
    return [
        mu1_claim(grid),
        noninferiority_claim(grid, "no_clip", cfg.mus, top, paper=True),
        noninferiority_claim(grid, "projection", cfg.mus, top, paper=False),
        noninferiority_claim(grid, "guard", cfg.mus, top, paper=False),
    ]
