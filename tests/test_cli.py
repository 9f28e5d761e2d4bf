"""The experiments CLI: listing, unknown names and bad options (no experiment is run)."""

from __future__ import annotations

import json

import pytest

from experiments import REGISTRY
from experiments.__main__ import main
from experiments.common import write_json


def test_list_names_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("presets", "prefix_bias", "reward_scaling", "overshoot", "loss_proxy", "length_bias"):
        assert name in out and name in REGISTRY


def test_unknown_experiment_is_a_clear_error(capsys):
    assert main(["run", "nope"]) == 2
    assert "unknown experiment 'nope'; known: presets" in capsys.readouterr().err


def test_bad_scale_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "presets", "--scale", "huge"])
    assert e.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_bad_devices_is_rejected(capsys):
    assert main(["run", "presets", "--devices", "0"]) == 2
    assert "--devices must be >= 1, got 0" in capsys.readouterr().err


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "result.json"
    write_json(path, {"a": float("nan"), "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": "nan", "b": [1, 2]}

    def crash(fd):
        raise RuntimeError("disk full")

    monkeypatch.setattr("experiments.common.os.fsync", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_json(path, {"a": 1.0, "b": [3]})
    # the old file is intact and no temporary file is left behind
    assert json.loads(path.read_text())["b"] == [1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_out_is_checked_before_any_compute(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")

    def never(*a, **k):  # the experiment must not even start
        raise AssertionError("an experiment ran")

    monkeypatch.setattr("experiments.__main__._resolve", lambda name: never)
    assert main(["run", "presets", "--out", str(blocker)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["run", "all", "--out", str(blocker / "sub")]) == 2
    assert main(["bench", "--out", str(blocker)]) == 2


def test_run_help_lists_the_experiments(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert "sub-folder" in out


def test_output_files_get_the_usual_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_resume_skips_complete_experiments(tmp_path, monkeypatch):
    from experiments.common import Context, finish

    done = Context(scale="quick", out=tmp_path / "presets", seed=0)
    finish(done, "presets", "t", {}, "| a |\n|---|\n| 1 |\n", [], None)
    ran = []

    def fake(ctx):
        ran.append(ctx.out.name)
        return finish(ctx, ctx.out.name, "t", {}, "| a |\n|---|\n| 1 |\n", [], None)

    monkeypatch.setattr("experiments.__main__._resolve", lambda name: fake)
    monkeypatch.setattr("experiments.__main__.REGISTRY", {"presets": "x:y", "overshoot": "x:y"})
    assert main(["run", "all", "--out", str(tmp_path), "--resume"]) == 0
    assert ran == ["overshoot"]
    assert (tmp_path / "report.md").exists()
