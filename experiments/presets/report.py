"""The presets table: one row per preset × flavour; the only place with I/O."""

from __future__ import annotations

from experiments.common import Context, finish, markdown_table

NAME = "presets"
COLUMNS = ("loss", "grad_norm", "clip_frac_high", "clip_frac_low", "ratio_mean", "kl")


def write(ctx: Context, records: list[tuple[str, str, dict]]):
    """Writes table.md and result.json (no claims: a table of the library at a glance); returns the Outcome.

    ``records``: ``(label, flavor, numbers)`` per row (``experiments.presets.measure.measure``).
    """
    result = {f"{label}/{flavor}": rec for label, flavor, rec in records}
    rows = [(label, flavor, *(rec[c] for c in COLUMNS)) for label, flavor, rec in records]
    table = markdown_table(
        ["method", "flavor", "loss = -J", "|dloss/dlogp|", "clip high", "clip low", "ratio mean", "kl"], rows
    )
    return finish(
        ctx,
        NAME,
        "Every preset on one sample group",
        {"presets": result},
        table,
        [],
        None,
        notes="B = 2 prompts, G = 4, T = 6; one empty completion; random log-ratios of scale 0.25.",
    )
