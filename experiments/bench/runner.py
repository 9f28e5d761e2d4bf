"""Runs the selected sections in registry order and writes bench.json and bench.md."""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.bench import env
from experiments.bench.config import Config
from experiments.bench.goals import collect
from experiments.bench.registry import Context, load, plan
from experiments.bench.render import markdown
from experiments.common import write_json, write_text

__all__ = ["main", "run"]


def run(cfg: Config, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every section of ``cfg`` (and what they need), writes bench.json and bench.md into ``out``.

    bench.json is rewritten after every section, so that a crash keeps what was
    measured; a failing section is recorded under ``errors`` and the others still run.

    Returns:
      bench.json's content: ``meta``, ``config``, one entry per section that ran, ``goals``, ``errors``.
    """
    start = time.perf_counter()
    out = Path(out)
    meta = env.machine(cfg.name)
    res: dict[str, Any] = {"meta": meta, "config": dataclasses.asdict(cfg), "errors": {}}
    peers, skip = env.load_peers(cfg.peers)
    meta["peers"] = getattr(peers, "version", None)
    meta["peer_skip"] = skip
    if skip:
        log(f"peer rows skipped: {skip}")
    ctx = Context(peers=peers, peer_skip=skip, log=log, results={})
    for name in plan(cfg.sections):
        section = load(name)
        t0 = time.perf_counter()
        missing = [n for n in section.needs if n not in ctx.results]
        try:
            if missing:
                raise RuntimeError(f"section {name} needs {missing}, which failed")
            res[name] = ctx.results[name] = section.measure(cfg, ctx)
        except Exception:  # one failing section must not lose the others
            res["errors"][name] = traceback.format_exc()
            log(f"{name} FAILED:\n{res['errors'][name]}")
        meta["section_s"][name] = time.perf_counter() - t0
        meta["runtime_s"] = time.perf_counter() - start
        res["goals"] = collect(res)
        write_json(out / "bench.json", res)
    meta["runtime_s"] = time.perf_counter() - start
    res["goals"] = collect(res)
    write_json(out / "bench.json", res)
    write_text(out / "bench.md", markdown(res))
    return res


def main(out: Path, quick: bool, *, config: Config | None = None) -> int:
    """CLI entry (``python -m experiments bench``): runs the benchmarks, prints the table, writes bench.json/bench.md.

    Returns 0 when every section ran (goals missed or not), 1 when a section failed.
    """
    cfg = config or (Config.quick() if quick else Config.full())

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    res = run(cfg, Path(out), log)
    print(markdown(res))
    print(f"wrote {Path(out) / 'bench.json'} and {Path(out) / 'bench.md'}")
    return 1 if res["errors"] else 0
