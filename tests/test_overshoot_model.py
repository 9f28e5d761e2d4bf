"""``python -m experiments run overshoot --model PATH``: the overshoot sweep on a Hugging Face checkpoint.

make test: the CLI takes overshoot with a checkpoint, the graded Countdown reward and its prompts, the
member-by-member runner against the vmapped sweep on identical inputs (the tabular policy as a host-rewarded
policy: cheap to compile), and the restricted optimizer switch. make test-all: the end-to-end run on a tiny
random-weight Qwen2 checkpoint written here (tests/tiny_checkpoint.py; its compile takes ~25 s of CPU).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import MODEL_EXPERIMENTS, NO_MODEL_REASON, REGISTRY
from experiments import __main__ as cli
from experiments.shared import sweep
from jgrpo.tasks import text

SPEC, SPEC_NOCLIP = sweep.spec_pair()
PROBLEM = text.CountdownProblem(numbers=(3, 17, 3), target=54, solution="3 * 17 + 3")


# ---------------------------------------------------------------------------- the CLI


def test_cli_takes_overshoot_with_a_checkpoint(tmp_path):
    fake = tmp_path / "ckpt"  # the CLI checks the directory's files before loading anything
    fake.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (fake / name).write_text("{}")
    assert "overshoot" in MODEL_EXPERIMENTS and "overshoot" not in NO_MODEL_REASON
    assert cli._model_names("overshoot", ["overshoot"], str(fake)) == (["overshoot"], None)
    names, problem = cli._model_names("all", list(REGISTRY), str(fake))
    assert problem is None and names == ["prefix_bias", "reward_scaling", "overshoot"]


# ---------------------------------------------------------------------------- the reward and the prompts


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>3 * (17 + 3) - 6</answer>", 0.5),  # wrong value (54), and 6 is not given: all 3 numbers written
        ("<answer>3 * (17 + 3 - 2)</answer>", 0.5),  # 54, but 2 is not a given number: the verifier says no
        ("I try 17 and 3", 0.5 * 2 / 3),
        ("3 and 3 and 3 and 17", 0.5),  # each number counted at most as often as given
        ("171 and 33", 0.0),  # whole literals only: 171 is not 17, 33 is not 3
        ("017, then 03", 0.5 * 2 / 3),  # leading zeros do not matter
        ("no numbers here", 0.0),
        ("", 0.0),
    ],
)
def test_shaped_reward_hand_cases(completion, expected):
    from experiments.shared.checkpoint import countdown_shaped_score

    assert countdown_shaped_score(PROBLEM, completion) == pytest.approx(expected, abs=1e-12)


def test_shaped_reward_of_a_verified_solution_is_one():
    from experiments.shared.checkpoint import countdown_shaped_rewards, countdown_shaped_score

    task = text.CountdownTask()
    for p in text.countdown_problems(task, 3, 20):  # the generator's own solutions pass the exact verifier
        assert countdown_shaped_score(p, f"work... <answer>{p.solution}</answer>") == 1.0
        assert countdown_shaped_score(p, f"<answer>{p.solution} + 1</answer>") < 1.0
    r = countdown_shaped_rewards([PROBLEM, PROBLEM], [["3 17", "x"], ["3", "<answer>3 * 17 + 3</answer>"]])
    np.testing.assert_allclose(r, [[1 / 3, 0.0], [1 / 6, 1.0]])
    assert r.dtype == np.float32
    with pytest.raises(ValueError, match="one list per problem"):
        countdown_shaped_rewards([PROBLEM], [["a"], ["b"]])


class _CharTokenizer:
    """Stand-in for TextTokenizer.encode_left_padded: one id per character (code point), left-padded with 0."""

    def encode_left_padded(self, texts):
        n = max(len(t) for t in texts)
        ids = np.zeros((len(texts), n), np.int32)
        mask = np.zeros((len(texts), n), np.int32)
        for i, t in enumerate(texts):
            ids[i, n - len(t) :] = [ord(c) for c in t]
            mask[i, n - len(t) :] = 1
        return ids, mask


def test_countdown_prompts_index_the_problems():
    from experiments.shared.checkpoint import COUNTDOWN, countdown_prompts

    prompt, problems = countdown_prompts(_CharTokenizer(), 5, (2, 3, 4))
    assert prompt.ids.shape[:3] == (2, 3, 4) and prompt.mask.shape == prompt.ids.shape
    assert len(problems) == 2 and all(len(row) == 3 and all(len(b) == 4 for b in row) for row in problems)
    for s, n, b in ((0, 0, 0), (1, 2, 3), (0, 1, 2), (1, 0, 3)):
        ids, mask = prompt.ids[s, n, b], prompt.mask[s, n, b].astype(bool)
        assert "".join(map(chr, ids[mask])) == text.countdown_prompt(COUNTDOWN, problems[s][n][b])
    assert len({p for row in problems for b in row for p in b}) > 20  # distinct problems per (seed, batch)
    with pytest.raises(ValueError, match="shape"):
        countdown_prompts(_CharTokenizer(), 0, (2, 0))


# ---------------------------------------------------------------------------- the optimizer's restricted switch


@pytest.mark.parametrize(
    "kinds, name, ref",
    [
        ((sweep.KIND_ADAM,), "adam_b0.9", optax.adam(0.03, b1=0.9, b2=0.95, eps=1e-8)),
        ((sweep.KIND_ADAM, sweep.KIND_SGD), "sgdm", optax.sgd(0.03, momentum=0.9)),
    ],
)
def test_switched_optimizer_with_fewer_kinds_is_still_the_optax_optimizer(kinds, name, ref):
    p0 = {"w": jnp.asarray([0.3, -0.2, 0.1]), "b": jnp.ones(())}
    grads = lambda p, t: jax.tree.map(lambda x: x - jnp.sin(t + jnp.arange(x.size).reshape(x.shape)), p)
    ratio_fn = lambda p: (jnp.ones((2, 3)), jnp.array([[1.0], [-1.0]]), jnp.ones((2, 3)))  # nothing clipped
    init, step = sweep.make_optimizer(
        sweep.group_of(sweep.BY_NAME[name], mu=4), 0.03, beta2=0.95, eps=1e-8, spec=SPEC, kinds=kinds
    )
    state = init(p0)
    absent = {sweep.KIND_ADAM: state.adam, sweep.KIND_RMS: state.rms, sweep.KIND_SGD: state.sgd}
    assert all((v is None) == (k not in kinds) for k, v in absent.items())  # only the kinds' states exist
    jstep = jax.jit(lambda g, s, p, new_batch: step(g, s, p, ratio_fn, new_batch))
    p, q, s_ref = p0, p0, ref.init(p0)
    for t in range(4):
        u, state, _ = jstep(grads(p, t), state, p, t == 0)
        p = optax.apply_updates(p, u)
        u_ref, s_ref = ref.update(grads(q, t), s_ref, q)
        q = optax.apply_updates(q, u_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p, q)
    with pytest.raises(ValueError, match="kinds"):
        sweep.make_optimizer(sweep.group_of(sweep.BY_NAME[name], mu=1), 0.03, beta2=0.95, eps=1e-8, spec=SPEC, kinds=())


# ---------------------------------------------------------------------------- members one by one = the vmapped sweep

PC = sweep.PolicyConfig(
    kind="tabular", vocab=6, completion_len=4, num_prompts=2, group_size=4, num_batches=2, mu=3, seeds=2,
    learning_rates=(0.05, 0.1, 0.2), optimizers=("adam_b0", "adam_b0.9", "projection"),
)  # fmt: skip


def _host_tabular(pc: sweep.PolicyConfig, seed: int):
    """The tabular policy as a host-rewarded policy (one shared table; reward 1 iff the completion contains the
    prompt's first token, here computed in NumPy) and the vmapped sweep's inputs for the same members."""
    pol = sweep.setup_policy(pc, seed)
    table = {"logits": pol.params0["logits"][0]}  # every member starts from it, as from a checkpoint
    prompts = np.asarray(pol.prompts)

    def reward_fn(s, n, tokens, mask):
        assert mask.shape == tokens.shape and np.all(mask == 1)  # fixed-length completions
        return np.any(tokens == prompts[s, n][:, :1, None], axis=-1).astype(np.float32)

    host = sweep.HostPolicy(
        sampler=pol.logits_fn, logprob3=pol.logprob3, params=table, prompts=jnp.asarray(prompts), keys=pol.keys,
        reward_fn=reward_fn, eos_id=None, pad_id=0, description={}, text="",
    )  # fmt: skip
    return pol, host


def test_member_runner_matches_the_vmapped_sweep_member_by_member():
    pol, host = _host_tabular(PC, seed=3)
    S, L = PC.seeds, len(PC.learning_rates)
    seed_idx = np.tile(np.arange(S), L)  # member m = (lr m // S, seed m % S), as overshoot.measure.run_sweep
    lrs = np.repeat(np.asarray(PC.learning_rates, np.float32), S)
    # the vmapped sweep's non-tabular program (2G samples: G trained on, G held out; in-jit reward)
    vmapped = sweep._sweep_fn(
        "transformer",
        PC.completion_len,
        PC.group_size,
        pol.logits_fn,
        pol.logprob3,
        0.95,
        1e-8,
        SPEC,
        SPEC_NOCLIP,
        sweep.kinds_of(PC),
    )  # fmt: skip (Adam's branch only)
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(lrs),) + x.shape), host.params)
    runner = sweep.make_member_runner(PC, host, beta2=0.95, eps=1e-8, spec=SPEC)
    for name in ("adam_b0.9", "projection"):
        group = sweep.group_of(sweep.BY_NAME[name], mu=PC.mu)
        ref = jax.tree.map(np.asarray, vmapped(group, jnp.asarray(lrs), params, pol.prompts[seed_idx],
                                                pol.keys[seed_idx]))  # fmt: skip
        got = runner(group, lrs, seed_idx)
        assert set(got) == set(ref)
        for k in ref:
            assert got[k].shape == ref[k].shape == (len(lrs), PC.num_batches), k
            np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-6, err_msg=f"{name}: {k}")
        # members differ (η and seed), so a runner that mixed them up would fail the comparison above
        assert len({tuple(np.round(r, 6)) for r in ref["dJ"]}) == len(lrs)
        assert ref["pairs"].sum() > 0 and np.all(np.isfinite(ref["dE"]))  # tokens do cross the bound
    assert np.asarray(host.params["logits"]).sum() == pytest.approx(float(np.asarray(pol.params0["logits"][0]).sum()))
    with pytest.raises(ValueError, match="compiled kinds"):
        runner(sweep.group_of(sweep.BY_NAME["sgdm"], mu=1), lrs[:1], seed_idx[:1])
    # memory: a member's parameters and optimizer state are donated to each update (the same cached executable)
    step, init = sweep._member_fns(PC.completion_len, PC.group_size, host.logprob3, 0.95, 1e-8, SPEC, SPEC_NOCLIP,
                                   sweep.kinds_of(PC))  # fmt: skip
    params = jax.tree.map(jnp.copy, host.params)
    state = init(params)
    B, G, T = PC.num_prompts, PC.group_size, PC.completion_len
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, PC.vocab, (B, 2 * G, T)), jnp.int32)
    rewards = jnp.asarray(np.random.default_rng(1).integers(0, 2, (B, 2 * G)), jnp.float32)
    new_params, new_state, _ = step(group, 0.1, params, state, host.prompts[0, 0], tokens, jnp.ones((B, 2 * G, T)),
                                    rewards)  # fmt: skip
    assert all(x.is_deleted() for x in jax.tree.leaves((params, state)) if np.ndim(x) > 0)
    assert not any(x.is_deleted() for x in jax.tree.leaves(host.params))  # the shared copy is never donated
    bad = host._replace(reward_fn=lambda s, n, tokens, mask: np.zeros((PC.num_prompts, PC.group_size)))
    with pytest.raises(ValueError, match=r"\[B, 2G\]"):
        sweep.make_member_runner(PC, bad, beta2=0.95, eps=1e-8, spec=SPEC)(group, lrs[:1], seed_idx[:1])


def test_checkpoint_policy_config_validates():
    from experiments.overshoot import config as oc

    with pytest.raises(ValueError, match="checkpoint"):
        sweep.PolicyConfig(kind="checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        sweep.PolicyConfig(kind="transformer", checkpoint="/x")
    with pytest.raises(ValueError, match="dtype"):
        sweep.PolicyConfig(kind="checkpoint", checkpoint="/x", dtype="float16")
    for scale in ("quick", "paper", "test"):
        cfg = oc.with_checkpoint(oc._config(scale), "/x", scale)
        (pc,) = cfg.policies
        assert pc.kind == "checkpoint" and pc.checkpoint == "/x"
        assert sweep.kinds_of(pc) == (sweep.KIND_ADAM,)  # one Adam state beside the parameters
        assert pc.seeds >= 5 or scale == "test"
    with pytest.raises(ValueError, match="make_member_runner"):
        sweep.make_sweep(pc, None, beta2=0.95, eps=1e-8, spec=SPEC)


# ---------------------------------------------------------------------------- end to end on a checkpoint (slow)


@pytest.mark.slow
def test_overshoot_on_a_tiny_checkpoint_end_to_end(tmp_path):
    pytest.importorskip("tokenizers")
    import experiments.overshoot as ex
    from experiments.common import Context
    from tests import tiny_checkpoint

    path = str(tiny_checkpoint.write(tmp_path / "qwen2-tiny"))
    out = ex.run(Context(scale="test", out=tmp_path / "ov", model=path))
    res = json.loads((tmp_path / "ov" / "result.json").read_text())
    assert res["model"] == path and list(res["policies"]) == ["checkpoint"]
    assert res["policies"]["checkpoint"]["description"]["checkpoint"] == path
    (pc,) = ex.with_checkpoint(ex._config("test"), path, "test").policies
    meas = res["measured"]["checkpoint"]
    assert set(meas) == set(pc.optimizers)
    assert np.shape(meas["adam_b0.9"]["escape_frac"]) == (len(pc.learning_rates), pc.seeds)
    assert max(np.ravel(meas["guard"]["escape_frac"])) == 0.0  # the guard starts inside and stays inside
    assert np.all(np.asarray(meas["adam_b0"]["stale_sum"]) == 0.0)  # β1 = 0: no stale momentum
    reward = np.asarray(meas["adam_b0.9"]["reward"])
    assert np.all((reward >= 0) & (reward <= 1)) and reward.max() > 0  # the graded reward is not all 0
    assert sum(np.asarray(meas[n]["pairs_sum"]).sum() for n in pc.optimizers) > 0  # tokens cross the bound
    own = [c for c in out.claims if c.claim.startswith("attribution check")]
    assert own and own[0].verdict == "reproduced"
    assert all(c.verdict == "inconclusive" for c in out.claims if c.kind == "experiment")  # 2 seeds < 5
    assert any("(checkpoint)" in c.claim for c in out.claims)
    table = (tmp_path / "ov" / "table.md").read_text()
    assert "rows are skipped" in table and "graded Countdown reward" in table and path in table
