"""Prop. 1 and its stated consequence: W_agg on shared prefixes, and what the shared-prefix gradient does to length.

(A) Verification of Prop. 1's identity (Appendix B, Eqs. 16-18). Completions of the
    warmed-up tiny transformer on the arithmetic task (``--scale quick|paper``; the
    test config uses the prefix-tree policy below). For every preset (β = 0, first
    inner step, ratio 1) the exact per-token coefficient c = dJ/dlogp is summed over
    each node of the group's prefix tree (``analysis.prefix.w_agg``). On a prefix
    shared by the whole group, W_agg = Σ_i ω_i A_i is compared with the same sum
    computed independently in float64 NumPy from the rewards and lengths alone:
    Σ_i A_i / (G |o_i| σ) for grpo and gspo (ω ∝ 1/|o_i|), and exactly 0 for dr_grpo
    (ω = 1/G), dapo (ω = 1/(σ Σ_j |o_j|), the same for every completion) and every
    prefix-debiased preset. These are identities: *verifications*.

(B) Measurement of the consequence the paper draws from Prop. 1 (Sec. 4): "when
    ω_i ∝ 1/|o_i|, answers with shorter lengths and positive advantages contribute
    disproportionately to the gradient of the initial tokens; the model is implicitly
    encouraged to favour shorter outputs, even when length is not aligned with task
    quality".

    Policy. A *prefix-tree* tabular policy (``jgrpo.policies.tree_*``): one row of
    logits per whole prefix y_<t, so two completions share the parameters of token t
    exactly when they share the prefix y_<t — the shared prefixes of Prop. 1 are exact.
    (In the (position, previous token) table of ``tabular_*``, completions with
    different prefixes that reach the same token at the same position share a cell,
    so a "shared prefix" there is a sufficient but not a necessary condition for
    sharing a gradient; the tree removes that ambiguity.)

    Task, reward independent of length by construction. Tokens: 0 = EOS, 1 = the
    correct answer, 2.. = other tokens. Positions 0 .. a−1 are a preamble (EOS
    impossible), position a is the answer (reward 1 iff it is token 1; its
    distribution is the same after every preamble, P(correct) = p), positions > a
    continue until EOS or the length limit. The rows after the answer are tied
    across the answer token (row(y_<t) = row(y_<t with y_a := 1)), so the
    continuation — hence the length — has the same law whatever the answer:
    reward ⊥ length exactly (verified: |E[|o| | correct] − E[|o| | incorrect]| at
    rounding). The preamble and the continuation rows are random (i.i.d. normal,
    one draw per seed), so prefixes do change the expected length: the shared-prefix
    gradient *can* move it.

    Measurement. For each seed (a fresh random policy and fresh groups) and each
    accuracy regime p, ``groups`` groups of G completions are sampled; for every
    method the first-step gradient of each group is split into its shared-prefix
    part g_sh and the rest (``analysis.prefix.effects``), and the exact first-order
    change of the expected length along g_sh, <∇E[|o|], g_sh>, is computed with
    ∇E[|o|] exact by enumeration (``analysis.prefix.tree_expectation``). Methods are
    compared at equal progress: the statistic of a seed is
        S_m = mean_groups <∇E[|o|], g_sh,m> / mean_groups <∇E[r], g_m>,
    the change of expected length caused by the shared-prefix part per unit of
    expected-reward gain of the method's whole update (scale-free: a method's overall
    gradient scale cancels). Methods: grpo (1/|o_i|), dr_grpo (constant), dapo, gspo
    (its first step equals grpo's), prefix-debiased grpo, and a positive control that
    isolates the paper's verbal mechanism: ω_i ∝ 1/|o_i| on positive-advantage
    completions only (constant on the others), i.e. short positive answers
    dominate the shared prefix and nothing offsets them.

Criteria (fixed before the run; ``claims.py``), per accuracy regime, 95%
Student-t intervals over seeds:

- Consequence of Prop. 1 — reproduced iff in every regime grpo's S < 0 (interval
  below 0) and the paired difference S_grpo − S_dr_grpo < 0 (interval below 0).
  Not reproduced iff the positive control is detected (its interval below 0 in every
  regime) and in some regime grpo's interval or the paired difference's lies above 0,
  or grpo's interval contains 0 with a half-width below half the control's |mean|
  (a null the design had the power to see). Otherwise inconclusive.
- Positive control — reproduced iff its interval lies below 0 in every regime; not
  reproduced iff it lies above 0 in some regime.
- Beyond the paper, prefix debiasing removes grpo's length effect — in each regime where
  S_grpo − S_dr_grpo excludes 0: reproduced iff S_debias − S_grpo excludes 0 with the
  opposite sign and S_debias − S_dr_grpo contains 0; not reproduced iff
  S_debias − S_dr_grpo excludes 0 with the sign of S_grpo − S_dr_grpo.

Fewer than 5 seeds with a defined statistic (a seed whose whole update gains no expected
reward has none) decide nothing. Disclosure: a first quick run with 8 seeds left the
positive control undetected at p = 0.25 (every verdict inconclusive); the quick design
now uses 24 seeds, with the criteria above unchanged.

Files: ``config.py`` (sizes, methods), ``task.py`` (the prefix-tree task), ``reference.py`` (part (A)'s float64
reference), ``measure.py`` (both parts, no I/O), ``claims.py`` (the decision rules and their texts, pure),
``report.py`` (tables, figure, notes: the only I/O).
"""

from __future__ import annotations

import dataclasses

from experiments.common import Context, Outcome
from experiments.prefix_bias import claims, measure, report
from experiments.prefix_bias.config import CONTROL, METHODS, NAME, REQUIRED, Config, _config

__all__ = ["CONTROL", "METHODS", "NAME", "REQUIRED", "Config", "run"]


def run(ctx: Context) -> Outcome:
    """Runs the experiment at ``ctx.scale`` and writes its results into ``ctx.out``.

    With ``ctx.model`` (``--model PATH``) part (A) runs on the checkpoint's Countdown rollouts.
    """
    cfg = _config(ctx.scale)
    if ctx.model is not None:
        cfg = dataclasses.replace(cfg, verify_policy="checkpoint", model=ctx.model)
    return _run(ctx, cfg)


def _run(ctx: Context, cfg: Config) -> Outcome:
    m = measure.measure(cfg, ctx.scale, ctx.seed, ctx.progress)
    found = claims.verification_claims(m.a, m.a_stats, m.b_stats) + claims.effect_claims(m.per, cfg.accuracies)
    return report.write(ctx, cfg, m, found)
