"""Prop. 4 / Appendix A: the surrogate loss is not a progress signal — tested cross-sectionally.

Everything runs on the exact tabular softmax policy (``jgrpo.policies.tabular_*``): V
tokens, completions of at most T tokens ending at EOS, reward 1 iff the completion
contains the TARGET token. Its expected reward E[r] is computed exactly
(``analysis.tabular``: the ``contains`` automaton), so the progress an update makes,
ΔE = E_{θ_new}[r] − E_{θ_old}[r], is known without sampling noise.

(a) First-step identities (Scenario A, Eqs. 8–11), kind "verification". On sampled
    groups (plus one hand-made group of G completions with a single success), for
    every preset and flavour: jgrpo.loss at logp = logp_old against
    ``analysis.proxy.first_step_objective`` (J = Σ_i A_i Ω_i − βR), and, for the
    paper flavour, against closed forms computed here in float64 NumPy from the
    rewards, lengths, logp_old and logp_ref alone (never from jgrpo):
    length-normalised weights J = −βR (Eq. 9); dr_grpo J = (1/G) Σ A_i|o_i| − βR
    (Eq. 10); the general case J = G·Cov(A, Ω) − βR (Eq. 11) with Ω from Table 1:
    dapo Ω_i = |o_i|/(σ Σ_j|o_j|), cppo Ω_i = 1{|A_i| > γ}/(Gσ) (the general case
    once pruning fires: G = 16 with one success gives a policy part of √15/16 =
    0.242), gcpo Ω_i = |o_i|/(σG) (Table 1 read literally) or 1/(σG) (counted once
    per completion), bnpo, sapo, gpg, cispo.

(b) Cross-sectional test (Scenarios A and B), kind "experiment". R independent
    training runs (grpo, AdamW, different initial policies and samples) give
    checkpoints θ_old early / middle / late in training; a unit is one (run,
    checkpoint). At each unit, K independent batches of B groups × G completions are
    sampled from π_old; for every preset, each batch gets μ AdamW inner steps from
    θ_old with a fresh optimizer state (so the K updates are independent given θ_old)
    and π_ref = the run's initial policy. G = 16, so that cppo's pruning (|A_i| ≤ γ = 0.1)
    fires in groups with one success or one failure. Per batch: J_first (the surrogate at the
    first inner step), J_after (after μ steps), the surrogate gain J_after − J_first,
    and the exact ΔE of the update. Per unit: Pearson correlations over the K
    batches; per preset: their mean over units (Fisher z, Student-t 95% interval
    over the U units). Two positive controls show the design's power: the exact
    first-order gain ∇E(θ_old)·Δθ, and the SNIS monitor below.

(c) A progress monitor that works (beyond the paper): ``analysis.proxy.snis_gain``
    on N fresh held-out completions from π_old per batch (not the batch trained
    on), with sequence weights π_θ/π_old — correlation with ΔE and calibration
    (slope of SNIS on ΔE, bias relative to the spread of ΔE) per preset.

Criteria (fixed here, before any run; ρ0 = ``RHO0``, δ = ``CAL_TOL``):

- Scenario A, per preset: reproduced when the 95% CI of the mean corr(J_first, ΔE)
  lies inside (−ρ0, ρ0) — a proxy that explains less than ρ0² = 9% of the variance
  of the progress across batches carries no useful signal; not reproduced when the
  CI lies entirely outside [−ρ0, ρ0]; otherwise inconclusive. When J_first is the
  same number for every batch (β = 0 and Ω constant in each group: gspo, gcpo counted
  once) there is nothing to correlate: Eq. 9 makes it −βR = 0, a verification.
- Scenario B, per preset: the same rule for corr(J_after − J_first, ΔE) ("changes
  in the surrogate loss primarily reflect off-policy drift and optimizer dynamics,
  rather than genuine reward improvement", Appendix A.2).
- Power: the positive control ∇E·Δθ must have a CI lower bound above ρ0 for the
  preset; otherwise a "reproduced" null for that preset is reported inconclusive.
- SNIS monitor, per preset: works when the CI of corr(SNIS, ΔE) lies above ρ0, the
  CI of the calibration slope cov(SNIS, ΔE)/var(ΔE) lies inside [1 − δ, 1 + δ] and
  the CI of the standardised bias mean(SNIS − ΔE)/sd(ΔE) inside [−δ, δ]; fails when
  any of the three CIs lies entirely outside its band (the correlation's: below ρ0);
  otherwise inconclusive.

History (reported so that the verdicts can be weighed): the first run of this design used
3 runs, B = 4 × G = 8 (cppo never prunes at G = 8), η = 0.05 for training and updates and
checkpoints at steps 4 / 15 / 40, the last on the plateau of E[r] (0.99); there
corr(J_after − J_first, ΔE) was +0.60 … +0.78 for 5 of 6 presets (Scenario B "not
reproduced"; gspo +0.35, inconclusive). G became 16 so that cppo's pruning fires, and
the training η 0.02 so that the checkpoints span the learning curve (E[r] ≈ 0.54 /
0.73 / 0.93) rather than its plateau; ρ0 and δ did not change. The by-phase breakdown
and the η sensitivity were added after the per-unit correlations of these runs showed
the phase dependence; they are reported, not claims.

The transformer part of earlier versions is gone: its only truth signal, the change
of a batch's mean reward, correlated with the exact ΔE at 0.12 on the tabular
policy, so a claim built on it could not fail.

Files: ``config.py`` (sizes), ``task.py`` (the task, exactly), ``reference.py`` (part (a)'s float64 closed
forms), ``measure.py`` (parts (a)-(c), no I/O), ``summary.py`` (correlations and calibration, pure),
``claims.py`` (the decision rules and their texts, pure), ``report.py`` (tables, figure, notes: the only I/O).
"""

from __future__ import annotations

from experiments.common import Context, Outcome
from experiments.loss_proxy import claims, measure, report
from experiments.loss_proxy.config import NAME, Config, _config

__all__ = ["NAME", "Config", "run"]


def run(ctx: Context) -> Outcome:
    """Runs the experiment at ``ctx.scale`` and writes its results into ``ctx.out``."""
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config) -> Outcome:
    m = measure.measure(cfg, ctx.seed, ctx.progress)
    found = claims.claims_a(m.a, m.info) + (claims.claims_bc(m.summaries[0], cfg.units) if m.summaries else [])
    return report.write(ctx, cfg, m, found)
