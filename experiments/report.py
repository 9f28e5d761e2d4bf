"""Collects every experiment's table.md into results/report.md."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

from experiments.common import markdown_table, write_text


def write_report(out: Path, outcomes, timings: dict, *, scale: str, failures=()) -> Path:
    """Writes ``out/report.md`` (atomically) from the experiments' ``table.md`` files."""
    import jax

    out = Path(out)
    rows = []
    for o in outcomes:
        for claim, measured, ok in o.claims:
            rows.append((o.name, claim, measured, "n/a" if ok is None else ("yes" if ok else "**no**")))
    for name, err in failures:
        rows.append((name, "FAILED", err[:120], ""))
    header = [
        "# jgrpo: reproduction report",
        "",
        f"Scale `{scale}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, "
        f"Python {platform.python_version()}.",
        "",
        "## Summary",
        "",
        markdown_table(["experiment", "claim", "measured", "reproduced"], rows),
        markdown_table(["experiment", "seconds"], [(k, f"{v:.0f}") for k, v in timings.items()]),
    ]
    sections = []
    for o in outcomes:
        path = out / o.name / "table.md"
        if path.exists():
            text = path.read_text()
            # figures are referenced relative to the experiment folder
            if o.figure:
                text = text.replace(f"]({o.figure})", f"]({o.name}/{o.figure})")
            sections.append(text)
    report = out / "report.md"
    write_text(report, "\n".join(header + sections))
    return report
