"""The prefix_bias experiment's claims: the pre-stated decision rules applied to measured numbers (pure).

Each claim's statement, criterion and falsification condition are module-level text next to
its decision rule. Part (A)'s identities are verifications; part (B)'s statistics S (Δ E[|o|]
from the shared-prefix part per unit of the whole update's Δ E[r]) are experiments with 95%
Student-t intervals over seeds, deciding nothing with fewer than ``MIN_SEEDS`` finite seeds.
"""

from __future__ import annotations

import numpy as np

from experiments.common import Claim, decided, verdict
from experiments.prefix_bias.config import CONTROL
from experiments.shared.seeds import finite_ci, fmt_ci, paired_finite_ci
from experiments.stats import Interval

IDENTITY_TOL = 1e-5  # relative to max|c| (float32 rounding of sums of a few terms)
INDEPENDENCE_TOL = 1e-3  # token: part (B)'s construction makes E[|o| | correct] = E[|o| | incorrect] exactly

# ----------------------------------------------------------------------------- (A) verifications

W_AGG_FORMS = (
    (("grpo", "gspo"), "Σ_i A_i / (G|o_i|σ) (ω ∝ 1/|o_i|)"),
    (("dr_grpo", "dapo", "gcpo_once"), "0 (ω the same for every completion of the group)"),
    (("gcpo",), "Σ_i |o_i| A_i / (Gσ) (Table 1 literally: a long-answer weighting)"),
)
W_AGG_CLAIM = "Prop. 1: on prefixes shared by the whole group, W_agg of {names} is {form}"
W_AGG_CRITERION = (
    "|W_agg − float64 formula from rewards and lengths| / max|c| < {tol:g} on all {nodes} fully shared nodes ({source})"
)
W_AGG_FALSIFIED = "any node with a relative error ≥ {tol:g}"
DEBIAS_ZERO_CLAIM = "prefix debiasing: W_agg = 0 on prefixes shared by the whole group, every preset but gmpo"
DEBIAS_ZERO_CRITERION = "max |W_agg| / max|c| < {tol:g} over the {n} debiased presets"
DEBIAS_ZERO_FALSIFIED = "some preset with |W_agg| / max|c| ≥ {tol:g}"
INDEPENDENCE_CLAIM = "part (B)'s task has reward independent of length (E[|o| | correct] = E[|o| | incorrect])"
INDEPENDENCE_CRITERION = "exact |E[|o| | correct] − E[|o| | incorrect]| < 1e-3 token for every policy of part (B)"
INDEPENDENCE_FALSIFIED = "a gap ≥ 1e-3 token (the construction would couple reward and length)"


def verification_claims(a: dict, a_stats: dict, b_stats: dict | None) -> list[Claim]:
    """Part (A)'s identities (W_agg against float64, debiased W_agg = 0) and part (B)'s design check."""
    claims = []
    nodes = a_stats["fully_shared_nodes"]
    for names, form in W_AGG_FORMS:
        names = tuple(n for n in names if n in a)
        if not names:
            continue
        err = max(a[n]["w_full_float64_max_err_rel"] for n in names)
        size = max(a[n]["w_full_float64_mean_abs"] / max(a[n]["max_abs_coefficient"], 1e-30) for n in names)
        claims.append(
            Claim(
                claim=W_AGG_CLAIM.format(names=" and ".join(names), form=form),
                kind="verification",
                criterion=W_AGG_CRITERION.format(tol=IDENTITY_TOL, nodes=nodes, source=a_stats["source"]),
                falsified_if=W_AGG_FALSIFIED.format(tol=IDENTITY_TOL),
                measured=f"max error {err:.1e} of max|c| (formula's mean |W| {size:.2e} of max|c|)",
                verdict=verdict(bool(err < IDENTITY_TOL and nodes > 0)),
                proposition="Prop. 1",
            )
        )
    debiased = {n: r["w_full_float64_max_err_rel"] for n, r in a.items() if n.endswith("+debias")}
    worst = max(debiased, key=debiased.get)
    claims.append(
        Claim(
            claim=DEBIAS_ZERO_CLAIM,
            kind="verification",
            criterion=DEBIAS_ZERO_CRITERION.format(tol=IDENTITY_TOL, n=len(debiased)),
            falsified_if=DEBIAS_ZERO_FALSIFIED.format(tol=IDENTITY_TOL),
            measured=f"max {debiased[worst]:.1e} of max|c| ({worst})",
            verdict=verdict(bool(debiased[worst] < IDENTITY_TOL and nodes > 0)),
            proposition="beyond",
        )
    )
    if b_stats is not None:
        gap = max(abs(s["length_correct"] - s["length_incorrect"]) for st in b_stats.values() for s in st)
        claims.append(
            Claim(
                claim=INDEPENDENCE_CLAIM,
                kind="verification",
                criterion=INDEPENDENCE_CRITERION,
                falsified_if=INDEPENDENCE_FALSIFIED,
                measured=f"max gap {gap:.1e} token",
                verdict=verdict(bool(gap < INDEPENDENCE_TOL)),
                proposition="design",
            )
        )
    return claims


