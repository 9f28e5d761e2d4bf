"""prefix_bias: the claim logic on synthetic numbers, the task's construction, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import prefix
from experiments import prefix_bias as pb
from experiments.common import Context
from experiments.prefix_bias import claims as pb_claims
from experiments.prefix_bias import task as pb_task

ACC = (0.25, 0.75)
# a fixed standardised pattern (mean 0, sd 1): synthetic per-seed values are center + sd * Z
Z = np.array([-1.5, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 1.5])
Z = (Z - Z.mean()) / Z.std(ddof=1)


def _seeds(center, sd=0.1):
    return list(center + sd * Z)


def _per(grpo, dr, control, debias=None, *, key="shared_len_per_gain"):
    """``{method: {p: {key: [seeds]}}}`` from ``{p: (center, sd)}`` specs; debias defaults to grpo's values."""
    out = {}
    for name, spec in (("grpo", grpo), ("dr_grpo", dr), (pb.CONTROL, control), ("grpo+debias", debias or grpo)):
        out[name] = {p: {key: _seeds(*spec[p])} for p in ACC}
    return out


def _verdicts(per):
    return {c.proposition: c.verdict for c in pb_claims.effect_claims(per, ACC)}


def test_consequence_reproduced_when_grpo_shortens_in_every_regime():
    per = _per({p: (-1.0, 0.1) for p in ACC}, {p: (0.0, 0.1) for p in ACC}, {p: (-1.0, 0.1) for p in ACC})
    v = _verdicts(per)
    assert v["Prop. 1"] == "reproduced" and v["control"] == "reproduced"


def test_consequence_not_reproduced_when_grpo_lengthens_in_one_regime():
    per = _per({0.25: (0.5, 0.1), 0.75: (-0.5, 0.1)}, {p: (0.0, 0.1) for p in ACC}, {p: (-1.0, 0.1) for p in ACC})
    assert _verdicts(per)["Prop. 1"] == "not reproduced"
    # the same numbers without a detected positive control decide nothing
    per = _per({0.25: (0.5, 0.1), 0.75: (-0.5, 0.1)}, {p: (0.0, 0.1) for p in ACC}, {p: (0.0, 1.0) for p in ACC})
    v = _verdicts(per)
    assert v["Prop. 1"] == "inconclusive" and v["control"] == "inconclusive"


def test_a_null_counts_against_the_claim_only_with_power():
    null_narrow = {p: (0.0, 0.01) for p in ACC}
    per = _per(null_narrow, null_narrow, {p: (-1.0, 0.1) for p in ACC})
    assert _verdicts(per)["Prop. 1"] == "not reproduced"  # the design could see half the control's effect
    per = _per({p: (0.0, 1.0) for p in ACC}, null_narrow, {p: (-1.0, 0.1) for p in ACC})
    assert _verdicts(per)["Prop. 1"] == "inconclusive"  # too noisy to tell


def test_claims_read_the_shared_prefix_statistic_not_another():
    per = _per({p: (-1.0, 0.1) for p in ACC}, {p: (0.0, 0.1) for p in ACC}, {p: (-1.0, 0.1) for p in ACC})
    decoy = _per({p: (5.0, 0.1) for p in ACC}, {p: (0.0, 0.1) for p in ACC}, {p: (5.0, 0.1) for p in ACC})
    for m in per:
        for p in ACC:
            per[m][p]["total_len_per_gain"] = decoy[m][p]["shared_len_per_gain"]
    assert _verdicts(per)["Prop. 1"] == "reproduced"


def test_debias_claim():
    grpo, dr = {p: (0.5, 0.1) for p in ACC}, {p: (0.0, 0.1) for p in ACC}
    control = {p: (-1.0, 0.1) for p in ACC}
    assert _verdicts(_per(grpo, dr, control))["beyond"] == "not reproduced"  # debias = grpo: the bias remains
    assert _verdicts(_per(grpo, dr, control, debias=dr))["beyond"] == "reproduced"


