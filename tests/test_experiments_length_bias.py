"""length_bias: the task's reward and exact metrics against independent references, the claim logic on
synthetic numbers, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import length_bias as lb
from experiments.common import Context
from experiments.length_bias import claims as lb_claims
from experiments.length_bias import measure as lb_measure
from experiments.length_bias import task as lb_task

Z = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
Z = (Z - Z.mean()) / Z.std(ddof=1)  # synthetic per-seed values are center + sd * Z (deterministic intervals)


def _seeds(center, sd=0.1):
    return list(center + sd * Z)


def _correct(tokens, difficulty):
    """The task's rule in plain Python: the first answer token is C, with >= d R tokens before it."""
    count = 0
    for tok in tokens:
        if tok == lb_task.R:
            count += 1
        elif tok in (lb_task.C, lb_task.W):
            return float(tok == lb_task.C and count >= difficulty)
        if tok == lb_task.EOS:
            break
    return 0.0


def _completion(seq):
    out = []
    for tok in seq:
        out.append(int(tok))
        if tok == lb_task.EOS:
            break
    return out


def test_rewards_match_the_rule():
    cfg = lb.Config(difficulties=(1, 3), length=8, methods=lb.REQUIRED, checkpoints=(0,), outer_steps=2)
    rng = np.random.default_rng(0)
    tokens = rng.choice(5, size=(2, 64, 8), p=[0.1, 0.5, 0.15, 0.1, 0.15]).astype(np.int32)
    is_eos = tokens == lb_task.EOS
    mask = ((np.cumsum(is_eos, -1) - is_eos) == 0).astype(np.float32)  # up to and including the first EOS
    prompt = jnp.asarray([0, 1])
    got = np.asarray(lb_task.rewards_of(jnp.asarray(tokens), jnp.asarray(mask), prompt, lb_task.transitions(cfg)))
    want = np.array([[_correct(_completion(t), cfg.difficulties[b]) for t in tokens[b]] for b in range(2)])
    np.testing.assert_array_equal(got, want)
    assert 0 < want.mean() < 1


def test_exact_metrics_match_enumeration():
    """analysis.tabular through the task's automata against all 5^4 sequences, float64 loops."""
    cfg = lb.Config(difficulties=(1, 2), length=4, methods=lb.REQUIRED, checkpoints=(0,), outer_steps=2)
    params = lb_task.initial_policy(7, cfg)
    got = {
        k: float(v)
        for k, v in lb_task.exact_metrics(params, lb_task.transitions(cfg), cfg.length).items()
        if v.ndim == 0
    }
    table = np.asarray(params["logits"], np.float64)
    e_r = e_l = e_lc = 0.0
    for k, d in enumerate(cfg.difficulties):

        def walk(prefix, prob, k=k, d=d):
            nonlocal e_r, e_l, e_lc
            t = len(prefix)
            row = table[k, t, lb_task.VOCAB if t == 0 else prefix[-1]]
            p = np.exp(row - row.max())
            p /= p.sum()
            for v in range(lb_task.VOCAB):
                seq, q = prefix + [v], prob * p[v]
                if v == lb_task.EOS or len(seq) == cfg.length:
                    r = _correct(seq, d)
                    e_r, e_l, e_lc = e_r + q * r, e_l + q * len(seq), e_lc + q * r * len(seq)
                else:
                    walk(seq, q)

        walk([], 1.0 / len(cfg.difficulties))
    assert got["reward"] == pytest.approx(e_r, rel=1e-5)
    assert got["length"] == pytest.approx(e_l, rel=1e-5)
    assert got["length_correct"] == pytest.approx(e_lc / e_r, rel=1e-4)
    assert got["length_incorrect"] == pytest.approx((e_l - e_lc) / (1 - e_r), rel=1e-4)


def test_matched_progress_hand_case():
    reward = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    other = np.array([0.2, 0.3, 0.4, 0.5, 0.6])
    length, other_length = np.array([5.0, 6, 7, 8, 9]), np.array([5.0, 5, 5, 5, 5])
    diff, gain = lb_measure.matched_progress(reward, length, other, other_length, levels=2)
    # levels 0.2 + {0.1, 1.0} * 0.4 = 0.24, 0.6: run 1 first reaches them at steps 1 and 2 (lengths 6, 7)
    assert gain == pytest.approx(0.4) and diff == pytest.approx(((6 - 5) + (7 - 5)) / 2)
    diff, gain = lb_measure.matched_progress(reward, length, np.full(5, 0.2), other_length)
    assert math.isnan(diff) and gain == pytest.approx(0.0)


def _drift(grpo, dr, control):
    return {"grpo": _seeds(*grpo), "dr_grpo": _seeds(*dr), lb.CONTROL: _seeds(*control)}


