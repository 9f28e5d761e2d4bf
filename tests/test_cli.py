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
