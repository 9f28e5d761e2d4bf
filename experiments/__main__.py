"""Command line: ``python -m experiments list | run NAME|all | bench | bench-readme | readme`` (``--help``: options)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from experiments import DESCRIPTIONS, MODEL_EXPERIMENTS, NO_MODEL_REASON, REGISTRY


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    names = ", ".join(REGISTRY)
    run = sub.add_parser(
        "run",
        help="run one experiment or all",
        description=f"Run one experiment or all. Experiments: {names}.",
        epilog="\n".join(f"  {n:16s} {DESCRIPTIONS[n]}" for n in REGISTRY),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("name", help=f"an experiment name ({names}) or 'all'")
    run.add_argument("--scale", default="quick", choices=["quick", "paper"], help="quick: CPU minutes; paper: GPU/TPU")
    run.add_argument(
        "--out",
        default="results",
        help="output folder (default: results); each experiment writes its own sub-folder <out>/<name>/ "
        "(result.json, table.md, figure) and <out>/report.md collects every experiment found there",
    )
    run.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    run.add_argument(
        "--devices", type=int, default=None, help="on CPU: number of virtual devices for the data-parallel mesh"
    )
    run.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="a local Hugging Face checkpoint directory (Qwen2/2.5, Qwen3, Llama 3: config.json, safetensors, "
        "tokenizer.json) replacing the tiny transformer in the experiments that use a model "
        f"({', '.join(MODEL_EXPERIMENTS)}); with 'all', only those run",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip experiments that already have a complete result.json of the same scale and seed in --out "
        "(a killed 'run all' continues where it stopped)",
    )
    bench = sub.add_parser("bench", help="run the benchmarks (ratios side by side) and write bench.json")
    bench.add_argument("--out", default="results", help="output folder (default: results)")
    bench.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    bench_readme = sub.add_parser(
        "bench-readme", help="regenerate the README's performance section from bench.json files"
    )
    bench_readme.add_argument(
        "--bench",
        action="append",
        default=None,
        help="a bench.json written by 'bench' (default: docs/bench.json); repeat it for one column per run",
    )
    bench_readme.add_argument("--readme", default="README.md", help="the README to update (default: README.md)")
    readme = sub.add_parser("readme", help="regenerate the README's results section from saved results")
    readme.add_argument("--results", default="docs/results", help="results folder (default: docs/results)")
    readme.add_argument("--readme", default="README.md", help="the README to update (default: README.md)")
    readme.add_argument("--copy-from", default=None, help="first copy a run's output folder into --results")
    return p


def _resolve(name: str):
    module, func = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for name in REGISTRY:
            print(f"{name:16s} {DESCRIPTIONS[name]}")
        return 0
    if args.command == "readme":
        from experiments import readme as rd

        try:
            if args.copy_from:
                rd.copy_results(Path(args.copy_from), Path(args.results))
            changed = rd.update_readme(Path(args.readme), Path(args.results))
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.readme}: {'updated' if changed else 'unchanged'} from {args.results}")
        return 0
    if args.command == "bench-readme":
        from experiments.bench import readme as bench_readme

        benches = [Path(p) for p in (args.bench or ["docs/bench.json"])]
        for path in benches:
            try:
                bench_readme.load_bench(path)
            except ValueError as e:
                print(f"error: --bench {e}", file=sys.stderr)
                return 2
        try:
            changed = bench_readme.update_readme(Path(args.readme), benches)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.readme}: {'updated' if changed else 'unchanged'} from {', '.join(map(str, benches))}")
        return 0
    if args.command == "bench":
        from experiments import bench

        problem = _check_out(Path(args.out))
        if problem:
            print(f"error: --out {args.out}: {problem}", file=sys.stderr)
            return 2
        return bench.main(out=Path(args.out), quick=args.quick)
    names = list(REGISTRY) if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        print(f"error: unknown experiment {unknown[0]!r}; known: {', '.join(REGISTRY)}, all", file=sys.stderr)
        return 2
    out = Path(args.out)
    problem = _check_out(out)
    if problem:
        print(f"error: --out {out}: {problem}", file=sys.stderr)
        return 2
    if args.model is not None:
        names, problem = _model_names(args.name, names, args.model)
        if problem:
            print(f"error: --model: {problem}", file=sys.stderr)
            return 2
    if args.devices is not None:
        if args.devices < 1:
            print(f"error: --devices must be >= 1, got {args.devices}", file=sys.stderr)
            return 2
        if "jax" in sys.modules:
            print("error: --devices must be set before jax is imported", file=sys.stderr)
            return 2
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    from experiments.common import Context
    from experiments.report import write_report

    outcomes, failures, timings = [], [], {}
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:16s}"), BarColumn(), TextColumn("{task.fields[msg]}"), TimeElapsedColumn()
    ) as progress:
        for name in names:
            task = progress.add_task(name, total=1.0, msg="starting")

            def report(frac: float, msg: str, task=task) -> None:
                progress.update(task, completed=min(max(frac, 0.0), 1.0), msg=msg)

            _recover(out, name)
            ctx = Context(scale=args.scale, out=out / name, seed=args.seed, progress=report, model=args.model)
            if args.resume and _complete(ctx):
                report(1.0, "done earlier (--resume)")
                continue
            t0 = time.perf_counter()
            try:
                # the experiment writes into a staging folder that replaces <out>/<name> once it is complete:
                # a run killed at any point leaves the previous complete result (or none), never a mix
                staging = _staging(out, name)
                outcomes.append(_resolve(name)(dataclasses.replace(ctx, out=staging)))
                _commit(staging, ctx.out)
                report(1.0, "done")
            except Exception as e:  # keep going: one failure must not lose the other results
                failures.append((name, e))
                report(1.0, f"FAILED: {type(e).__name__}")
                traceback.print_exc()
            timings[name] = time.perf_counter() - t0
    write_report(out, timings, failures=[(n, repr(e)) for n, e in failures])
    _summary(outcomes, timings, failures)
    print(f"report: {out / 'report.md'}")
    return 1 if failures else 0


def _model_names(requested: str, names: list[str], model: str) -> tuple[list[str], str | None]:
    """The experiments to run with ``--model`` and why not (None when fine), checked before any compute."""
    from experiments.shared.checkpoint import check_path

    problem = check_path(model)
    if problem:
        return names, problem
    if requested == "all":
        skipped = [n for n in names if n not in MODEL_EXPERIMENTS]
        if skipped:
            print(f"--model: running {', '.join(n for n in names if n in MODEL_EXPERIMENTS)}; skipping "
                  f"{', '.join(skipped)} (tabular-policy experiments)", file=sys.stderr)  # fmt: skip
        return [n for n in names if n in MODEL_EXPERIMENTS], None
    bad = [n for n in names if n not in MODEL_EXPERIMENTS]
    if bad:
        n = bad[0]
        return names, (
            f"experiment {n!r} does not take a checkpoint: {NO_MODEL_REASON.get(n, 'it runs on a tabular policy')}. "
            f"Experiments that do: {', '.join(MODEL_EXPERIMENTS)}"
        )
    return names, None


def _check_out(out: Path) -> str | None:
    """Why ``out`` cannot hold the results (None when it can), checked before any compute."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                return f"{p} exists and is not a folder"
            if not os.access(p, os.W_OK | os.X_OK):
                return f"{p} is not writable"
            return None
    return None