def test_verification_claims_fail_on_a_large_error():
    good = {"w_full_float64_max_err_rel": 1e-7, "w_full_float64_mean_abs": 0.1, "max_abs_coefficient": 1.0}
    a = {n: dict(good) for n in ("grpo", "gspo", "dr_grpo", "dapo", "grpo+debias")}
    stats = {"fully_shared_nodes": 3, "source": "synthetic"}
    b_stats = {0.25: [{"length_correct": 5.0, "length_incorrect": 5.0}]}
    assert all(c.verdict == "reproduced" for c in pb_claims.verification_claims(a, stats, b_stats))
    a["gspo"]["w_full_float64_max_err_rel"] = 1e-3
    b_stats[0.25][0]["length_incorrect"] = 5.1
    verdicts = [c.verdict for c in pb_claims.verification_claims(a, stats, b_stats)]
    assert verdicts == ["not reproduced", "reproduced", "reproduced", "not reproduced"]


def test_tree_task_has_reward_independent_of_length():
    cfg = pb._config("test")
    params = pb_task.tree_task_policy(3, cfg, 0.3)
    t, a = cfg.length, cfg.answer_pos

    def expect(f):
        return float(prefix.tree_expectation(params, f, eos=pb_task.EOS, length=t))

    p_correct = expect(lambda s, m: pb_task.reward(s, cfg))
    e_len = expect(lambda s, m: m.sum(-1))
    e_len_correct = expect(lambda s, m: m.sum(-1) * pb_task.reward(s, cfg)) / p_correct
    assert p_correct == pytest.approx(0.3, abs=1e-6)
    assert e_len_correct == pytest.approx(e_len, abs=1e-4)
    assert expect(lambda s, m: (m.sum(-1) <= a + 1).astype(jnp.float32)) == 0.0  # no EOS before the answer
    assert e_len > a + 1.5  # the continuation has room to vary


def test_control_advantages_hand_case():
    rewards = jnp.asarray([[1.0, 1.0, 0.0, 0.0]])
    mask = (jnp.arange(6)[None, None, :] < jnp.asarray([[2, 4, 2, 4]])[..., None]).astype(jnp.float32)
    adv = np.asarray(pb_task.control_advantages(rewards, mask))
    np.testing.assert_allclose(adv, [[0.5 * 3 / 2, 0.5 * 3 / 4, -0.5, -0.5]])


def test_end_to_end_on_the_test_config(tmp_path):
    ctx = Context(scale="test", out=tmp_path)
    outcome = pb._run(ctx, pb._config("test"))
    for name in ("result.json", "table.md", "prefix_bias.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "result.json").read_text())
    kinds = {c["kind"] for c in result["claims"]}
    assert kinds == {"verification", "experiment"}
    for c in outcome.claims:
        if c.kind == "verification":
            assert c.verdict == "reproduced", c
        else:
            assert c.seeds == 2 and c.verdict == "inconclusive"  # fewer than 5 seeds decide nothing
    per = result["tree"]["per_seed"]
    assert set(per) == set(pb.REQUIRED)
    assert all(len(v["shared_len_per_gain"]) == 2 for r in per.values() for v in r.values())
    assert result["presets"]["grpo"]["w_full_float64_max_err_rel"] < pb_claims.IDENTITY_TOL


def test_config_validation():
    with pytest.raises(ValueError, match="accuracies"):
        pb.Config(accuracies=(0.5, 1.0))
    with pytest.raises(ValueError, match="answer_pos"):
        pb.Config(answer_pos=9, length=10)
    with pytest.raises(ValueError, match="methods must contain"):
        pb.Config(methods=("grpo", "dr_grpo"))
    with pytest.raises(ValueError, match="verify_presets must include"):
        pb.Config(verify_presets=("grpo",))
    with pytest.raises(ValueError, match="scale must be"):
        pb._config("huge")
    for scale in ("quick", "paper", "test"):
        assert dataclasses.is_dataclass(pb._config(scale))
    assert jax.tree.leaves(pb_task.tree_task_policy(0, pb._config("test"), 0.5))[0].dtype == jnp.float32


def test_few_or_undefined_seeds_decide_nothing():
    per = _per({p: (-1.0, 0.1) for p in ACC}, {p: (0.0, 0.1) for p in ACC}, {p: (-1.0, 0.1) for p in ACC})
    few = {m: {p: {k: v[:3] for k, v in r.items()} for p, r in rec.items()} for m, rec in per.items()}
    assert set(_verdicts(few).values()) == {"inconclusive"}  # 3 seeds, however clear
    for m in per:  # a seed whose statistic is undefined (no reward gain) is left out, not propagated
        per[m][0.25]["shared_len_per_gain"][0] = float("nan")
    claims = pb_claims.effect_claims(per, ACC)
    assert claims[0].verdict == "reproduced" and claims[0].seeds == len(Z) - 1
