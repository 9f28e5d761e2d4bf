"""The length_bias experiment's claims: the pre-stated decision rules applied to measured numbers (pure).

Each claim's statement, criterion and falsification condition are module-level text next to
its decision rule. 95% Student-t intervals over seeds; a seed whose statistic is undefined is
left out, and fewer than ``MIN_SEEDS`` seeds with a defined statistic decide nothing.
"""

from __future__ import annotations

import math

from experiments.common import Claim, decided
from experiments.length_bias.config import CONTROL, LEVELS, MIN_GAIN, OPTIMIZERS
from experiments.shared.seeds import finite_ci, fmt_ci, lies_above, paired_finite_ci
from experiments.stats import Interval

# ----------------------------------------------------------------------------- Dr. GRPO's critique, at θ_0

DRIFT_CLAIM = (
    "1/|o_i| (grpo) lets incorrect completions grow longer than constant weights (dr_grpo) (Dr. GRPO's critique, "
    "cited by the paper)"
)
DRIFT_CRITERION = (
    "D = ΔE[|o| | incorrect] / ΔE[r] along each method's expected first-step gradient at θ_0 (exact, length-coupled "
    "task): paired D_grpo − D_dr_grpo > 0 (95% t-interval over seeds)"
)
DRIFT_FALSIFIED = (
    "the interval below 0, or containing 0 with its upper end below a quarter of the positive control's lower end "
    "(D_control − D_dr_grpo) while the control is detected"
)


def drift_decision(d: Interval, control: Interval) -> bool | None:
    """``d`` = D_grpo − D_dr_grpo, ``control`` = D_control − D_dr_grpo: above 0 reproduces; below 0 falsifies, and
    so does a null narrower than a quarter of a detected control's effect; else undecided."""
    if d.lo > 0:
        return True
    if d.hi < 0 or (control.lo > 0 and not d.excludes(0) and d.hi < control.lo / 4):
        return False
    return None


CONTROL_CLAIM = (
    "positive control (design power): ω ∝ 1/|o_i|² makes incorrect completions grow longer than constant weights"
)
CONTROL_CRITERION = "paired D_control − D_dr_grpo > 0 at θ_0 (95% t-interval over seeds)"
CONTROL_FALSIFIED = "the interval below 0"

# ----------------------------------------------------------------------------- over training, at matched progress

TRAINING_CLAIM = (
    "over training ({label}), grpo's incorrect completions are longer than dr_grpo's at equal expected reward"
)
TRAINING_CRITERION = (
    f"per seed, mean over {LEVELS} matched E[r] levels of the exact E[|o| | incorrect] difference grpo − dr_grpo "
    "(same seeds and samples streams); 95% t-interval over seeds above 0"
)
TRAINING_FALSIFIED = "the interval below 0"


def training_decision(ci: Interval, valid: int, total: int) -> bool | None:
    """Above 0 reproduces, below 0 falsifies; undecided otherwise or when a seed made no progress ≥ MIN_GAIN."""
    return None if valid < total else lies_above(ci, 0.0)


def claims_of(drift0: dict, matched: dict) -> list[Claim]:
    """The pre-stated decision rules applied to the measured numbers.

    Args:
      drift0: ``{method: [seeds]}`` D_m = ΔE[|o| | incorrect] / ΔE[r] at θ_0 for "grpo", "dr_grpo" and the control.
      matched: ``{optimizer: [seeds]}`` the mean matched-progress difference E[|o| | inc]_grpo − E[|o| | inc]_dr_grpo
        per seed (NaN: no progress), for "adam" and "ngd".
    """
    d = paired_finite_ci(drift0["grpo"], drift0["dr_grpo"])
    c = paired_finite_ci(drift0[CONTROL], drift0["dr_grpo"])
    seeds = min(d.n, c.n)  # seeds with a finite statistic
    claims = [
        Claim(
            claim=DRIFT_CLAIM,
            kind="experiment",
            criterion=DRIFT_CRITERION,
            falsified_if=DRIFT_FALSIFIED,
            measured=f"D_grpo − D_dr_grpo {fmt_ci(d)} tokens per unit E[r] (D_grpo "
            f"{fmt_ci(finite_ci(drift0['grpo']))}, D_dr_grpo {fmt_ci(finite_ci(drift0['dr_grpo']))})",
            verdict=decided(drift_decision(d, c), seeds),
            proposition="Sec. 4 (Dr. GRPO)",
            ci=(d.lo, d.hi),
            seeds=seeds,
        ),
        Claim(
            claim=CONTROL_CLAIM,
            kind="experiment",
            criterion=CONTROL_CRITERION,
            falsified_if=CONTROL_FALSIFIED,
            measured=f"D_control − D_dr_grpo {fmt_ci(c)}",
            verdict=decided(lies_above(c, 0.0), seeds),
            proposition="control",
            ci=(c.lo, c.hi),
            seeds=seeds,
        ),
    ]
    for opt, label in OPTIMIZERS:
        if opt in matched:
            claims.append(training_claim(label, matched[opt]))
    return claims


def training_claim(label: str, matched: list[float]) -> Claim:
    """grpo − dr_grpo at matched progress over training with optimizer ``label``, per seed (NaN: no progress)."""
    valid = [m for m in matched if math.isfinite(m)]
    if len(valid) >= 2:
        mc = finite_ci(valid)
        ok = training_decision(mc, len(valid), len(matched))
        measured = f"E[|o| | incorrect]_grpo − E[|o| | incorrect]_dr_grpo {fmt_ci(mc)} tokens"
        ci = (mc.lo, mc.hi)
    else:
        ok, ci = None, (-math.inf, math.inf)
        measured = f"only {len(valid)} of {len(matched)} seeds made progress ≥ {MIN_GAIN}"
    if len(valid) < len(matched):
        measured += f" ({len(matched) - len(valid)} seeds without progress ≥ {MIN_GAIN})"
    seeds = max(len(valid), 1)
    return Claim(
        claim=TRAINING_CLAIM.format(label=label),
        kind="experiment",
        criterion=TRAINING_CRITERION,
        falsified_if=TRAINING_FALSIFIED,
        measured=measured,
        verdict=decided(ok, seeds),
        proposition="Sec. 4 (Dr. GRPO)",
        ci=ci,
        seeds=seeds,
    )