# ----------------------------------------------------------------------------- (B) Prop. 1's consequence

CONSEQUENCE_CLAIM = (
    "Prop. 1's consequence: with ω ∝ 1/|o_i| (grpo) the shared-prefix gradient favours shorter outputs when reward "
    "is independent of length"
)
CONSEQUENCE_CRITERION = (
    "S = Δ E[|o|] from the shared-prefix part per unit of the whole update's Δ E[r] (exact, prefix-tree policy); in "
    "every accuracy regime p: S_grpo < 0 and S_grpo − S_dr_grpo < 0 (95% t-intervals over seeds)"
)
CONSEQUENCE_FALSIFIED = (
    "with the positive control detected: in some regime S_grpo or S_grpo − S_dr_grpo lies above 0, or S_grpo's "
    "interval contains 0 and is narrower than half the control's |S|"
)


def control_detected(control: dict) -> bool:
    """The positive control's interval lies below 0 in every regime (``control``: {p: Interval})."""
    return all(c.hi < 0 for c in control.values())


def consequence_decision(grpo: dict, diff: dict, control: dict) -> bool | None:
    """``{p: Interval}`` of S_grpo, S_grpo − S_dr_grpo and S_control: reproduced when grpo and the difference lie
    below 0 in every regime; not reproduced when the control is detected and some regime shows the opposite, or
    a null narrower than half the control's effect; undecided otherwise."""

    def half(c):
        return (c.hi - c.lo) / 2

    shorter = all(grpo[p].hi < 0 and diff[p].hi < 0 for p in grpo)
    against = any(
        grpo[p].lo > 0 or diff[p].lo > 0 or (not grpo[p].excludes(0) and half(grpo[p]) < abs(control[p].center) / 2)
        for p in grpo
    )
    return True if shorter else (False if control_detected(control) and against else None)


CONTROL_CLAIM = (
    "positive control (design power): ω ∝ 1/|o_i| on positive answers only makes the shared-prefix gradient favour "
    "shorter outputs"
)
CONTROL_CRITERION = "S_control < 0 (95% t-interval over seeds below 0) in every accuracy regime"
CONTROL_FALSIFIED = "S_control's interval above 0 in some regime"


def control_decision(control: dict) -> bool | None:
    """Detected (below 0) in every regime: reproduced; above 0 in some regime: not; else undecided."""
    return True if control_detected(control) else (False if any(c.lo > 0 for c in control.values()) else None)


DEBIAS_CLAIM = "prefix-debiased grpo removes grpo's shared-prefix length effect"
DEBIAS_CRITERION = (
    "in each regime where S_grpo − S_dr_grpo excludes 0: S_debias − S_grpo excludes 0 with the opposite sign and "
    "S_debias − S_dr_grpo contains 0"
)
DEBIAS_FALSIFIED = "S_debias − S_dr_grpo excludes 0 with the sign of S_grpo − S_dr_grpo in such a regime"


