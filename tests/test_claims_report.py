"""Claim records, the statistics behind verdicts, the report and the README regeneration."""

import json
import math

import numpy as np
import pytest

from experiments import readme as rd
from experiments import stats
from experiments.common import Claim, Context, finish
from experiments.report import write_report


def _claim(**kw):
    base = dict(
        claim="c",
        kind="experiment",
        criterion="ci excludes 0",
        falsified_if="ci below 0",
        measured="0.1",
        verdict="reproduced",
        ci=(0.05, 0.2),
        seeds=5,
    )
    return Claim(**{**base, **kw})


def test_claim_rules():
    assert _claim().reproduced is True
    assert _claim(verdict="inconclusive").reproduced is None
    with pytest.raises(ValueError, match="only be 'inconclusive'"):
        _claim(seeds=3)
    assert _claim(seeds=3, verdict="inconclusive").seeds == 3
    with pytest.raises(ValueError, match="confidence interval"):
        _claim(ci=None)
    with pytest.raises(ValueError, match="kind"):
        _claim(kind="guess")
    with pytest.raises(ValueError, match="verdict"):
        _claim(verdict="yes")
    with pytest.raises(ValueError, match="criterion"):
        _claim(criterion=" ")
    v = Claim(
        claim="identity",
        kind="verification",
        criterion="|diff| < 1e-6",
        falsified_if="|diff| >= 1e-6",
        measured="3e-8",
        verdict="reproduced",
    )
    assert v.ci is None and v.to_json()["kind"] == "verification"


def test_mean_ci_matches_textbook():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    ci = stats.mean_ci(x)
    half = 2.776 * np.std(x, ddof=1) / math.sqrt(5)  # t_{0.975,4}
    assert ci.center == 3.0 and ci.lo == pytest.approx(3 - half) and ci.hi == pytest.approx(3 + half)
    assert stats.mean_ci([2.0]).lo == -math.inf  # one seed decides nothing
    assert stats.t_quantile(60) == pytest.approx(2.000, abs=2e-3)
    assert stats.paired_diff_ci([3, 4, 5], [1, 2, 3]).center == 2.0
    with pytest.raises(ValueError, match="non-finite"):
        stats.mean_ci([1.0, float("nan")])


def test_pearson_and_intervals():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = 0.6 * x + 0.8 * rng.normal(size=400)
    ci = stats.pearson_ci(x, y)
    assert ci.lo < 0.6 < ci.hi and ci.excludes(0.0)
    assert stats.pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(stats.pearson(x, np.ones_like(x)))
    boot = stats.bootstrap_ci(lambda a, b: stats.pearson(a, b), x, y, num_resamples=300)
    assert boot.lo < ci.center < boot.hi and abs((boot.hi - boot.lo) - (ci.hi - ci.lo)) < 0.05


def _fake_experiment(out, name, claims, figure=None):
    ctx = Context(scale="quick", out=out / name)
    return finish(ctx, name, f"title of {name}", {"x": 1}, "| a |\n|---|\n| 1 |\n", claims, figure)


def test_report_and_readme_collect_every_experiment(tmp_path):
    out = tmp_path / "results"
    _fake_experiment(out, "overshoot", [_claim(claim="first")])
    write_report(out, {"overshoot": 3.0})
    _fake_experiment(out, "loss_proxy", [_claim(claim="second", verdict="not reproduced")])  # a later, separate run
    report = write_report(out, {"loss_proxy": 4.0}).read_text()
    assert "first" in report and "second" in report and "**not reproduced**" in report
    run = json.loads((out / "run.json").read_text())
    assert run["total_seconds"] == 7.0
    saved = json.loads((out / "loss_proxy" / "result.json").read_text())
    assert saved["claims"][0]["verdict"] == "not reproduced" and saved["claims"][0]["ci"] == [0.05, 0.2]

    docs = tmp_path / "docs" / "results"
    rd.copy_results(out, docs)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rd.BEGIN}\nstale numbers 4.36\n{rd.END}\nrest\n")
    assert rd.update_readme(readme, docs)
    text = readme.read_text()
    assert "stale" not in text and "first" in text and "second" in text and text.endswith(f"{rd.END}\nrest\n")
    assert "docs/results/report.md" in text
    assert not rd.update_readme(readme, docs)  # idempotent
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="section"):
        rd.update_readme(readme, docs)


def test_finish_takes_claim_objects_only_and_writes_result_json_last(tmp_path, monkeypatch):
    ctx = Context(scale="quick", out=tmp_path / "x")
    with pytest.raises(TypeError, match="Claim objects"):
        finish(ctx, "x", "t", {}, "| a |\n|---|\n| 1 |\n", [("old-style", "0.1", True)], None)
    assert not ctx.out.exists()  # nothing written for a bad claim

    def fail(path, text):
        raise OSError("disk full")

    monkeypatch.setattr("experiments.common.write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        finish(ctx, "x", "t", {}, "| a |\n|---|\n| 1 |\n", [_claim()], None)
    assert not (ctx.out / "result.json").exists()  # result.json marks a complete folder: it comes last


def test_readme_excerpt_takes_one_section_and_its_subsections():
    md = "## Title\n\n### Map: x\n\nintro\n\n#### a\n\n| r |\n\n#### b\n\n| s |\n\n### How far\n\n| t |\n"
    part = rd.excerpt(md, "### Map")
    assert part.startswith("#### Map: x") and "##### a" in part and "| s |" in part
    assert "How far" not in part and "| t |" not in part
    assert rd.excerpt(md, "### Missing") == ""
