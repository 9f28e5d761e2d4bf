"""The loss_proxy experiment (Prop. 4): its closed forms, statistics and claim logic on synthetic numbers,
and one tiny end-to-end run.

The claim logic is fed numbers whose answer is known, so that a wrong metric (correlating the wrong
proxy, a wrong calibration slope) or a wrong decision rule fails here.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

import jgrpo
from experiments import loss_proxy as lp
from experiments.common import Context
from experiments.loss_proxy import claims as lp_claims
from experiments.loss_proxy import config as lp_config
from experiments.loss_proxy import reference as lp_reference
from experiments.loss_proxy import summary as lp_summary
from experiments.loss_proxy import task as lp_task
from experiments.stats import Interval
from jgrpo.policies import tabular_init
from tests.test_proxy import _np_tabular

# ----------------------------------------------------------------------------- the task and the closed forms


def test_exact_reward_matches_enumeration_and_sampling():
    """The experiment's exact E[r] (analysis.tabular, its TARGET/EOS) against a float64 NumPy enumeration of
    all V^T sequences, and the experiment's reward function on 4000 NumPy-sampled completions."""
    params = tabular_init(jax.random.key(3), vocab=6, max_len=5, scale=1.0)
    exact = float(lp_task.exact_reward(params, length=5))
    tokens, mask, enum = _np_tabular(
        np.asarray(params["logits"], np.float64), 4000, np.random.default_rng(0), lp_config.EOS, lp_config.TARGET
    )
    np.testing.assert_allclose(exact, enum, rtol=1e-5)
    mc = float(np.mean(lp_task.reward(tokens, mask)))
    assert 0.1 < exact < 0.9
    assert abs(exact - mc) < 4 * np.sqrt(exact * (1 - exact) / 4000), (exact, mc)


def _np_case(name, rewards, lengths, reading="once", spec=None, logp_old=None):
    rewards = np.asarray(rewards, np.float64)[None]
    t = max(lengths)
    mask = (np.arange(t) < np.asarray(lengths)[:, None]).astype(np.float64)[None]
    logp_old = np.full(mask.shape, -1.0) if logp_old is None else logp_old
    spec = spec or jgrpo.methods.get(name)
    return lp_reference.np_first_step(name, spec, rewards, mask, logp_old, logp_old, reading=reading)


def test_closed_forms_by_hand():
    r, lengths = [1.0, 0.0, 0.0, 1.0], [2, 3, 1, 4]  # A = (.5, -.5, -.5, .5), sigma = .5
    case, pol, reg, _ = _np_case("dr_grpo", r, lengths)
    assert case.startswith("Eq. 10")
    np.testing.assert_allclose(pol, [(1 - 1.5 - 0.5 + 2) / 4])  # (1/G) sum A |o|
    np.testing.assert_allclose(reg, [0.0])  # logp_ref = logp_old: the k3 KL is 0
    _, pol, _, omega = _np_case("dapo", r, lengths)  # Omega = |o| / (sigma sum|o|) = |o| / 5
    np.testing.assert_allclose(omega, [[0.4, 0.6, 0.2, 0.8]])
    np.testing.assert_allclose(pol, [0.5 * 0.4 - 0.5 * 0.6 - 0.5 * 0.2 + 0.5 * 0.8])
    for name in ("grpo", "gspo", "rloo"):
        assert _np_case(name, r, lengths)[1] == pytest.approx([0.0], abs=1e-15)
    # gcpo: counted once, Omega = 1/(sigma G): 0; Table 1 literally, Omega = |o|/(sigma G)
    assert _np_case("gcpo", r, lengths, reading="once")[1] == pytest.approx([0.0], abs=1e-15)
    np.testing.assert_allclose(_np_case("gcpo", r, lengths, reading="literal")[1], [(1 - 1.5 - 0.5 + 2) / (0.5 * 4)])
    assert _np_case("gtpo", r, lengths)[0] == ""  # no closed form for the conflict-token lambda


