"""The experiments CLI: listing, unknown names, bad options, resuming after a kill (no real experiment is run)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import REGISTRY
from experiments.__main__ import _resolve, main
from experiments.common import Context, finish, write_json


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


TABLE = "| a |\n|---|\n| 1 |\n"


def _fake_experiment(ran: list, title: str = "new run"):
    """A stand-in for an experiment: records its name and writes a complete result into ``ctx.out``."""

    def resolve(name):
        def run(ctx):
            ran.append(name)
            return finish(ctx, name, title, {}, TABLE, [], None)

        return run

    return resolve


def test_resume_skips_complete_experiments(tmp_path, monkeypatch):
    done = Context(scale="quick", out=tmp_path / "presets", seed=0)
    finish(done, "presets", "t", {}, TABLE, [], None)
    ran = []
    monkeypatch.setattr("experiments.__main__._resolve", _fake_experiment(ran))
    monkeypatch.setattr("experiments.__main__.REGISTRY", {"presets": "x:y", "overshoot": "x:y"})
    assert main(["run", "all", "--out", str(tmp_path), "--resume"]) == 0
    assert ran == ["overshoot"]
    assert (tmp_path / "report.md").exists()
    assert json.loads((tmp_path / "overshoot" / "result.json").read_text())["title"] == "new run"
    assert not list(tmp_path.glob(".*"))  # the staging folder became the result


def test_every_registry_entry_is_a_package_with_run():
    for name in REGISTRY:
        run = _resolve(name)
        assert callable(run) and run.__module__ == f"experiments.{name}", name
        module = importlib.import_module(f"experiments.{name}")
        assert hasattr(module, "__path__") and module.NAME == name, name  # a package: measure, claims, report apart


ROOT = Path(__file__).resolve().parents[1]
_KILLED = """
import sys, time
from pathlib import Path
import experiments.__main__ as cli
from experiments.common import write_text


def slow(ctx):  # writes part of its output, then waits to be killed
    write_text(ctx.out / "table.md", "half-written")
    Path(sys.argv[2]).write_text("started")
    time.sleep(300)


cli._resolve = lambda name: slow
sys.exit(cli.main(["run", "presets", "--out", sys.argv[1]]))
"""


def _run_and_kill(out: Path, started: Path) -> None:
    """Runs the CLI on a slow stand-in experiment in a subprocess and SIGKILLs it mid-experiment."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(out), str(started)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, "the CLI ended before the experiment started"
            assert time.monotonic() < deadline, "the experiment did not start"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_keeps_the_previous_result_and_resume_reruns_what_is_missing(tmp_path, monkeypatch):
    out = tmp_path / "results"
    finish(Context(scale="quick", out=out / "presets", seed=0), "presets", "the old run", {}, TABLE, [], None)
    _run_and_kill(out, tmp_path / "started")
    # the kill left its staging folder half-written; the result the report reads is the old one, whole
    assert (out / ".presets.partial" / "table.md").read_text() == "half-written"
    assert json.loads((out / "presets" / "result.json").read_text())["title"] == "the old run"
    assert "the old run" in (out / "presets" / "table.md").read_text()
    ran = []
    monkeypatch.setattr("experiments.__main__._resolve", _fake_experiment(ran))
    assert main(["run", "presets", "--out", str(out), "--resume"]) == 0 and ran == []  # complete: skipped
    report = (out / "report.md").read_text()
    assert "the old run" in report and "half-written" not in report and ".presets" not in report
    # without a previous result, the killed experiment leaves none, and --resume runs it
    fresh = tmp_path / "fresh"
    _run_and_kill(fresh, tmp_path / "started2")
    assert not (fresh / "presets").exists()
    assert main(["run", "presets", "--out", str(fresh), "--resume"]) == 0 and ran == ["presets"]
    assert json.loads((fresh / "presets" / "result.json").read_text())["title"] == "new run"
    assert not (fresh / ".presets.partial").exists()


def test_a_commit_killed_between_its_renames_is_finished_on_the_next_run(tmp_path):
    from experiments.__main__ import _recover

    old, new = Context(scale="quick", out=tmp_path / ".presets.old"), Context(scale="quick", out=tmp_path / "s")
    finish(old, "presets", "the old run", {}, TABLE, [], None)
    _recover(tmp_path, "presets")  # only the old result: it comes back
    assert json.loads((tmp_path / "presets" / "result.json").read_text())["title"] == "the old run"
    os.replace(tmp_path / "presets", tmp_path / ".presets.old")
    finish(new, "presets", "the new run", {}, TABLE, [], None)
    os.replace(new.out, tmp_path / ".presets.partial")
    _recover(tmp_path, "presets")  # a complete staged result wins over the old one
    assert json.loads((tmp_path / "presets" / "result.json").read_text())["title"] == "the new run"
    (tmp_path / "presets" / "result.json").unlink()
    _recover(tmp_path, "presets")  # a folder that exists is never touched
    assert not (tmp_path / "presets" / "result.json").exists()
