"""Smoke runs of the loss_proxy (Prop. 4) experiment on tiny configs (reward_scaling: test_experiments_reward_scaling).

Each run writes result.json, one PNG and table.md, and reports claims whose
measured strings carry numbers. The fast tests skip what needs a transformer
training program to compile (~20-40 s on CPU); the ``slow`` ones cover it.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from experiments import loss_proxy
from experiments.common import Context
from jgrpo.policies import tabular_init, tabular_logits_fn

NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?")


def _check_outputs(ctx: Context, outcome, png: str) -> dict:
    for name in ("result.json", "table.md", png):
        assert (ctx.out / name).is_file(), name
        assert (ctx.out / name).stat().st_size > 0, name
    assert outcome.figure == png
    assert outcome.claims
    for c in outcome.claims:
        assert isinstance(c.claim, str) and c.claim
        assert NUMBER.search(c.measured), (c.claim, c.measured)
        assert c.reproduced in (True, False, None)
    table = (ctx.out / "table.md").read_text()
    assert "| claim | kind | criterion | measured | verdict |" in table
    return json.loads((ctx.out / "result.json").read_text())


def test_loss_proxy_first_step(tmp_path):
    cfg = dataclasses.replace(loss_proxy._config("test"), train=False)
    ctx = Context(scale="test", out=tmp_path)
    outcome = loss_proxy._run(ctx, cfg)
    result = _check_outputs(ctx, outcome, "loss_proxy.png")
    assert set(result["first_step"]) == set(cfg.presets)
    for rec in result["first_step"].values():
        assert rec["identity_err"] < 1e-5
    assert all(c.reproduced is True for c in outcome.claims)  # the identities hold on any batch
    assert result["training"] == {}


def test_tabular_hit_probability_matches_sampling():
    """The exact E[r] of the tabular policy (forward recursion) against 4000 sampled completions."""
    params = tabular_init(jax.random.key(3), vocab=6, max_len=5, scale=1.0)
    exact = float(loss_proxy.tabular_hit_probability(params, target=loss_proxy.TARGET, eos=loss_proxy.EOS, length=5))
    prompt = jnp.full((1, 1), loss_proxy.TARGET, jnp.int32)
    s = jgrpo.sample(
        tabular_logits_fn(1), params, prompt, jax.random.key(0), group_size=4000, max_len=5, eos_id=loss_proxy.EOS
    )
    mc = float(jnp.mean(loss_proxy._reward(s.tokens, s.mask, prompt)))
    assert 0.1 < exact < 0.9
    assert abs(exact - mc) < 4 * np.sqrt(exact * (1 - exact) / 4000), (exact, mc)


@pytest.mark.slow
def test_loss_proxy_training(tmp_path):
    cfg = dataclasses.replace(loss_proxy._config("test"), presets=("dr_grpo",))
    ctx = Context(scale="test", out=tmp_path)
    outcome = loss_proxy._run(ctx, cfg)
    result = _check_outputs(ctx, outcome, "loss_proxy.png")
    assert set(result["training"]) == {"tabular", "transformer"}
    for policy, runs in result["training"].items():
        seeds, steps = (cfg.tab_seeds, cfg.tab_outer_steps) if policy == "tabular" else (cfg.seeds, cfg.outer_steps)
        for name in cfg.methods:
            series = runs[name]["series"]
            assert len(series["reward_mean"]) == seeds and len(series["reward_mean"][0]) == steps
            assert max(max(r) for r in series["objective_prop4_err"]) < 1e-5  # Prop. 4 on every training batch
    exact = result["training"]["tabular"]["grpo"]["series"]["reward_exact"]
    assert all(0.0 < e < 1.0 for run in exact for e in run)


def test_configs_validate():
    with pytest.raises(ValueError, match="outer_steps"):
        loss_proxy.Config(outer_steps=3)
    with pytest.raises(ValueError, match="train_policies"):
        loss_proxy.Config(train_policies=("rnn",))
    with pytest.raises(ValueError, match="scale must be"):
        loss_proxy._config("huge")
    for scale in ("quick", "paper", "test"):
        loss_proxy._config(scale)