def test_cppo_single_success_is_the_general_case():
    """G = 16, one success, gamma = 0.1: every failure (|A| = 1/16) is pruned, the policy part is sqrt(15)/16."""
    r = [1.0] + [0.0] * 15
    case, pol, reg, omega = _np_case("cppo", r, [3] * 16)
    assert case.startswith("Eq. 11")
    np.testing.assert_allclose(pol, [math.sqrt(15) / 16])
    np.testing.assert_allclose(pol, [0.242061], atol=1e-6)
    assert np.count_nonzero(omega) == 1
    # G = 8: 1/8 > gamma, nothing is pruned, the same group is length-normalised (policy part 0)
    assert _np_case("cppo", [1.0] + [0.0] * 7, [3] * 8)[1] == pytest.approx([0.0], abs=1e-15)


def test_kl_closed_form_by_hand():
    """k3 = e^x - x - 1 with x = logp_ref - logp_old, grpo weight 1/(G|o_i|), dr_grpo 1/G."""
    spec = jgrpo.methods.get("grpo")
    mask = np.array([[[1.0, 1.0], [1.0, 0.0]]])
    logp_old = np.array([[[-1.0, -1.0], [-1.0, -1.0]]])
    logp_ref = logp_old + np.array([[[0.5, 0.0], [-0.5, 9.0]]])  # 9.0 sits on padding
    k3 = lambda x: math.exp(x) - x - 1  # noqa: E731
    _, _, reg, _ = lp_reference.np_first_step("grpo", spec, [[1.0, 0.0]], mask, logp_old, logp_ref)
    np.testing.assert_allclose(reg, [k3(0.5) / 4 + k3(-0.5) / 2])
    _, _, reg, _ = lp_reference.np_first_step(
        "dr_grpo", jgrpo.methods.get("dr_grpo"), [[1.0, 0.0]], mask, logp_old, logp_ref
    )
    np.testing.assert_allclose(reg, [(k3(0.5) + k3(-0.5)) / 2])


# ----------------------------------------------------------------------------- statistics and decisions


def test_mean_corr_ci_and_constant():
    ci = lp_summary.mean_corr_ci([0.5] * 6)
    assert ci.center == pytest.approx(0.5) and ci.lo == pytest.approx(0.5) and ci.n == 6
    ci = lp_summary.mean_corr_ci([0.1, 0.3, 0.2, 0.4, 0.0])
    assert ci.center == pytest.approx(np.tanh(np.mean(np.arctanh([0.1, 0.3, 0.2, 0.4, 0.0]))))
    assert ci.lo < ci.center < ci.hi
    assert lp_reference.constant(np.full(10, -0.02)) and lp_reference.constant(np.zeros(5))
    assert not lp_reference.constant(np.array([0.0, 1e-4]))


def _iv(lo, hi):
    return Interval(lo, hi, (lo + hi) / 2, 6)


@pytest.mark.parametrize(
    "ci,control,expected",
    [
        ((-0.1, 0.2), (0.9, 0.95), True),  # inside (-rho0, rho0), with power
        ((-0.1, 0.2), (0.1, 0.95), None),  # inside, but the control cannot show a signal: undecided
        ((0.35, 0.7), (0.9, 0.95), False),  # above rho0: a useful signal
        ((-0.8, -0.31), (0.9, 0.95), False),  # below -rho0: a (negative) signal too
        ((0.2, 0.5), (0.9, 0.95), None),  # straddles rho0
        ((-0.29, 0.29), (0.9, 0.95), True),
    ],
)
def test_null_decision(ci, control, expected):
    assert lp_claims.null_decision(_iv(*ci), _iv(*control)) is expected


def test_null_decision_undefined():
    assert lp_claims.null_decision(None, _iv(0.9, 0.95)) is None


@pytest.mark.parametrize(
    "corr,slope,bias,expected",
    [
        ((0.6, 0.8), (0.9, 1.1), (-0.1, 0.1), True),
        ((0.1, 0.25), (0.9, 1.1), (-0.1, 0.1), False),  # no signal
        ((0.6, 0.8), (1.3, 1.5), (-0.1, 0.1), False),  # miscalibrated slope
        ((0.6, 0.8), (0.9, 1.1), (0.25, 0.4), False),  # biased
        ((0.6, 0.8), (0.7, 1.1), (-0.1, 0.1), None),  # slope CI straddles the band
        ((0.2, 0.8), (0.9, 1.1), (-0.1, 0.1), None),
    ],
)
def test_snis_decision(corr, slope, bias, expected):
    assert lp_claims.snis_decision(_iv(*corr), _iv(*slope), _iv(*bias)) is expected


