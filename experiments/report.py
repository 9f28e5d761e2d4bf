"""The report: every experiment found in an output folder, collected into ``report.md``.

``write_report`` reads what is on disk (each ``<out>/<name>/result.json`` and
``table.md``), not only what the current command ran, so running experiments one at
a time into the same folder still gives one complete report.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

from experiments.common import claims_table, markdown_table, write_text


def load_results(out: Path) -> list[dict]:
    """Every ``<out>/*/result.json``, in the registry's order (unknown names last, sorted).

    Hidden folders (a run in progress or killed: ``.<name>.partial``, ``.<name>.old``) are not results.
    """
    from experiments import REGISTRY

    out = Path(out)
    found = {p.parent.name: p for p in sorted(out.glob("*/result.json")) if not p.parent.name.startswith(".")}
    order = [n for n in REGISTRY if n in found] + sorted(n for n in found if n not in REGISTRY)
    results = []
    for name in order:
        try:
            results.append(json.loads(found[name].read_text()))
        except (OSError, json.JSONDecodeError) as e:
            results.append({"experiment": name, "error": f"unreadable result.json: {e}"})
    return results


def write_report(out: Path, timings: dict | None = None, *, failures=()) -> Path:
    """Writes ``out/report.md`` (atomically) from every experiment folder under ``out``."""
    import jax

    out = Path(out)
    results = load_results(out)
    rows_claims = []
    scales = sorted({str(r.get("scale")) for r in results if "scale" in r})
    for r in results:
        if "error" in r:
            continue
        claims = r.get("claims", [])
        rows_claims.append(claims_table(claims, experiment=r["experiment"]) if claims else "")
    summary = _merge_tables(rows_claims)
    failed = [(name, err) for name, err in failures]
    header = [
        "# jgrpo: reproduction report",
        "",
        f"Scale `{', '.join(scales) or '?'}`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, "
        f"Python {platform.python_version()}.",
        "",
        "Each claim says, before its run, the criterion that decides it and what would falsify it. "
        "`experiment`: a measurement over ≥ 5 seeds with a 95% confidence interval; `verification`: an "
        "identity checked to rounding (it holds by construction of correct code).",
        "",
        "## Summary",
        "",
        summary,
    ]
    if failed:
        header += [markdown_table(["experiment", "FAILED"], [(n, e[:200]) for n, e in failed]), ""]
    if timings:
        header += [markdown_table(["experiment", "seconds (this run)"], [(k, f"{v:.0f}") for k, v in timings.items()])]
    sections = []
    for r in results:
        name = r["experiment"]
        path = out / name / "table.md"
        if path.exists():
            text = path.read_text()
            fig = r.get("figure")
            if fig:  # figures are referenced relative to the experiment folder
                text = text.replace(f"]({fig})", f"]({name}/{fig})")
            sections.append(text)
    report = out / "report.md"
    write_text(report, "\n".join(header + sections))
    _write_run_info(out, timings or {}, scales)
    return report


def _write_run_info(out: Path, timings: dict, scales: list[str]) -> None:
    """``out/run.json``: scale, date, machine and per-experiment seconds (merged with earlier runs)."""
    import os

    import jax

    from experiments.common import write_json

    path = out / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    seconds = {**info.get("seconds", {}), **{k: float(v) for k, v in timings.items()}}
    dev = jax.devices()[0]
    machine = f"{os.cpu_count()} CPU cores" if dev.platform == "cpu" else f"{dev.device_kind} x{jax.device_count()}"
    info.update(
        scale=", ".join(scales),
        date=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
        machine=machine,
        jax=jax.__version__,
        seconds=seconds,
        total_seconds=sum(seconds.values()),
    )
    write_json(path, info)


def _merge_tables(tables: list[str]) -> str:
    """Concatenates Markdown tables with identical headers into one table."""
    tables = [t for t in tables if t.strip()]
    if not tables:
        return "(no claims)\n"
    lines = tables[0].strip().splitlines()
    for t in tables[1:]:
        lines += t.strip().splitlines()[2:]
    return "\n".join(lines) + "\n"
