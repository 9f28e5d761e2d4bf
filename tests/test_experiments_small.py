"""Smoke runs of the reward_scaling (Prop. 2) experiment on tiny configs (loss_proxy: test_experiments_loss_proxy.py).

Each run writes result.json, one PNG and table.md, and reports claims whose
measured strings carry numbers. The fast tests skip what needs a transformer
training program to compile (~20-40 s on CPU); the ``slow`` ones cover it.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from experiments import reward_scaling
from experiments.common import Context

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


def test_reward_scaling_tabular(tmp_path):
    cfg = dataclasses.replace(reward_scaling._config("test"), transformer=False)
    ctx = Context(scale="test", out=tmp_path)
    outcome = reward_scaling._run(ctx, cfg)
    result = _check_outputs(ctx, outcome, "reward_scaling.png")
    dev = result["tabular"]["dr_grpo"]["max_rel_param_dev"]
    assert len(dev) == len(reward_scaling._rows(cfg)) and len(dev[0]) == len(cfg.phis)
    ref = cfg.phis.index(1.0)
    assert all(row[ref] == 0.0 for row in dev)  # phi = 1 is the reference run
    # Prop. 2 holds on the tabular policy and the three ways to break it do break it
    by_claim = {c.claim[:12]: c.reproduced for c in outcome.claims}
    assert by_claim["Prop. 2: Ada"] is True
    assert by_claim["SGD breaks i"] is True


@pytest.mark.slow
def test_reward_scaling_with_transformer(tmp_path):
    cfg = dataclasses.replace(reward_scaling._config("test"), methods=())
    ctx = Context(scale="test", out=tmp_path)
    outcome = reward_scaling._run(ctx, cfg)
    result = _check_outputs(ctx, outcome, "reward_scaling.png")
    runs = result["transformer"]["runs"]["grpo"]
    assert set(runs) == {"balanced", "uniform"}
    assert len(runs["uniform"]["max_rel_param_dev"]) == len(cfg.tf_epss)


def test_configs_validate():
    with pytest.raises(ValueError, match="phis must contain 1.0"):
        reward_scaling.Config(phis=(0.1, 10.0))
    with pytest.raises(ValueError, match="group_size"):
        reward_scaling.Config(group_size=3)
    for scale in ("quick", "paper", "test"):
        reward_scaling._config(scale)