def _synthetic(units=6, k=400, seed=0):
    """Records [U, K, P] for P = 3 presets with known answers.

    preset 0: J_first independent noise; J_after = J_first + 0.5 ΔE exactly (gain tracks ΔE, J_after only weakly);
              SNIS = ΔE + noise (calibrated).
    preset 1: J_first = 0.9 ΔE + noise (a signal); SNIS = 2 ΔE (slope 2: miscalibrated).
    preset 2: J_first = 0 on every batch; gain independent noise; SNIS = ΔE + 0.5 sd(ΔE) (biased).
    """
    rng = np.random.default_rng(seed)
    de = rng.normal(0.01, 0.004, size=(units, k, 3))
    noise = rng.normal(size=(units, k, 3))
    j_first = np.stack([5e-3 * noise[..., 0], de[..., 1] * 0.9 + 1e-4 * noise[..., 1], np.zeros((units, k))], -1)
    gain = np.stack([0.5 * de[..., 0], rng.normal(size=(units, k)), 0.01 * noise[..., 2]], -1)
    snis = np.stack([de[..., 0] + 1e-3 * noise[..., 1], 2 * de[..., 1], de[..., 2] + 0.002], -1)
    return {
        "delta_e": de,
        "j_first": j_first,
        "j_after": j_first + gain,
        "snis": snis,
        "is": snis,
        "first_order": de + 1e-4 * noise,
        "ess": np.full(de.shape, 100.0),
    }


def test_summarise_measures_the_right_things():
    rec = _synthetic()
    s = lp_summary.summarise(rec, ("a", "b", "c"))
    assert s["a"]["ci"]["gain"].lo > 0.99  # the gain, not J_after
    assert abs(s["a"]["ci"]["j_first"].center) < 0.1
    assert s["a"]["ci"]["j_after"].center < 0.5
    assert s["b"]["ci"]["j_first"].lo > 0.99
    assert s["c"]["constant"]["j_first"] and s["c"]["ci"]["j_first"] is None
    np.testing.assert_allclose(s["b"]["slope"], 2.0, rtol=1e-9)  # cov(SNIS, ΔE)/var(ΔE)
    assert s["a"]["slope_ci"].lo > 0.9 and s["a"]["slope_ci"].hi < 1.1
    assert s["c"]["bias_ci"].lo > 0.4  # 0.002 / 0.004
    assert s["a"]["ci"]["first_order"].lo > 0.9
    np.testing.assert_allclose(s["a"]["corr"]["gain"], 1.0, rtol=1e-9)


def test_claims_from_synthetic_numbers():
    s = lp_summary.summarise(_synthetic(), ("a", "b", "c"))
    claims = {c.claim.split(":")[0]: c for c in lp_claims.claims_bc(s, units=6)}
    assert claims["Scenario A, a"].verdict == "reproduced"
    assert claims["Scenario A, b"].verdict == "not reproduced"
    assert claims["Scenario A, c"].kind == "verification" and claims["Scenario A, c"].verdict == "reproduced"
    assert claims["Scenario B, a"].verdict == "not reproduced"
    assert claims["Scenario B, c"].verdict == "reproduced"
    assert claims["SNIS monitor, a"].verdict == "reproduced"
    assert claims["SNIS monitor, b"].verdict == "not reproduced"
    assert claims["SNIS monitor, c"].verdict == "not reproduced"
    assert claims["power"].verdict == "reproduced"
    for c in claims.values():
        if c.kind == "experiment":
            assert c.seeds == 6 and c.ci is not None
    # fewer units than MIN_SEEDS: nothing decisive
    few = lp_summary.summarise({k: v[:3] for k, v in _synthetic().items()}, ("a", "b", "c"))
    assert all(c.verdict == "inconclusive" for c in lp_claims.claims_bc(few, units=3) if c.kind == "experiment")


def test_power_failure_makes_nulls_inconclusive():
    rec = _synthetic()
    rec["first_order"] = np.random.default_rng(1).normal(size=rec["delta_e"].shape)  # a control with no signal
    claims = {
        c.claim.split(":")[0]: c for c in lp_claims.claims_bc(lp_summary.summarise(rec, ("a", "b", "c")), units=6)
    }
    assert claims["Scenario A, a"].verdict == "inconclusive"
    assert claims["Scenario B, c"].verdict == "inconclusive"
    assert claims["Scenario A, b"].verdict == "not reproduced"  # a signal is a signal, power or not
    assert claims["power"].verdict == "not reproduced"


