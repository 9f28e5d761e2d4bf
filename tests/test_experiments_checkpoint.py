"""``python -m experiments run NAME --model PATH``: the experiments on a Hugging Face checkpoint, end to end.

The checkpoint is a tiny random-weight Qwen2 written by transformers (tests/hf_checkpoints.py) with a tiny BPE
tokenizer trained here on Countdown text (tests/test_tasks.py); nothing is downloaded. The end-to-end runs are
marked slow (``make test`` keeps the CLI's checks, which need no checkpoint).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import jgrpo.models as M  # noqa: E402
from experiments import __main__ as cli  # noqa: E402
from experiments.common import Context  # noqa: E402
from tests import hf_checkpoints  # noqa: E402
from tests.test_tasks import make_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2-tiny")
    make_tokenizer(path)
    hf_checkpoints.build("qwen2", path, seed=0, vocab_size=320, num_hidden_layers=1, hidden_size=32,
                         intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    return str(path)


def test_cli_refuses_a_checkpoint_where_it_has_no_place(tmp_path, capsys):
    fake = tmp_path / "ckpt"  # the CLI checks the directory's files before loading anything
    fake.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (fake / name).write_text("{}")
    assert cli.main(["run", "loss_proxy", "--model", str(fake), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'loss_proxy' does not take a checkpoint" in err and "prefix_bias" in err
    assert cli.main(["run", "prefix_bias", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["run", "reward_scaling", "--model", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "loss_proxy").exists()  # refused before any compute


@pytest.mark.slow
def test_checkpoint_rollouts_are_on_policy(checkpoint):
    from experiments.shared import checkpoint as C

    ck = C.load(checkpoint)
    r = C.rollouts(ck, jax.random.key(0), prompts=2, group_size=2, max_len=3, seed=0)
    assert isinstance(r.prompt, M.Prompt) and r.batch.tokens.shape == (2, 2, 3)
    assert np.asarray(r.prompt.mask).min() == 0  # Countdown prompts of different lengths: left padding is used
    # The analyses' protocol on the padded prompt gives back logp_old: every ratio is 1 at the first inner step.
    lf = M.logprob_fn(ck.model_fn)
    # ... and, without the mask, the pads are attended to: other log-probabilities (the Prompt's mask is used).
    logp, unmasked = jax.jit(lambda p, t, pr: (lf(p, t, pr), lf(p, t, pr.ids)))(ck.params, r.batch.tokens, r.prompt)
    m = np.asarray(r.batch.mask) > 0
    np.testing.assert_allclose(np.asarray(logp)[m], np.asarray(r.batch.logp_old)[m], atol=1e-5)
    assert np.max(np.abs(np.asarray(unmasked)[m] - np.asarray(logp)[m])) > 1e-4


@pytest.mark.slow
def test_reward_scaling_on_a_checkpoint(checkpoint, tmp_path):
    """The transformer rows on the checkpoint: Prop. 2's verification holds there (grpo under Adam at the noise
    floor, degree 0) and its positive control moves (dr_grpo under SGD, degree 1)."""
    import experiments.reward_scaling as R
    from experiments.reward_scaling.config import _config

    cfg = dataclasses.replace(
        _config("test"), presets=("dr_grpo",), bf16_presets=(), transformer=True, tf_presets=("grpo", "dr_grpo"),
        tf_num_prompts=2, tf_group_size=3, tf_completion_len=4, num_steps=2, seeds=2, model=checkpoint,
    )  # fmt: skip
    ctx = Context(scale="test", out=tmp_path, model=checkpoint)
    m = R.measure.measure(cfg)
    R.report.write(ctx, cfg, m, R.claims.make_claims(cfg, m.cells))  # what R._run does
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["model"] == checkpoint and res["transformer_model"]["checkpoint"] == checkpoint
    cells = {(c.preset, c.setting): c for c in m.cells if c.policy == "transformer"}
    grpo, dr = cells[("grpo", "adamw")], cells[("dr_grpo", "sgd")]
    assert np.all(np.asarray(grpo.dev) <= 10 * np.maximum(np.asarray(grpo.floor)[:, None], 1e-5))
    assert np.all(np.asarray(dr.dev) > 0.1)


@pytest.mark.slow
def test_prefix_bias_on_a_checkpoint(checkpoint, tmp_path):
    import experiments.prefix_bias as PB
    from experiments.prefix_bias.config import _config

    cfg = dataclasses.replace(
        _config("test"), verify_policy="checkpoint", model=checkpoint, prompts=2, group_size=3, max_len=5
    )
    PB._run(Context(scale="test", out=tmp_path, model=checkpoint), cfg)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["model"] == checkpoint
    assert "checkpoint" in (tmp_path / "table.md").read_text()
