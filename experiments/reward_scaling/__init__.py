"""Prop. 2 in full: reward-scale invariance of every preset × optimizer × β × ε × weight decay × dtype.

Scaling every reward by φ > 0 multiplies the advantages by φ (Eq. 19). The policy
part of J then scales as φ^d, d the preset's reward degree
(``analysis.reward_scale.reward_degree``): d = 0 when α carries 1/σ (the
objective itself does not depend on φ: every optimizer is invariant), d = 1 when
α carries no reward scale (Prop. 2: with β = 0 and ε → 0 Adam(W) is invariant,
Eqs. 23–27), and no degree for Table 1's CPPO (pruning on centred |A_i| > γ).

What is measured (``analysis.reward_scale.deviation_grid``): μ optimizer steps on
one fixed batch from the same start (π_old = θ_0), for φ = 1 (the reference) and
every φ of the sweep, and the largest relative parameter deviation over the steps

    dev(φ) = max_t ‖θ_t(φ) − θ_t(1)‖ / ‖θ_t(1) − θ_0‖,

next to the *measured* floating-point noise floor: the same quantity for runs
whose objective equals the reference's up to rounding — φ = 1 ± 1 ulp (rewards
scaled by a rounding error) and φ = 1 on batches whose prompts and completions
are reordered (another order of the float reductions) — as many floor runs as φ
values, so that maxima are compared like with like.

Decision rules (fixed before the runs; decades of the floor, not tuned values):

- a map cell (policy, dtype, preset, setting) is *invariant* when the largest
  deviation over its data sets and φ ≠ 1 is at most 10× the largest floor over the
  same data sets (log10 ratio ≤ 1) and the median data set is within 10× its own
  floor, *broken* when in every data set the deviation is at least 100× that data
  set's own floor, *between* otherwise;
- a verification (an identity checked to rounding) holds when every cell it names
  is invariant, fails when one is broken;
- an experiment (how much a factor breaks it at realistic φ ∈ ``realistic_phis``)
  takes per data set r = log10(max_φ dev(φ) / floor) and its 95% Student-t
  interval over data sets (seeds × reward kinds): "breaks" is reproduced when the
  lower bound exceeds 2 for every preset tested, not reproduced when the upper
  bound of some preset is below 1; "holds" the other way round.

Policies: the tabular softmax policy (every preset; float32 and bf16 parameters)
and a tiny NNX transformer (a few presets). One compile per (policy, dtype,
preset): the settings (AdamW / Adam + L2 / SGD × β × ε × λ, through the traced
``adamw_or_sgd`` optimizer), φ, the floor runs and the data sets are traced
``vmap`` axes of one program.

Files: ``config.py`` (sizes and the optimizer settings), ``data.py`` (presets and data sets), ``measure.py`` (the
compiled grids, no I/O), ``cells.py`` (a map cell and its classification, pure), ``claims.py`` (the decision
rules and their texts, pure), ``report.py`` (tables, figure, notes: the only I/O).
"""

from __future__ import annotations

import dataclasses

from experiments.common import Context, Outcome
from experiments.reward_scaling import claims, measure, report
from experiments.reward_scaling.config import NAME, Config, Setting, _config, settings

__all__ = ["NAME", "Config", "Setting", "run", "settings"]


def run(ctx: Context) -> Outcome:
    """Runs the experiment at ``ctx.scale`` and writes its results into ``ctx.out``.

    With ``ctx.model`` (``--model PATH``) the transformer rows run on the checkpoint.
    """
    cfg = _config(ctx.scale)
    if ctx.model is not None:
        cfg = dataclasses.replace(cfg, model=ctx.model, transformer=True)
    return _run(ctx, cfg)


def _run(ctx: Context, cfg: Config) -> Outcome:
    m = measure.measure(cfg, ctx.progress)
    return report.write(ctx, cfg, m, claims.make_claims(cfg, m.cells))
