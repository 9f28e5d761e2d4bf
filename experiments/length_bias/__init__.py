"""Length bias on a task that can show it: 1/|o_i| and the length of incorrect completions.

The claim (Dr. GRPO's critique, Liu et al. 2025b, cited by the paper in Sec. 4 and
App. B.2): with per-completion weights ω_i ∝ 1/|o_i| (grpo), a long incorrect
completion is penalised less per token than a short one, so training lets
incorrect completions grow longer than constant weights (dr_grpo) do.

Task ("reason, then answer"). Tokens 0 = EOS, 1 = R (a reasoning step), 2 = C (the
correct answer), 3 = W (a wrong answer), 4 = F (filler). Prompt k has a difficulty
d_k ∈ ``difficulties``: a completion is correct iff its first answer token is C
and at least d_k R tokens precede it; what follows the answer (until EOS or the
``length`` limit) does not matter — wrong answers may ramble. Correctness is
therefore coupled to length (harder prompts need longer completions). The reward
is the end state of a finite automaton (count of R capped at d_k, then correct /
incorrect), so ``analysis.tabular`` gives the exact joint law of (correct, length).

Policy. A prompt-conditioned tabular policy (``jgrpo.policies.tabular_prompt_*``,
one ``[T, V+1, V]`` table per prompt, context (prompt, position, previous token)),
initialised per seed from a fixed "pretrained" prior (R likely, answers rare, EOS
likely right after an answer) plus i.i.d. normal noise. Initial accuracy is
~0.1-0.45 depending on the difficulty; completions reach ``length`` = 32 tokens.

(1) Exact drift at a fixed policy. For each seed, at θ_0 and at checkpoints of that
    seed's dr_grpo trajectory, ``drift_groups`` groups are sampled; every method's
    first-step gradient g_m is taken on the same groups, and the exact directional
    derivatives of E[|o| | incorrect] = E[|o|·1{incorrect}]/P(incorrect) and of
    E[r] along the mean gradient give
        D_m = <∇E[|o| | incorrect], ḡ_m> / <∇E[r], ḡ_m>,
    tokens of incorrect-completion length gained per unit of expected-reward gain
    (scale-free: methods compared at equal progress). The expected update direction
    is the expected gradient (plain SGD).
(2) Training. ``outer_steps`` steps of ``prompts_per_step`` groups of G completions,
    μ = ``inner_steps`` steps per batch, β = 0 (the weightings compared alone), with
    two optimizers: Adam (state carried over, as peers do) and normalised gradient
    descent (NGD: θ ← θ − η g/||g||, a fixed-length step along the gradient direction,
    i.e. along the direction D is measured on). Every optimizer x method x seed runs
    in one vmapped, jitted program (common random numbers across methods). The exact
    E[r], E[|o| | correct] and E[|o| | incorrect] are recorded every step. Methods are
    compared at matched progress: E[|o| | incorrect] read at the first step each run
    reaches given expected-reward levels.

Methods: grpo (1/|o_i|), dr_grpo (constant), dapo (1/Σ_j|o_j| per group), gspo
(1/|o_i| with a sequence ratio), prefix-debiased grpo, and a positive control that
exaggerates the length weighting: ω_i ∝ 1/|o_i|² (grpo with A_i·mean|o|/|o_i|).

Criteria (fixed before the run; ``claims.py``), 95% Student-t intervals over seeds:

- Claim (Dr. GRPO's critique) — reproduced iff the paired difference D_grpo − D_dr_grpo
  at θ_0 lies above 0. Not reproduced iff it lies below 0, or it contains 0 while
  the positive control's D_control − D_dr_grpo lies above 0 and the grpo
  interval's upper end is below a quarter of the control's lower end (the design
  would have seen a quarter of the control's effect). Otherwise inconclusive.
- Positive control (design power) — reproduced iff D_control − D_dr_grpo at θ_0
  lies above 0; not reproduced iff below 0.
- Training at matched progress, per optimizer — for each seed, the mean over 5 reward
  levels (from 10% to 100% of the way between θ_0's E[r] and the highest E[r] both
  runs reach) of E[|o| | incorrect]_grpo − E[|o| | incorrect]_dr_grpo: reproduced iff
  its interval lies above 0, not reproduced iff below 0, inconclusive otherwise (also
  when a seed's runs gain less than 0.05 in E[r]).

Fewer than 5 seeds with a defined statistic decide nothing. Disclosure: the NGD arm
and its claim were added after a first quick run with Adam alone (Adam's training
claim came out inconclusive); the NGD claim's criterion was written before that arm
ran, and its step length was chosen from reward curves only (progress comparable to
Adam's).

Files: ``config.py`` (sizes, methods), ``task.py`` (the task, the policy, exact metrics), ``measure.py`` (drift
and training, no I/O), ``claims.py`` (the decision rules and their texts, pure), ``report.py`` (tables,
figure, notes: the only I/O).
"""

from __future__ import annotations

from experiments.common import Context, Outcome
from experiments.length_bias import claims, measure, report
from experiments.length_bias.config import CONTROL, METHODS, NAME, REQUIRED, Config, _config

__all__ = ["CONTROL", "METHODS", "NAME", "REQUIRED", "Config", "run"]


def run(ctx: Context) -> Outcome:
    """Runs the experiment at ``ctx.scale`` and writes its results into ``ctx.out``."""
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config) -> Outcome:
    m = measure.measure(cfg, ctx.seed, ctx.progress)
    return report.write(ctx, cfg, m, claims.claims_of(m.drift0, m.matched))
