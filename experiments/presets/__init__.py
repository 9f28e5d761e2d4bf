"""Every preset's loss and diagnostics on one sample group (the library at a glance).

B = 2 prompts, G = 4, T = 6, one empty completion and one group whose rewards are all equal;
every preset in every flavour, and the documented variants beside them (``measure.VARIANTS``).
A table, no claims. Files: ``measure.py`` (the batch and the numbers, no I/O), ``report.py``
(the table: the only I/O).
"""

from __future__ import annotations

from experiments.common import Context, Outcome
from experiments.presets import measure, report
from experiments.presets.report import NAME

__all__ = ["NAME", "run"]


def run(ctx: Context) -> Outcome:
    """Writes the table into ``ctx.out`` (the same at every scale)."""
    return report.write(ctx, measure.measure(ctx.seed, ctx.progress))
