"""Is clipping needed? (arXiv 2601.05002, Sec. 5 and Limitations: "the mechanism may be unnecessary").

The paper argues that GRPO-style methods converge with clipping inactive (μ = 1)
and suggests omitting the clip altogether. Tested here on the exact tabular
policy (reward 1 iff the completion contains token 0; ``analysis.tabular`` gives
the exact expected reward E = P(correct), the task's accuracy): a short GRPO
training run of K batches (B groups × G completions, sampled from the current
policy; Adam β1 0.9, state carried), μ ∈ {1, 2, 4, 8} inner steps per batch, for
four variants of the same GRPO objective (β = 0):

- clip: Eq. 1 with ε_low = ε_up = 0.2;
- no clip: the unclipped importance-sampling surrogate (ε_low = 1, ε_up = ∞);
- guard: clip + ``jgrpo.optim.trust_region_guard`` (no ratio leaves the region);
- projection: clip + ``jgrpo.optim.project_clipped`` (the component of each step
  that moves clipped tokens further out is removed).

Measured per seed: the exact accuracy after every batch and the exact
expected-reward gain per sample, (E_K − E_0)/(K·B·G). Every run is one member of
``experiments.shared.sweep.make_sweep`` (one compile for every μ and variant: they
are unbatched traced switches), vmapped over η and seeds.

Claims (criteria written here, before the run):
- verification: at μ = 1 the ratio is exactly 1 at the only step of each batch,
  so clip and no clip give the same run (to float rounding).
- the paper's suggestion: at the largest η of the grid (where the clip acts the
  most) and every μ ∈ {2, 4, 8} at which the clip acts at all, omitting the clip
  does not lose more than 10% of the clipped run's ΔE per sample
  (non-inferiority, paired over seeds, Bonferroni-adjusted 95% CIs over the μ
  compared). A cell where the clip never acts cannot show a difference and is
  left out; with no such cell the claim is inconclusive.
- beyond: the same comparison for the guard and the projection.

Files: ``config.py`` (sizes), ``measure.py`` (the grid, no I/O), ``claims.py`` (the decision rules and their
texts, pure), ``report.py`` (table, figure, notes: the only I/O).
"""

from __future__ import annotations

import time

from experiments.clipping import claims, measure, report
from experiments.clipping.config import LABELS, NAME, VARIANTS, Config, _config
from experiments.common import Context, Outcome

__all__ = ["LABELS", "NAME", "VARIANTS", "Config", "run"]


def run(ctx: Context) -> Outcome:
    """Runs the experiment at ``ctx.scale`` and writes its results into ``ctx.out``."""
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config) -> Outcome:
    t0 = time.perf_counter()
    grid = measure.run_grid(cfg, ctx.seed, lambda f, m: ctx.progress(0.02 + 0.9 * f, m))
    runtime = time.perf_counter() - t0
    return report.write(ctx, cfg, grid, claims.claims_of(grid, cfg), runtime)