def _by_claim(claims):
    return [c.verdict for c in claims]


def test_claim_rules():
    matched = {"adam": _seeds(0.5), "ngd": _seeds(-0.5)}
    v = _by_claim(lb_claims.claims_of(_drift((10.0, 1.0), (5.0, 1.0), (20.0, 1.0)), matched))
    assert v == ["reproduced", "reproduced", "reproduced", "not reproduced"]
    # grpo below dr_grpo: not reproduced; a noisy null without a detected control: inconclusive
    v = _by_claim(lb_claims.claims_of(_drift((3.0, 0.5), (5.0, 0.5), (20.0, 1.0)), matched))
    assert v[0] == "not reproduced"
    v = _by_claim(lb_claims.claims_of(_drift((5.0, 3.0), (5.0, 0.1), (5.0, 3.0)), matched))
    assert v[:2] == ["inconclusive", "inconclusive"]
    # a precise null with a strong control counts against the claim
    v = _by_claim(lb_claims.claims_of(_drift((5.0, 0.01), (5.0, 0.01), (25.0, 0.1)), matched))
    assert v[:2] == ["not reproduced", "reproduced"]
    # a seed without progress leaves the training claim inconclusive
    v = _by_claim(
        lb_claims.claims_of(_drift((10.0, 1.0), (5.0, 1.0), (20.0, 1.0)), {"adam": [*_seeds(0.5)[:-1], math.nan]})
    )
    assert v[2] == "inconclusive"


def test_claims_read_the_drift_of_the_named_methods():
    drift = _drift((10.0, 1.0), (5.0, 1.0), (20.0, 1.0))
    drift["dapo"] = _seeds(-100.0)  # a decoy: the claim is about grpo against dr_grpo
    claims = lb_claims.claims_of(drift, {"adam": _seeds(0.5)})
    assert claims[0].verdict == "reproduced"
    assert claims[0].ci == pytest.approx((5.0, 5.0))  # paired: the common seed noise cancels exactly


def test_control_advantages():
    rewards = jnp.asarray([[1.0, 0.0, 1.0, 0.0]])
    mask = (jnp.arange(8)[None, None, :] < jnp.asarray([[2, 2, 6, 6]])[..., None]).astype(jnp.float32)
    np.testing.assert_allclose(
        np.asarray(lb_task.control_advantages(rewards, mask)), [[0.5 * 2, -0.5 * 2, 0.5 * 4 / 6, -0.5 * 4 / 6]]
    )


def test_end_to_end_on_the_test_config(tmp_path):
    cfg = lb._config("test")
    outcome = lb._run(Context(scale="test", out=tmp_path), cfg)
    for name in ("result.json", "table.md", "length_bias.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "result.json").read_text())
    curves = result["curves"]["adam"]["grpo"]
    assert np.shape(curves["reward"]) == (cfg.seeds, cfg.outer_steps)
    # every method starts from the same policy (exact metrics at step 0 agree)
    first = {m: result["curves"]["ngd"][m]["length_incorrect"][0][0] for m in cfg.methods}
    assert max(first.values()) - min(first.values()) < 1e-5
    assert all(0 < r < 1 for run in curves["reward"] for r in run)
    assert set(result["drift"]) == set(cfg.methods)
    assert [c.kind for c in outcome.claims] == ["experiment"] * 4
    assert all(c.verdict == "inconclusive" and c.seeds <= 2 for c in outcome.claims)  # 2 seeds decide nothing


def test_config_validation():
    with pytest.raises(ValueError, match="room for the hardest prompt"):
        lb.Config(difficulties=(2, 40), length=32)
    with pytest.raises(ValueError, match="methods must contain"):
        lb.Config(methods=("grpo", "dapo"))
    with pytest.raises(ValueError, match="checkpoints"):
        lb.Config(checkpoints=(10, 20))
    with pytest.raises(ValueError, match="multiples"):
        lb.Config(prompts_per_step=6)
    with pytest.raises(ValueError, match="scale must be"):
        lb._config("huge")
    for scale in ("quick", "paper", "test"):
        lb._config(scale)


def test_few_or_undefined_seeds_decide_nothing():
    drift = _drift((10.0, 1.0), (5.0, 1.0), (20.0, 1.0))
    few = {k: v[:3] for k, v in drift.items()}
    assert {c.verdict for c in lb_claims.claims_of(few, {"adam": _seeds(0.5)[:3]})} == {"inconclusive"}
    drift["grpo"][0] = math.nan
    claims = lb_claims.claims_of(drift, {})
    assert claims[0].verdict == "reproduced" and claims[0].seeds == len(Z) - 1