def test_claims_a_fail_on_a_wrong_identity():
    rec = {
        "identity_err": 1e-8,
        "cov_err": 1e-8,
        "identity_ok": True,
        "case": "Eq. 10: ...",
        "closed_ok": True,
        "closed_objective_ok": True,
        "closed_err": 1e-8,
        "closed_objective_err": 1e-8,
        "closed_policy": np.array([0.3]),
    }
    info = {
        "cppo_single_success_policy": math.sqrt(15) / 16,
        "group_size": 16,
        "cppo_pruning_groups": 1,
        "mixed_groups": 3,
    }
    ok = lp_claims.claims_a({"dr_grpo": rec, "cppo": dict(rec, case="Eq. 11: ...")}, info)
    assert all(c.verdict == "reproduced" and c.kind == "verification" for c in ok)
    bad = lp_claims.claims_a({"dr_grpo": dict(rec, closed_ok=False), "cppo": dict(rec, case="Eq. 11: ...")}, info)
    assert [c.verdict for c in bad if c.claim.startswith("Eq. 10")] == ["not reproduced"]
    zero = lp_claims.claims_a({"cppo": dict(rec, case="Eq. 11: ...")}, dict(info, cppo_single_success_policy=0.0))
    assert [c.verdict for c in zero if c.claim.startswith("cppo")] == ["not reproduced"]


# ----------------------------------------------------------------------------- end to end, tiny


def test_loss_proxy_end_to_end(tmp_path):
    cfg = lp._config("test")
    ctx = Context(scale="test", out=tmp_path)
    outcome = lp._run(ctx, cfg)
    for name in ("result.json", "table.md", "loss_proxy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["first_step"]) == set(cfg.presets) | ({"gcpo_once"} if lp_task.has_gcpo_field() else set())
    assert result["first_step"]["cppo"]["policy"][-1] == pytest.approx(math.sqrt(15) / 16, abs=1e-6)
    kinds = {c.kind for c in outcome.claims}
    assert kinds == {"verification", "experiment"}
    for c in outcome.claims:
        if c.kind == "verification":
            assert c.verdict == "reproduced", c  # identities hold on any batch
        else:
            assert c.verdict == "inconclusive" and c.seeds == cfg.units < 5  # too few units to decide
    summ = result["cross"]["summary"]
    assert len(summ) == len(cfg.inner_lrs) and set(summ[0]) == set(cfg.methods)
    assert len(summ[0]["dapo"]["corr_per_unit"]["gain"]) == cfg.units
    curve = np.array(result["cross"]["e_curve"])
    assert curve.shape == (cfg.runs, cfg.train_steps + 1) and np.all((curve > 0) & (curve < 1))
    assert "| claim | kind | criterion | measured | verdict |" in (tmp_path / "table.md").read_text()


def test_config_validates():
    with pytest.raises(ValueError, match="checkpoints"):
        lp.Config(checkpoints=(50,))
    with pytest.raises(ValueError, match="unknown preset"):
        lp.Config(methods=("grpo", "nope"))
    with pytest.raises(ValueError, match="inner_lrs"):
        lp.Config(inner_lrs=(0.0,))
    with pytest.raises(ValueError, match="scale must be"):
        lp._config("huge")
    for scale in ("quick", "paper", "test"):
        cfg = lp._config(scale)
        assert dataclasses.replace(cfg) == cfg and hash(cfg)


def test_gcpo_readings():
    """gcpo is Table 1 read literally when jgrpo has the 'sequence_terms' option, once per completion otherwise."""
    cfg = lp.Config(methods=("gcpo", "gcpo_once"))
    if lp_task.has_gcpo_field():
        assert lp_task.gcpo_reading(jgrpo.methods.get("gcpo")) == "literal"
        assert lp_task.gcpo_reading(lp_task.spec_of("gcpo_once")) == "once"
        assert lp_task.methods_of(cfg) == ("gcpo", "gcpo_once")
    else:
        assert lp_task.gcpo_reading(jgrpo.methods.get("gcpo")) == "once"
        assert lp_task.methods_of(cfg) == ("gcpo",)  # the two would be the same preset
    assert lp_task.methods_of(lp.Config(methods=("gcpo_once",))) == ("gcpo_once",)