def debias_decision(regimes: list[tuple[Interval, Interval, Interval]]) -> bool | None:
    """``regimes``: (S_grpo − S_dr_grpo, S_debias − S_grpo, S_debias − S_dr_grpo) in each regime where the first
    excludes 0. Removed everywhere: reproduced; kept somewhere (debias − dr_grpo on grpo's side): not; else (or no
    such regime) undecided."""
    if not regimes:
        return None
    removed, kept = True, False
    for diff, toward, rest in regimes:
        sign = np.sign(diff.center)
        removed &= bool(toward.excludes(0) and np.sign(toward.center) == -sign and not rest.excludes(0))
        kept |= bool(rest.excludes(0) and np.sign(rest.center) == sign)
    return True if removed else (False if kept else None)


def effect_claims(per: dict, accuracies) -> list[Claim]:
    """The pre-stated decision rules of part (B) applied to the per-seed statistics S.

    Args:
      per: ``{method: {p: {"shared_len_per_gain": [seeds], ...}}}`` for "grpo", "dr_grpo",
        "grpo+debias" and the control.
      accuracies: the regimes p.
    """
    key = "shared_len_per_gain"
    ci = {m: {p: finite_ci(per[m][p][key]) for p in accuracies} for m in ("grpo", "dr_grpo", "grpo+debias", CONTROL)}
    diff = {p: paired_finite_ci(per["grpo"][p][key], per["dr_grpo"][p][key]) for p in accuracies}
    seeds = min([c.n for r in ci.values() for c in r.values()] + [d.n for d in diff.values()])  # finite seeds
    worst = min(accuracies, key=lambda p: -ci["grpo"][p].center)  # the regime with the largest S_grpo
    claims = [
        Claim(
            claim=CONSEQUENCE_CLAIM,
            kind="experiment",
            criterion=CONSEQUENCE_CRITERION,
            falsified_if=CONSEQUENCE_FALSIFIED,
            measured="; ".join(
                f"p = {p}: S_grpo {fmt_ci(ci['grpo'][p])}, S_dr_grpo {fmt_ci(ci['dr_grpo'][p])}, "
                f"grpo − dr_grpo {fmt_ci(diff[p])}"
                for p in accuracies
            ),
            verdict=decided(consequence_decision(ci["grpo"], diff, ci[CONTROL]), seeds),
            proposition="Prop. 1",
            ci=(ci["grpo"][worst].lo, ci["grpo"][worst].hi),
            seeds=seeds,
        )
    ]
    weakest = max(accuracies, key=lambda p: ci[CONTROL][p].hi)
    claims.append(
        Claim(
            claim=CONTROL_CLAIM,
            kind="experiment",
            criterion=CONTROL_CRITERION,
            falsified_if=CONTROL_FALSIFIED,
            measured="; ".join(f"p = {p}: S_control {fmt_ci(ci[CONTROL][p])}" for p in accuracies),
            verdict=decided(control_decision(ci[CONTROL]), seeds),
            proposition="control",
            ci=(ci[CONTROL][weakest].lo, ci[CONTROL][weakest].hi),
            seeds=seeds,
        )
    )
    biased = [p for p in accuracies if diff[p].excludes(0)]
    regimes, parts = [], []
    for p in biased:
        toward = paired_finite_ci(per["grpo+debias"][p][key], per["grpo"][p][key])
        rest = paired_finite_ci(per["grpo+debias"][p][key], per["dr_grpo"][p][key])
        regimes.append((diff[p], toward, rest))
        parts.append(f"p = {p}: debias − grpo {fmt_ci(toward)}, debias − dr_grpo {fmt_ci(rest)}")
    target = biased[0] if biased else accuracies[0]
    d_ci = paired_finite_ci(per["grpo+debias"][target][key], per["dr_grpo"][target][key])
    claims.append(
        Claim(
            claim=DEBIAS_CLAIM,
            kind="experiment",
            criterion=DEBIAS_CRITERION,
            falsified_if=DEBIAS_FALSIFIED,
            measured="; ".join(parts) if parts else "no regime where grpo differs from dr_grpo",
            verdict=decided(debias_decision(regimes), seeds),
            proposition="beyond",
            ci=(d_ci.lo, d_ci.hi),
            seeds=seeds,
        )
    )
    return claims