def _complete(ctx) -> bool:
    """True when ``ctx.out`` holds a complete result of the same scale and seed (result.json, table.md, figure)."""
    import json

    path = ctx.out / "result.json"
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    figure = res.get("figure")
    return (
        res.get("scale") == ctx.scale
        and res.get("seed") == ctx.seed
        and res.get("model") == ctx.model
        and (ctx.out / "table.md").exists()
        and (not figure or (ctx.out / figure).exists())
    )


def _staging(out: Path, name: str) -> Path:
    """An empty ``<out>/.<name>.partial/`` for a run of ``name`` (a killed run's leftovers are removed)."""
    staging = out / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _commit(staging: Path, final: Path) -> None:
    """Replaces ``final`` by the complete ``staging`` folder: two renames, the old result removed after."""
    old = final.parent / f".{final.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def _recover(out: Path, name: str) -> None:
    """Finishes a :func:`_commit` killed between its renames: the staged result if complete, else the old one."""
    final, staging, old = out / name, out / f".{name}.partial", out / f".{name}.old"
    if final.exists():
        return
    if (staging / "result.json").exists():  # experiments.common.finish writes result.json last
        os.replace(staging, final)
    elif old.exists():
        os.replace(old, final)


def _summary(outcomes, timings, failures) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="summary")
    for col in ("experiment", "claim", "measured", "verdict", "seconds"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        if not o.claims:
            table.add_row(o.name, "(no claims)", "", "", f"{timings[o.name]:.0f}")
        for k, c in enumerate(o.claims):
            mark = c.verdict.upper() if c.verdict == "not reproduced" else c.verdict
            table.add_row(
                o.name if k == 0 else "",
                f"[{c.kind}] {c.claim}",
                c.measured,
                mark,
                f"{timings[o.name]:.0f}" if k == 0 else "",
            )
    for name, e in failures:
        table.add_row(name, "FAILED", f"{type(e).__name__}: {e}"[:80], "", f"{timings[name]:.0f}")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
