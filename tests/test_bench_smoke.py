"""The benchmark machinery (experiments/bench/): structure, decision rules and rendering, never a timing.

Fast tests: the harness's interleaving, the section registry, the goal rule, each
section's ratio logic and labels on synthetic numbers (an extrapolated ratio must
say so, a sweep must be quoted against both baselines, a reference rate must name
its device), bench.md and the README section from them, the ``bench-readme``
command, and one tiny end-to-end run of the bandwidth and loss sections. The
``slow`` test runs every section at trivial sizes (~1-3 min on CPU, dominated by
XLA compiling the transformer programs) and renders the README from its bench.json.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import bench
from experiments.__main__ import main as cli
from experiments.bench import goals as goals_mod
from experiments.bench import readme, registry
from experiments.bench.harness import Timing
from experiments.bench.render import markdown
from experiments.bench.sections import decomposition, loss, scaling, sweep, train
from experiments.common import write_json

ROW_KEYS = {"case", "rows", "T", "B", "G", "jgrpo_s", "floor_s", "floor_ratio", "samples"}


def _load(out):
    res = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    assert res["errors"] == {}, res["errors"]
    assert {"config", "backend", "device", "device_label", "cores", "jax", "runtime_s", "section_s"} <= set(res["meta"])
    assert "## Goals" in md
    for goal in res["goals"]:
        assert {"goal", "key", "what", "measured", "target", "met", "also", "extrapolated"} <= set(goal)
        assert goal["goal"] in bench.GOALS
    return res, md


# ----------------------------------------------------------------------------- harness and registry


def test_race_interleaves_and_rotates():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.race(fns, rounds=3, min_sample_s=0.0)
    # one warm-up call each, then rounds whose order rotates
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert set(times) == {"a", "b"}
    assert len(times["a"].samples) == 3 and times["a"].median >= 0


def test_registry_lists_every_section_once_with_its_parts():
    assert bench.SECTIONS == tuple(registry.SECTIONS)
    assert bench.SECTIONS == ("bandwidth", "loss", "decomposition", "sweep", "train", "scaling", "share", "hf_train")
    for name in bench.SECTIONS:
        section = registry.load(name)
        assert section.name == name and section.title
        assert all(callable(f) for f in (section.measure, section.goals, section.render, section.summary))
        assert set(section.needs) <= set(bench.SECTIONS)
    # a section's needs run first, in registry order, even when not selected
    assert registry.plan(("sweep", "loss")) == ["bandwidth", "loss", "sweep"]
    assert registry.plan(("scaling",)) == ["scaling"]
    with pytest.raises(ValueError, match="unknown benchmark section 'nope'"):
        registry.load("nope")
    with pytest.raises(ValueError, match="Config.sections must be among"):
        dataclasses.replace(bench.Config.smoke(), sections=("loss", "nope"))
    with pytest.raises(ValueError, match="decomp_chunks_timed"):
        dataclasses.replace(bench.Config.smoke(), decomp_chunks_timed=0)


def test_the_full_config_measures_the_per_token_baseline_whole():
    assert bench.Config.full().decomp_chunks_timed is None
    assert bench.Config.quick().decomp_chunks_timed is not None  # quick extrapolates, and says so (below)


# ----------------------------------------------------------------------------- the goal rule


def test_goal_rule_direction_and_unmeasured():
    assert goals_mod.judge("loss_vs_floor", 1.5) is True  # lower is better: within 2x of the floor
    assert goals_mod.judge("loss_vs_floor", 2.5) is False
    assert goals_mod.judge("sweep_vs_loop", 150.0) is True  # higher is better
    assert goals_mod.judge("sweep_vs_loop", 50.0) is False
    assert goals_mod.judge("train_vs_matmul", 0.3) is True  # the target itself meets it
    for unmeasured in (None, float("nan"), "nan"):
        assert goals_mod.judge("loss_vs_verl", unmeasured) is None
    g = goals_mod.goal("loss_vs_floor", "k", 2.5, what="w")
    assert (g["met"], g["direction"], g["target"]) == (False, "<=", 2.0)
    with pytest.raises(ValueError, match="unknown goal 'fast'"):
        goals_mod.goal("fast", "k", 1.0, what="w")


# ----------------------------------------------------------------------------- section logic on synthetic numbers


def _timing(seconds: float) -> Timing:
    return Timing(seconds, [seconds])


def _decomposition(timed_chunks: int, n_chunks: int = 23) -> dict:
    t_dec, t_fwd, t_timed = 0.25, 0.01, 0.01 + timed_chunks * 0.75
    t_b, basis = decomposition.per_token_time(t_timed, t_fwd, timed_chunks, n_chunks)
    return {
        "G": 16,
        "T": 64,
        "P": 8,
        "params": 124800,
        "completion_tokens": 735,
        "contributions": 8,
        "vjps_in_decompose": 9,
        "per_token_chunk": 32,
        "per_token_chunks": n_chunks,
        "per_token_chunks_timed": timed_chunks,
        "per_token_extrapolated": basis,
        "per_token_timed_s": t_timed,
        "speedup_vs_per_token_timed_part": t_timed / t_dec,
        "check": {"subset_grads_rel_err": 5e-7, "per_token_rel_err": 6e-7},
        "decompose_s": t_dec,
        "speedup_vs_subset_grads": 0.27 / t_dec,
        "speedup_vs_per_token": t_b / t_dec,
        "pieces_in_forwards": {"decompose": 25.0, "one_subset_grad_call": 3.0, "decompose_per_vjp": 2.7},
        "flop_ratio_vs_subset_grads": 1.43,
        "relative_flop_rate": 0.75,
        "faults_per_call": {},
    }


def test_per_token_time_is_measured_whole_or_labelled_an_extrapolation():
    assert decomposition.per_token_time(17.5, 0.01, 23, 23) == (17.5, None)
    t, basis = decomposition.per_token_time(0.76, 0.01, 1, 23)  # forward + one chunk of 0.75 s
    assert t == pytest.approx(0.01 + 23 * 0.75)
    assert basis == "1 of 23 chunks timed, scaled to all"

    whole = {g["goal"]: g for g in decomposition.goals(_decomposition(23))}
    assert whole["decomp_vs_per_token"]["extrapolated"] is None
    assert whole["decomp_vs_per_token"]["measured"] == pytest.approx((0.01 + 23 * 0.75) / 0.25)
    assert "timed whole" in "\n".join(decomposition.render(_decomposition(23)))

    part = {g["goal"]: g for g in decomposition.goals(_decomposition(1))}
    label = part["decomp_vs_per_token"]["extrapolated"]
    assert "1 of 23 chunks" in label and "the timed part alone: 3.04x" in label  # 0.76 / 0.25
    assert part["decomp_vs_subset_grads"]["extrapolated"] is None
    body = "\n".join(decomposition.render(_decomposition(1)))
    assert "**extrapolated**" in body and "1 of 23 chunks" in body
    assert "extrapolated: 1 of 23 chunks" in decomposition.summary(_decomposition(1))[0]


def _sweep(loop_s: float, single_s: float) -> dict:
    settings = {"vmapped": 10_000, "loop": 10, "single": 100}
    times = {"vmapped": _timing(2.0), "loop": _timing(loop_s), "single": _timing(single_s)}
    return {"settings": 10_000, "steps": 8, **sweep.rates(times, settings)}


def test_sweeps_are_quoted_against_both_baselines_and_the_strongest():
    # vmapped 5000 sims/s; loop 10 / 1 s = 10 sims/s; jitted per setting 100 / 0.5 s = 200 sims/s
    s = _sweep(loop_s=1.0, single_s=0.5)
    assert s["sims_per_s"] == {"vmapped": 5000.0, "loop": 10.0, "single": 200.0}
    assert s["speedup_vs_loop"] == pytest.approx(500.0)
    assert s["speedup_vs_jitted_per_setting"] == pytest.approx(25.0)
    assert (s["strongest_baseline"], s["speedup_vs_strongest"]) == ("single", pytest.approx(25.0))
    # the loop the faster baseline: it is the strongest
    s2 = _sweep(loop_s=0.01, single_s=0.5)
    assert (s2["strongest_baseline"], s2["speedup_vs_strongest"]) == ("loop", pytest.approx(5.0))

    (g,) = sweep.goals({"grpo_inner_loop": s})
    assert (g["goal"], g["measured"], g["met"]) == ("sweep_vs_loop", pytest.approx(500.0), True)
    assert g["also"] == {"vs jitted per-setting call": pytest.approx(25.0)}
    body = "\n".join(sweep.render({"grpo_inner_loop": s}))
    assert "25 (jitted per-setting call)" in body and "vmapped / jitted per setting" in body
    assert "the strongest baseline: jitted per-setting call" in sweep.summary({"grpo_inner_loop": s})[0]


def test_the_inner_loop_is_quoted_against_its_layout_and_its_ceiling():
    # loop 10 sims/s; vmapped 5000, table layout 2000, before issue 10 1000, optimizer alone 10000 sims/s
    settings = {"vmapped": 10_000, "vmapped_table": 10_000, "vmapped_before": 10_000, "optimizer_only": 10_000}
    settings |= {"vmapped_dense": 10_000}
    times = {"vmapped": _timing(2.0), "vmapped_table": _timing(5.0), "vmapped_before": _timing(10.0)}
    times |= {"vmapped_dense": _timing(3.0)}
    times |= {"optimizer_only": _timing(1.0), "loop": _timing(1.0), "single": _timing(0.5)}
    s = {
        "settings": 10_000,
        "steps": 8,
        "chunk": 250,
        **sweep.rates(times, settings | {"loop": 10, "single": 100}),
        **sweep.variant_rates(times, settings | {"loop": 10}),
    }
    assert s["speedup_vs_table_layout"] == pytest.approx(2.5)
    assert s["speedup_vs_dense_core"] == pytest.approx(1.5)
    assert s["table_layout_vs_loop"] == pytest.approx(200.0)
    assert s["before_vs_loop"] == pytest.approx(100.0)
    assert (s["ceiling_vs_loop"], s["fraction_of_ceiling"]) == (pytest.approx(1000.0), pytest.approx(0.5))
    (g,) = sweep.goals({"grpo_inner_loop": s})
    assert g["measured"] == pytest.approx(500.0)
    assert g["also"]["table in its [T, V+1, V] layout"] == pytest.approx(200.0)
    assert g["also"]["ceiling: optimizer only"] == pytest.approx(1000.0)
    text = sweep.summary({"grpo_inner_loop": s})[0]
    assert "[T, V+1, V] layout 200x the loop (the flat layout is 2.5x faster)" in text
    assert "the per-cell log-sum-exp core is 1.5x the dense one's rate" in text
    body = "\n".join(sweep.render({"grpo_inner_loop": s}))
    assert "| vmapped_table |" in body and "flat_policy" in body


def _loss_row(
    bound_exp_s: float, floor_s: float = 1.0, outputs_s: float | None = None, kind: str | None = None, **more: float
) -> dict:
    names = ("jgrpo", "jgrpo_autodiff", "bound_copy", "bound_exp", "bound_two_pass", "bound_copy_inplace")
    times = {n: _timing(s) for n, s in zip(names, (10.0, 20.0, 1.2, bound_exp_s, 5.0, 0.9), strict=True)}
    if outputs_s is not None:
        times["bound_outputs"] = _timing(outputs_s)
    times.update({n: _timing(s) for n, s in more.items()})
    row = {"case": "ppo-clip token-mean", "rows": 1024, "T": 4096, **loss.path_ratios(times, floor_s, floor_s)}
    return row | loss.bound_ratios(times, floor_s, kind)


def test_the_floor_goal_is_reported_against_its_measured_bound():
    row = _loss_row(bound_exp_s=3.0)
    assert row["bound_copy_floor_ratio"] == pytest.approx(1.2)
    assert row["bound_copy_inplace_floor_ratio"] == pytest.approx(0.9)
    # without the loss's passes, the bound is the I/O + exp program's, never the cheaper copy's or the in-place one's
    assert row["bound_floor_ratio"] == pytest.approx(3.0)
    assert (row["fused_vs_bound"], row["fused_vs_two_pass"]) == (pytest.approx(10 / 3), pytest.approx(2.0))
    (g,) = loss.goals({"rows": [row]})
    assert g["met"] is False and g["measured"] == pytest.approx(10.0)
    assert g["also"]["same I/O + exp, no value / floor"] == pytest.approx(3.0)
    assert g["also"]["two-pass bound / floor"] == pytest.approx(5.0)
    text = " ".join(loss.summary({"rows": [row]}))
    assert "takes 3x the floor: above the 2x goal in every row, so the floor is out of reach here" in text
    assert "in two passes, as a loss whose gradient waits for a reduction, 5x" in text
    # a bound within the goal says the floor is reachable: the verdict follows the numbers
    text = " ".join(loss.summary({"rows": [_loss_row(bound_exp_s=1.8)]}))
    assert "takes 1.8x the floor: within the 2x goal" in text


def test_the_floor_goals_bound_is_the_least_program_with_the_losss_passes():
    # token ratio: the least of the fused path, bound_two_pass and bound_counts; cheaper programs that do less
    # than a clipped loss (bound_outputs 1.5, bound_sequence 1.1, the copy 1.2) are never the bound
    row = _loss_row(bound_exp_s=1.4, outputs_s=1.5, kind="token ratio", bound_counts=4.0, bound_sequence=1.1)
    assert (row["least_program"], row["least_floor_ratio"]) == ("bound_counts", pytest.approx(4.0))
    assert row["structure"] == "token ratio"
    (g,) = loss.goals({"rows": [row]})
    assert g["also"]["measured bound: least program with this loss's passes (bound_counts) / floor"] == 4.0
    assert g["also"]["I/O + exp + a value reduced from the gradient (unclipped) / floor"] == pytest.approx(1.5)
    text = " ".join(loss.summary({"rows": [row]}))
    assert (
        "each loss's passes (the fused path or the bound programs of a token-ratio or a sequence-ratio loss) " in text
    )
    assert "takes 4x the floor: above the 2x goal in every row, so the floor is out of reach here" in text
    assert "(the least: bound_counts); skipping a pass that every loss here needs, the I/O with a value reduced" in text
    body = "\n".join(loss._render_bounds([row]))
    assert "| token ratio | bound_counts | 4 |" in body and "bound_outputs / floor" in body
    # the fused path counts among the programs: faster than the bounds, it is the bound
    row = _loss_row(bound_exp_s=1.4, kind="sequence ratio", bound_sequence=12.0)
    assert (row["least_program"], row["least_floor_ratio"]) == ("fused path", pytest.approx(10.0))
    # and a least program within the goal says the floor is reachable
    row = _loss_row(bound_exp_s=1.4, kind="sequence ratio", bound_sequence=1.7)
    text = " ".join(loss.summary({"rows": [row]}))
    assert "takes 1.7x the floor: within the 2x goal (the floor is reachable by such a program)" in text
    with pytest.raises(ValueError, match="kind must be one of"):
        loss.bound_ratios({"jgrpo": _timing(1.0)}, 1.0, "tokens")


def test_the_bound_programs_compute_what_they_say():
    data = loss.loss_data(2, 4, 16)
    logp, batch = loss.batch_of(data)
    progs = loss.bound_programs(logp, batch)
    assert set(progs) == set(loss.BOUNDS)
    for fn in progs.values():
        jax.block_until_ready(fn())  # each runs on the loss's inputs
    m, x = data["mask"], (data["logp"] - data["logp_old"]).astype(np.float64)
    a = data["rewards"] - data["rewards"].mean(-1, keepdims=True)
    n = m.sum()
    value, grad = progs["bound_two_pass"]()
    np.testing.assert_allclose(grad, m * np.exp(x) * a[..., None] / n, rtol=1e-5)
    np.testing.assert_allclose(value, (m * np.exp(x) * a[..., None]).sum() / n, rtol=1e-5)
    value, grad = progs["bound_counts"]()
    clipped = (1.2 * (m * (x > np.log(1.2))).sum(-1) + 0.8 * (m * (x < np.log(0.8))).sum(-1)) * a
    np.testing.assert_allclose(grad, m * np.exp(x) * a[..., None] / n, rtol=1e-5)
    np.testing.assert_allclose(value, (m * np.exp(x) * a[..., None]).sum() / n + clipped.sum() / n, rtol=1e-5)
    value, grad = progs["bound_sequence"]()
    length = m.sum(-1)
    s = np.exp((m * x).sum(-1) / np.maximum(length, 1))
    k = np.minimum(s * a, np.clip(s, 0.8, 1.2) * a) / (np.maximum(length, 1) * 4)
    np.testing.assert_allclose(grad, m * k[..., None], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(value, (k * length).sum(), rtol=1e-5, atol=1e-7)


def _train(fraction: float) -> dict:
    return {
        "model": {"d_model": 256, "n_layers": 4, "d_ff": 1024, "vocab": 128},
        "params": 3291648,
        "shape": {"B": 2, "G": 16, "T": 64, "P": 16, "tokens": 2560},
        "flops_analytic": 51.3e9,
        "flops_xla": 51.9e9,
        "matmul_n": 2048,
        "reference": train.reference_matmul(2048),
        "train_GFLOPs": 58.0 * fraction,
        "matmul_GFLOPs": 58.0,
        "fraction_of_matmul": fraction,
    }


def test_the_reference_matmul_is_labelled_with_what_it_is_and_its_device():
    ref = train.reference_matmul(2048)
    assert "float32 2048x2048" in ref["what"] and ref["device"].startswith("cpu (")
    (g,) = train.goals(_train(0.58))
    assert g["met"] is True and "float32 2048x2048" in g["what"] and "on cpu (" in g["what"]
    assert train.goals(_train(0.029))[0]["met"] is False
    body = "\n".join(train.render(_train(0.58)))
    assert "Reference rate: jitted jnp.matmul of two float32 2048x2048 matrices" in body
    assert "not its datasheet peak" in body


def test_scaling_rows_are_ratios_to_the_first_shape():
    shapes = scaling.scaled_shapes(8, 512, (2,))
    assert shapes == [(8, 512), (16, 512), (8, 1024)]
    times = {"(8, 512)": _timing(1.0), "(16, 512)": _timing(1.5), "(8, 1024)": _timing(3.0)}
    rows = scaling.scaling_rows(times, shapes, lambda g, t: g * t)
    assert [r["time_ratio"] for r in rows] == [1.0, 1.5, 3.0]
    assert [r["per_token_ratio"] for r in rows] == [1.0, 0.75, 1.5]
    (line,) = scaling.summary({"loss_grad": {"rows": rows}})
    assert "G x2: 2x the tokens, 1.5x the time" in line and "T x2: 2x the tokens, 3x the time" in line


# ----------------------------------------------------------------------------- bench.md and the README section


def _result(device_label: str, *, timed_chunks: int, with_train: bool = True) -> dict:
    res = {
        "meta": {
            "config": "synthetic",
            "backend": device_label.split()[0],
            "device": device_label,
            "device_label": device_label,
            "cores": 2,
            "jax": "0",
            "started": "2026-01-01 00:00:00",
            "runtime_s": 1.0,
            "peers": None,
            "peer_skip": "peer rows disabled in this configuration",
        },
        "errors": {},
        "decomposition": _decomposition(timed_chunks),
        "sweep": {"adam_after_clip": _sweep(1.0, 0.5), "grpo_inner_loop": _sweep(1.0, 2.0)},
    }
    if with_train:
        res["train"] = _train(0.029)
    res["goals"] = goals_mod.collect(res)
    return res


def test_bench_md_numbers_sections_and_labels_every_figure():
    md = markdown(_result("cpu (2 cores)", timed_chunks=1))
    assert "## 1. Gradient decomposition" in md and "## 2. Inner-loop sweeps" in md and "## 3. Training step" in md
    goals_table = md.split("## 1.")[0]
    assert "extrapolated: 1 of 23 chunks" in goals_table
    assert "(vs jitted per-setting call: 25)" in goals_table
    assert "on cpu (2 cores)" in goals_table  # the train goal names its reference's device


def test_readme_section_sets_runs_side_by_side(tmp_path):
    cpu, gpu = tmp_path / "bench_cpu.json", tmp_path / "bench_gpu.json"
    write_json(cpu, _result("cpu (2 cores)", timed_chunks=23))
    write_json(gpu, _result("gpu (NVIDIA H200)", timed_chunks=1, with_train=False))
    (tmp_path / "bench_cpu.md").write_text("report")
    text = readme.render([cpu, gpu], link_root=tmp_path)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| goal |"))
    assert "cpu (2 cores), synthetic" in header and "gpu (NVIDIA H200), synthetic" in header
    assert "[bench_cpu.json](bench_cpu.json), report [bench_cpu.md](bench_cpu.md)" in text
    per_token = next(line for line in lines if line.startswith("| decomp_vs_per_token"))
    cpu_cell, gpu_cell = per_token.split(" | ")[-2:]
    assert "extrapolated" not in cpu_cell and "extrapolated: 1 of 23 chunks" in gpu_cell
    train_row = next(line for line in lines if line.startswith("| train_vs_matmul"))
    assert train_row.endswith("| **0.029** | — |")  # missed goal in bold; the GPU run has no train row
    assert "Measured in the run on cpu (2 cores), synthetic:" in text
    assert "float32 2048x2048 matrices (2 n^3 FLOPs) on cpu (" in text
    # two runs of one configuration on one device: their columns are told apart by the start time
    again = _result("cpu (2 cores)", timed_chunks=23)
    again["meta"]["started"] = "2026-01-02 03:04:05"
    write_json(tmp_path / "bench_cpu2.json", again)
    header = next(
        line
        for line in readme.render([cpu, tmp_path / "bench_cpu2.json"], link_root=tmp_path).splitlines()
        if line.startswith("| goal |")
    )
    assert "cpu (2 cores), synthetic, 2026-01-01 00:00:00 | cpu (2 cores), synthetic, 2026-01-02 03:04:05" in header


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    path = tmp_path / "bench.json"
    write_json(path, _result("cpu (2 cores)", timed_chunks=23))
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\nbefore\n{readme.BEGIN}\nstale 9.0x\n{readme.END}\nafter\n")
    assert readme.update_readme(doc, [path]) is True
    text = doc.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{readme.END}\nafter\n")
    assert "stale" not in text and "| decomp_vs_subset_grads |" in text
    assert readme.update_readme(doc, [path]) is False  # regenerating the same run changes nothing

    doc.write_text("# no markers\n")
    with pytest.raises(ValueError, match="must contain one <!-- bench:begin -->"):
        readme.update_readme(doc, [path])


def test_bench_readme_command(tmp_path, capsys):
    path = tmp_path / "bench.json"
    write_json(path, _result("cpu (2 cores)", timed_chunks=23))
    doc = tmp_path / "README.md"
    doc.write_text(f"{readme.BEGIN}\n{readme.END}\n")
    assert cli(["bench-readme", "--bench", str(path), "--readme", str(doc)]) == 0
    assert "| sweep_vs_loop |" in doc.read_text()
    assert cli(["bench-readme", "--bench", str(tmp_path / "missing.json"), "--readme", str(doc)]) == 2
    assert "--bench" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"rows": []}')
    assert cli(["bench-readme", "--bench", str(tmp_path / "other.json"), "--readme", str(doc)]) == 2
    assert "not a bench.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # make test-all: make bench runs the sections themselves
def test_bench_smoke_loss(tmp_path):
    cfg = dataclasses.replace(bench.Config.smoke(), sections=("loss",))
    assert bench.main(tmp_path, quick=True, config=cfg) == 0
    res, md = _load(tmp_path)
    assert {"bandwidth", "loss"} <= set(res) and "sweep" not in res
    bw = res["bandwidth"]
    assert {"inplace_GBps", "fresh_GBps", "dispatch_s", "bytes_moved", "device", "probe"} <= set(bw)
    rows = res["loss"]["rows"]
    assert len(rows) == 3  # three losses at the one smoke size
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert "speedup_vs_verl" in row or row["verl_skipped"]
    for prof in res["loss"]["profile"].values():
        assert {"floor_bytes_per_token", "measured_s", "ops_ms"} <= set(prof)
    assert {g["goal"] for g in res["goals"]} == {"loss_vs_floor"}
    assert "## 1. Reference rates: memory bandwidth" in md and "## 2. Loss + gradient" in md
    assert f"measured on {bw['device']} in this run" in md


@pytest.mark.slow
def test_bench_smoke_all_sections(tmp_path):
    assert bench.main(tmp_path, quick=True, config=bench.Config.smoke()) == 0
    res, md = _load(tmp_path)
    assert set(bench.SECTIONS) <= set(res)
    dec = res["decomposition"]
    assert {"speedup_vs_subset_grads", "speedup_vs_per_token", "pieces_in_forwards", "xla", "check"} <= set(dec)
    assert dec["check"]["subset_grads_rel_err"] < 1e-4 and dec["check"]["per_token_rel_err"] < 1e-4
    assert dec["per_token_extrapolated"]  # the smoke config times 2 of its chunks
    for s in res["sweep"].values():
        assert {"settings", "steps", "sims_per_s", "speedup_vs_loop", "speedup_vs_jitted_per_setting"} <= set(s)
        assert {"loop", "single", "vmapped"} == set(s["sims_per_s"]) == set(s["settings_timed"])
        assert max(abs(v) for v in s["check"].values()) < 1e-4
    train_res = res["train"]
    assert {"flops_analytic", "train_GFLOPs", "matmul_GFLOPs", "fraction_of_matmul", "reference"} <= set(train_res)
    for kind in ("loss_grad", "decomposition", "train_step"):
        rows = res["scaling"][kind]["rows"]
        assert rows[0]["time_ratio"] == 1.0 and len(rows) == 1 + 2 * len(bench.Config.smoke().scale_factors)
    assert {g["goal"] for g in res["goals"]} == set(bench.GOALS) - {"loss_vs_verl"}
    for k, title in enumerate(("Reference rates", "Loss", "Gradient decomposition", "Inner-loop", "Training", "Scal")):
        assert f"## {k + 1}. {title}" in md
    doc = tmp_path / "README.md"
    doc.write_text(f"{readme.BEGIN}\n{readme.END}\n")
    assert readme.update_readme(doc, [tmp_path / "bench.json"]) is True
    text = doc.read_text()
    for name in ("loss_vs_floor", "decomp_vs_per_token", "sweep_vs_loop", "train_vs_matmul"):
        assert f"| {name} |" in text
