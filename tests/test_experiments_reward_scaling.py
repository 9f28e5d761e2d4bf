"""The reward_scaling experiment (Prop. 2 in full): decision rules, claims from synthetic numbers, a tiny run.

The claim logic is a pure function of measured numbers (``make_claims``), so it is
fed synthetic cells here: a world that obeys Prop. 2 must reproduce every claim,
and each way of breaking it (a broken invariant cell, a factor at the floor, too
few data sets, a non-zero power-of-two deviation, a diverged reference) must
change the verdict it concerns. A tiny end-to-end run checks the plumbing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from analysis import reward_scale as rs
from experiments import reward_scaling as R
from experiments.common import Context
from experiments.reward_scaling import cells as R_cells
from experiments.reward_scaling import claims as R_claims
from experiments.reward_scaling import config as R_config
from experiments.reward_scaling import data as R_data

NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?")
CFG = R._config("test")
PHIS = CFG.scales  # (0.01, 0.1, 0.5, 2.0, 10.0, 100.0)
POW2 = [i for i, p in enumerate(PHIS) if math.log2(p).is_integer()]
SETTINGS = R.settings(CFG)
DEGREES = {"dr_grpo": 1, "grpo": 0, "cppo": None}


def _predicted_invariant(degree, setting: R.Setting) -> bool:
    """The world as the paper describes it: 1/σ presets always invariant; d = 1 invariant under Adam(W) with β = 0,
    no coupled L2 and a negligible ε (the paper calls PyTorch's 1e-8 small, 1e-5 possibly not)."""
    if degree is None:
        return False
    if degree == 0:
        return True
    return not setting.sgd and setting.beta == 0 and setting.l2 == 0 and setting.eps <= 1e-8


def _cell(preset, setting, *, dtype="float32", policy="tabular", factor=None, n=10, seed=0, floor=1e-6):
    """A synthetic cell: deviations at the floor (invariant) or ``factor`` × the floor; exact 0 at powers of two
    where the algebra says invariant."""
    rng = np.random.default_rng(seed)
    degree = DEGREES[preset]
    inv = _predicted_invariant(degree, setting)
    if factor is None:
        factor = 1.0 if inv else 1e4
    floors = floor * rng.uniform(0.5, 2.0, size=n)
    dev = floors[:, None] * factor * rng.uniform(0.2, 0.9, size=(n, len(PHIS)))
    if inv and factor == 1.0:
        dev[:, POW2] = 0.0
    return R_cells.Cell(
        policy=policy,
        dtype=dtype,
        preset=preset,
        degree=degree,
        setting=setting.key,
        dev=dev,
        floor=floors,
        kinds=("binary",) * n,
        rms_sqrt_v=np.full(n, 1e-2),
        displacement=np.ones(n),
    )


def _world(over=None):
    """Every (preset, setting) cell of a world that obeys Prop. 2, plus bf16 cells for dr_grpo and grpo;
    ``over[(preset, setting_key, dtype)] = dict(...)`` changes a cell."""
    over = over or {}
    cells = []
    for dtype, presets in (("float32", ("dr_grpo", "grpo", "cppo")), ("bfloat16", ("dr_grpo", "grpo"))):
        for k, name in enumerate(presets):
            for j, s in enumerate(SETTINGS):
                kw = over.get((name, s.key, dtype), {})
                cells.append(_cell(name, s, dtype=dtype, seed=100 * k + j, **kw))
    return cells


def _claims(cells):
    return {c.claim: c for c in R_claims.make_claims(CFG, cells)}


def _find(claims, text):
    hits = [c for k, c in claims.items() if text in k]
    assert len(hits) == 1, (text, list(claims))
    return hits[0]


V1, WD, SIGMA, POW = "equals the one for r to floating-point rounding", "Eq. 27", "α ∝ 1/σ", "φ = 2^k"
BETA, EPS5, SGD, L2 = "β = 0.04 (KL) breaks", "ε = 1e-5", "SGD (no adaptive", "Coupled L2"
EPS8, BF16, CPPO = "ε = 1e-8", "bf16 parameters", "Table 1's CPPO"


# ----------------------------------------------------------------------------- decision rules


def test_seed_and_pooled_log_ratios_by_hand():
    s = SETTINGS[0]
    c = dataclasses.replace(_cell("dr_grpo", s, n=3), dev=np.zeros((3, len(PHIS))), floor=np.array([1e-6, 2e-6, 1e-5]))
    c.dev[0, 1] = 1e-4  # 100x its floor
    c.dev[1, 4] = np.inf  # diverged
    np.testing.assert_allclose(R_cells.seed_log_ratio(c), [2.0, 12.0, -3.0])
    assert R_cells.seed_log_ratio(c, [0]).tolist() == [-3.0, -3.0, -3.0]  # exact zeros: the bottom of the range
    assert R_cells.pooled_log_ratio(c) == 12.0
    c.dev[1, 4] = 3e-5
    assert R_cells.pooled_log_ratio(c) == pytest.approx(1.0)  # max dev 1e-4 over max floor 1e-5
    c.floor[:] = 0.0
    assert (
        R_cells.seed_log_ratio(c)[0] == 12.0 and R_cells.pooled_log_ratio(c) == 12.0
    )  # a deviation over an exactly-0 floor
    c.dev[2, 0] = np.nan
    assert np.isnan(R_cells.seed_log_ratio(c)[2]) and math.isnan(R_cells.pooled_log_ratio(c))


def test_classify_pools_the_invariant_side_and_needs_every_data_set_for_broken():
    assert R_cells.classify(1.0, np.array([0.2, 0.1, 5.0])) == "invariant"  # a rounding event in one data set only
    assert R_cells.classify(1.2, np.array([0.2, 0.1, 5.0])) == "between"
    assert (
        R_cells.classify(0.5, np.array([3.0, 3.0, 0.1])) == "between"
    )  # one large floor hides what most data sets show
    assert R_cells.classify(6.0, np.array([2.0, 5.0])) == "broken"
    assert R_cells.classify(6.0, np.array([1.9, 5.0])) == "between"
    assert R_cells.classify(float("nan"), np.array([1.0])) == "no reference"
    assert R_claims.decide_cells(["invariant", "invariant"]) is True
    assert R_claims.decide_cells(["invariant", "between"]) is None
    assert R_claims.decide_cells(["between", "broken"]) is False
    assert R_claims.decide_cells(["invariant", "no reference"]) is None


def test_interval_decisions():
    from experiments.stats import mean_ci

    high, low, mid = mean_ci([5.0, 5.5, 6.0]), mean_ci([-1.0, -0.9, -0.8]), mean_ci([1.5, 1.6, 1.7])
    assert R_claims.decide_breaks({"a": high}) is True
    assert R_claims.decide_breaks({"a": high, "b": low}) is False
    assert R_claims.decide_breaks({"a": high, "b": mid}) is None
    assert R_claims.decide_holds({"a": low}) is True
    assert R_claims.decide_holds({"a": low, "b": high}) is False
    assert R_claims.decide_holds({"a": low, "b": mid}) is None


# ----------------------------------------------------------------------------- claims from synthetic numbers


def test_a_world_that_obeys_prop2_reproduces_every_claim():
    claims = _claims(_world())
    assert len(claims) == 11
    for c in claims.values():
        assert c.verdict == "reproduced", (c.claim, c.measured)
        assert NUMBER.search(c.measured)
        if c.kind == "experiment":
            assert c.seeds == 10 and c.ci is not None and c.ci[0] <= c.ci[1]
    for text in (V1, WD, SIGMA, POW):
        assert _find(claims, text).kind == "verification"
    for text in (BETA, EPS5, SGD, L2, EPS8, BF16, CPPO):
        assert _find(claims, text).kind == "experiment"
    assert "SGD cells (d = 1) broken" in _find(claims, V1).measured  # the design's power is reported


@pytest.mark.parametrize(
    ("change", "claim", "verdict"),
    [
        ((("dr_grpo", "adamw", "float32"), dict(factor=1e4)), V1, "not reproduced"),  # broken where invariant
        ((("dr_grpo", "adamw", "float32"), dict(factor=30.0)), V1, "inconclusive"),  # between
        ((("dr_grpo", "decoupled_wd", "float32"), dict(factor=1e4)), WD, "not reproduced"),
        ((("grpo", "sgd", "float32"), dict(factor=1e4)), SIGMA, "not reproduced"),
        ((("dr_grpo", "beta", "float32"), dict(factor=1.0)), BETA, "not reproduced"),  # β at the floor
        ((("dr_grpo", "beta", "float32"), dict(factor=30.0)), BETA, "inconclusive"),
        ((("dr_grpo", "sgd", "float32"), dict(factor=1.0)), SGD, "not reproduced"),
        ((("dr_grpo", "coupled_l2", "float32"), dict(factor=1.0)), L2, "not reproduced"),
        ((("dr_grpo", "eps_1e-05", "float32"), dict(factor=1.0)), EPS5, "not reproduced"),
        ((("dr_grpo", "eps_1e-08", "float32"), dict(factor=1e4)), EPS8, "not reproduced"),
        ((("dr_grpo", "adamw", "bfloat16"), dict(factor=1e4)), BF16, "not reproduced"),
        ((("grpo", "sgd", "bfloat16"), dict(factor=1e4)), BF16, "not reproduced"),
        ((("cppo", "adamw", "float32"), dict(factor=1.0)), CPPO, "not reproduced"),
    ],
)
def test_each_way_of_breaking_prop2_changes_its_verdict(change, claim, verdict):
    key, kw = change
    claims = _claims(_world({key: kw}))
    assert _find(claims, claim).verdict == verdict, _find(claims, claim).measured


def test_a_non_zero_power_of_two_deviation_fails_the_exactness_check():
    cells = _world()
    c = next(c for c in cells if c.preset == "grpo" and c.setting == "sgd_beta")
    c.dev[3, POW2[0]] = 1e-9
    claim = _find(_claims(cells), POW)
    assert claim.verdict == "not reproduced" and "tabular/float32/grpo/sgd_beta" in claim.measured


def test_few_data_sets_make_experiments_inconclusive():
    cells = [dataclasses.replace(c, dev=c.dev[:4], floor=c.floor[:4], kinds=c.kinds[:4]) for c in _world()]
    for c in _claims(cells).values():
        if c.kind == "experiment":
            assert c.verdict == "inconclusive" and c.seeds == 4, c.claim


def test_a_diverged_reference_is_not_evidence():
    cells = _world()
    c = next(c for c in cells if c.preset == "dr_grpo" and c.setting == "adamw" and c.dtype == "float32")
    c.dev[0, 0] = np.nan
    assert _find(_claims(cells), V1).verdict == "inconclusive"


def test_the_weakest_preset_decides():
    """Two d = 1 presets: one far above the floor, one only 30x above: 'β breaks' cannot be reproduced."""
    cells = _world()
    extra = _cell("dr_grpo", next(s for s in SETTINGS if s.key == "beta"), factor=30.0, seed=99)
    extra = dataclasses.replace(extra, preset="rloo")
    claim = _find(_claims([*cells, extra]), BETA)
    assert claim.verdict == "inconclusive" and "rloo" in claim.measured


def test_a_data_set_whose_floor_runs_are_bitwise_equal_uses_the_cells_floor():
    """bf16: the ±1-ulp runs often reproduce the reference exactly (floor 0) while a φ-run flips one rounding; that
    data set is judged against the cell's pooled floor, not against 0 (which would read as 'broken')."""
    adamw = next(s for s in SETTINGS if s.key == "adamw")
    cell = _cell("dr_grpo", adamw, dtype="bfloat16", seed=5)
    cell.floor[:7] = 0.0
    cell.dev[:] = 0.5 * np.max(cell.floor)
    r = R_cells.seed_log_ratio(cell)
    assert np.all(r <= R_cells.INVARIANT_DECADES) and R_cells.cell_class(cell) == "invariant"
    cell.dev[:] = 1e4 * np.max(cell.floor)  # a real break still reads as one
    assert R_cells.cell_class(cell) == "broken"
    cell.floor[:] = 0.0  # no floor anywhere: a positive deviation is the upper end
    assert np.all(R_cells.seed_log_ratio(cell) == R_cells.LOG_RATIO_RANGE[1])


def test_a_preset_that_never_moves_is_left_out_not_counted_as_invariant():
    """A d = 1 preset whose update is zero on the data (deviation 0 = 1e-3 x the floor) would make 'β breaks'
    'not reproduced'; it cannot show anything, so it is left out and named."""
    beta = next(s for s in SETTINGS if s.key == "beta")
    frozen = dataclasses.replace(_cell("dr_grpo", beta, factor=1e-3, seed=98), preset="gtpo")
    assert _find(_claims([*_world(), frozen]), BETA).verdict == "not reproduced"  # the flaw the rule prevents
    frozen = dataclasses.replace(frozen, displacement=np.zeros(frozen.dev.shape[0]))
    claim = _find(_claims([*_world(), frozen]), BETA)
    assert claim.verdict == "reproduced" and "left out" in claim.measured and "gtpo" in claim.measured


def test_the_entropy_filter_threshold_keeps_about_half_the_completions():
    _, batch, _, _ = R_data.tabular_data(CFG, 0, "binary")
    spec = R_data.fit_entropy_filter(jgrpo.methods.get("gtpo"), batch)
    assert jgrpo.methods.get("gtpo").entropy_threshold is not None
    kept = np.asarray(jgrpo.weights.entropy_filter(spec, jnp.asarray(batch.entropy), jnp.asarray(batch.mask)))
    nonempty = np.asarray(batch.mask).sum(-1) > 0
    assert 0.3 <= kept[nonempty].mean() <= 0.7
    assert R_data.fit_entropy_filter(jgrpo.methods.get("grpo"), batch) == jgrpo.methods.get("grpo")


# ----------------------------------------------------------------------------- configuration


def test_settings_are_one_factor_at_a_time():
    by_key = {s.key: s for s in SETTINGS}
    base = by_key["adamw"]
    assert (base.sgd, base.beta, base.eps, base.weight_decay, base.l2) == (False, 0.0, CFG.eps_limit, 0.0, 0.0)
    assert by_key["beta"].beta == CFG.beta and by_key["coupled_l2"].l2 == CFG.weight_decay
    assert by_key["decoupled_wd"].weight_decay == CFG.weight_decay and by_key["decoupled_wd"].l2 == 0
    assert {f"eps_{e:g}" for e in CFG.epss} <= set(by_key) and by_key["sgd"].sgd
    assert len(by_key) == len(SETTINGS)


def test_presets_get_a_kl_for_the_beta_rows_and_cppo_std_only_if_it_exists():
    assert R_data.preset_spec("dapo").regularizer == jgrpo.methods.Regularizer.KL
    assert R_data.preset_spec("dr_grpo") == jgrpo.methods.get("dr_grpo")
    assert R_data.preset_spec("gtpo").regularizer == jgrpo.methods.get("gtpo").regularizer
    std = R_data.cppo_standardised_spec()
    assert std is None or (rs.prunes_on_standardised(std) and rs.reward_degree(std) == 0)
    assert (R_data.preset_spec(R_config.CPPO_STD) is None) == (std is None)


def test_configs_validate():
    for scale in ("quick", "paper", "test"):
        cfg = R._config(scale)
        assert cfg.num_reorders >= 1 and len(cfg.scales) == len(cfg.phis) - 1
    with pytest.raises(ValueError, match="scale must be"):
        R._config("huge")
    bad = [
        (dict(phis=(0.1, 10.0, 100.0)), "phis must contain 1.0"),
        (dict(phis=(0.1, 1.0, 10.0)), "at least 3 values"),
        (dict(phis=(0.1, 1.0, 10.0, -1.0)), "finite and > 0"),
        (dict(realistic_phis=(3.0,)), "realistic_phis"),
        (dict(reward_kinds=("gaussian",)), "reward_kinds"),
        (dict(presets=("nope",)), "presets must name presets"),
        (dict(bf16_presets=("gspo",), presets=("grpo",)), "bf16_presets must be a subset"),
        (dict(tf_model="huge"), "tf_model"),
        (dict(eps_limit=1e-3), "eps_limit"),
        (dict(tf_dtypes=("float16",)), "tf_dtypes"),
        (dict(sgd_lr=0.0), "sgd_lr"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            R.Config(**kw)


# ----------------------------------------------------------------------------- tiny end-to-end runs


def _check_run(ctx, outcome, cfg):
    for name in ("result.json", "table.md", "reward_scaling.png"):
        assert (ctx.out / name).is_file() and (ctx.out / name).stat().st_size > 0, name
    result = json.loads((ctx.out / "result.json").read_text())
    table = (ctx.out / "table.md").read_text()
    assert "| claim | kind | criterion | measured | verdict |" in table and "### Map" in table
    for c in outcome.claims:
        assert NUMBER.search(c.measured), c.claim
        assert c.kind in ("experiment", "verification")
    assert {s["key"] for s in result["settings"]} == {s.key for s in R.settings(cfg)}
    return result


def test_tiny_run_tabular(tmp_path):
    cfg = R._config("test")
    ctx = Context(scale="test", out=tmp_path)
    outcome = R._run(ctx, cfg)
    result = _check_run(ctx, outcome, cfg)
    n_set = len(R.settings(cfg))
    cells = result["cells"]
    assert len(cells) == n_set * (len(cfg.presets) + len(cfg.bf16_presets))
    for c in cells:
        assert np.asarray(c["dev"]).shape == (cfg.seeds * len(cfg.reward_kinds), len(cfg.scales))
    by = {(c["dtype"], c["preset"], c["setting"]): c for c in cells}
    # exact in binary floating point: grpo under every setting, dr_grpo under AdamW β = 0 ε → 0
    for key in [("float32", "grpo", s.key) for s in R.settings(cfg)] + [("float32", "dr_grpo", "adamw")]:
        assert np.all(np.asarray(by[key]["dev"])[:, POW2] == 0), key
    assert by[("float32", "grpo", "sgd")]["class"] == "invariant"
    assert by[("float32", "dr_grpo", "sgd")]["class"] == "broken"
    assert result["degrees"]["cppo"] is None and result["degrees"]["grpo"] == 0
    assert _find({c.claim: c for c in outcome.claims}, SGD).verdict == "reproduced"


@pytest.mark.slow
def test_tiny_run_with_the_transformer(tmp_path):
    cfg = dataclasses.replace(
        R._config("test"), presets=("dr_grpo",), bf16_presets=(), transformer=True, tf_presets=("dr_grpo",),
        tf_dtypes=("float32", "bfloat16"), tf_settings_per_call=4,
    )  # fmt: skip
    ctx = Context(scale="test", out=tmp_path)
    outcome = R._run(ctx, cfg)
    result = _check_run(ctx, outcome, cfg)
    tf = [c for c in result["cells"] if c["policy"] == "transformer"]
    assert len(tf) == 2 * len(R.settings(cfg)) and {c["dtype"] for c in tf} == {"float32", "bfloat16"}
    assert result["transformer_model"]["n_layers"] >= 1
