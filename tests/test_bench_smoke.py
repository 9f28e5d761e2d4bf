"""Smoke test of the benchmark machinery (experiments/bench.py) at trivial sizes.

It checks structure only (bench.json keys, bench.md sections, interleaving
order), never a timing. The fast test runs the sections that need no
transformer compile; the ``slow`` one runs every section (~1-3 min on CPU,
dominated by XLA compiling the transformer programs).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import bench

ROW_KEYS = {"case", "rows", "T", "B", "G", "jgrpo_s", "floor_s", "floor_ratio", "samples"}


def _load(out):
    res = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    assert res["errors"] == {}, res["errors"]
    assert {"config", "backend", "device", "cores", "jax", "runtime_s", "section_s"} <= set(res["meta"])
    assert "## Goals" in md
    for goal in res["goals"]:
        assert {"goal", "what", "measured", "target", "met"} <= set(goal)
        assert goal["goal"] in bench.GOALS
    return res, md


def test_race_interleaves_and_rotates():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.race(fns, rounds=3, min_sample_s=0.0)
    # one warm-up call each, then rounds whose order rotates
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert set(times) == {"a", "b"}
    assert len(times["a"].samples) == 3 and times["a"].median >= 0


def test_bench_smoke(tmp_path):
    cfg = dataclasses.replace(bench.Config.smoke(), sections=("loss", "sweep"))
    assert bench.main(tmp_path, quick=True, config=cfg) == 0
    res, md = _load(tmp_path)
    assert {"bandwidth", "loss", "sweep"} <= set(res)
    assert {"inplace_GBps", "fresh_GBps", "dispatch_s", "bytes_moved"} <= set(res["bandwidth"])
    rows = res["loss"]["rows"]
    assert len(rows) == 3  # three losses at the one smoke size
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert "speedup_vs_verl" in row or row["verl_skipped"]
    for prof in res["loss"]["profile"].values():
        assert {"floor_bytes_per_token", "measured_s", "ops_ms"} <= set(prof)
    for key in ("adam_after_clip", "grpo_inner_loop"):
        s = res["sweep"][key]
        assert {"settings", "steps", "sims_per_s", "speedup_vs_loop", "samples"} <= set(s)
    assert {g["goal"] for g in res["goals"]} >= {"loss_vs_floor", "sweep_vs_loop"}
    assert "## 1. Loss + gradient" in md and "## 3. Inner-loop sweeps" in md


@pytest.mark.slow
def test_bench_smoke_all_sections(tmp_path):
    assert bench.main(tmp_path, quick=True, config=bench.Config.smoke()) == 0
    res, md = _load(tmp_path)
    assert set(bench.SECTIONS) <= set(res)
    dec = res["decomposition"]
    assert {"speedup_vs_subset_grads", "speedup_vs_per_token", "pieces_in_forwards", "xla", "check"} <= set(dec)
    assert dec["check"]["subset_grads_rel_err"] < 1e-4 and dec["check"]["per_token_rel_err"] < 1e-4
    train = res["train"]
    assert {"flops_analytic", "train_GFLOPs", "matmul_GFLOPs", "fraction_of_matmul"} <= set(train)
    for kind in ("loss_grad", "decomposition", "train_step"):
        rows = res["scaling"][kind]["rows"]
        assert rows[0]["time_ratio"] == 1.0 and len(rows) == 1 + 2 * len(bench.Config.smoke().scale_factors)
    assert {g["goal"] for g in res["goals"]} == set(bench.GOALS) - {"loss_vs_verl"}
    for title in ("## 2. Gradient decomposition", "## 4. Training step", "## 5. Scaling"):
        assert title in md
