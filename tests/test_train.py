"""The GRPO loop (jgrpo.train): metrics, optimizers, data parallelism, checkpoint and resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.shared.metrics import prefix_metrics
from jgrpo import methods, policies, tasks
from jgrpo import train as jtrain
from tests.test_tasks import COMPILE_OPTIONS as FAST
from tests.test_tasks import WARMUP_BATCH, WARMUP_STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough for CPU tests; the warm-up settings match tests/test_tasks.py (its compile is reused).
CONFIG = jtrain.TrainConfig(
    method="grpo",
    steps=4,
    checkpoint_every=2,
    warmup_steps=WARMUP_STEPS,
    warmup_batch=WARMUP_BATCH,
    prompts_per_step=8,
    group_size=4,
    inner_steps=2,
    learning_rate=3e-4,
)
EXPECTED_METRICS = {
    "reward_mean",
    "accuracy",
    "valid_frac",
    "mixed_groups",
    "length_mean",
    "length_correct",
    "length_incorrect",
    "filler_mean",
    "entropy_mean",
    "clip_frac_high",
    "clip_frac_low",
    "kl",
    "grad_norm_first",
    "objective_first",
    "objective_last",
    "objective_after",
    "ratio_min_after",
    "ratio_max_after",
    "logp_sampler_gap",
    "escape_frac",
    "escape_frac_high",
    "escape_frac_low",
    "escape_max",
}
# Added by the Prop. 1 metrics hook (experiments.shared.metrics.prefix_metrics; jgrpo never imports analysis).
PREFIX_METRICS = {"shared_all_frac", "wagg_shared_all_abs", "wagg_shared_all_mean", "wagg_shared_abs", "coef_abs_mean"}
# NaN when the batch has no such completion / node (documented).
MAYBE_NAN = {"length_correct", "length_incorrect", "wagg_shared_all_abs", "wagg_shared_all_mean"}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _probe_logp(result: jtrain.TrainResult) -> np.ndarray:
    """log pi of fixed correct completions of fixed prompts under the trained policy [8, 1, T]."""
    prompt, answers = tasks.sample_prompts(CONFIG.task, jax.random.key(99), 8)
    tokens, _ = tasks.correct_completions(CONFIG.task, jax.random.key(98), answers)
    logits_fn = policies.nnx_logits_fn(result.graphdef)
    logp, _ = jax.jit(jtrain.policy_logprob, static_argnums=0)(logits_fn, result.params, tokens[:, None], prompt, 1.0)
    return np.asarray(logp)


@pytest.fixture(scope="session")  # session: xdist interleaves modules on a worker, a module fixture would rerun
def full_run(tmp_path_factory, worker_id):
    """(run directory, TrainResult) of CONFIG's 4 steps, trained once per test session.

    Under xdist each worker has its own session: the first worker to get here trains into a directory
    the workers share (this session's base temp), the others wait for it and load the finished run
    (``jtrain.train`` on a finished directory runs no step: test_resume_of_a_finished_run...).
    """
    if worker_id == "master":
        out, first = tmp_path_factory.mktemp("full"), True
    else:
        shared = tmp_path_factory.getbasetemp().parent  # one per session, shared by its workers
        out = shared / "full_run"
        try:
            os.close(os.open(shared / "full_run.claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            first = True
        except FileExistsError:
            first = False
    if first:
        seen = []
        try:
            result = jtrain.train(
                CONFIG, out, on_step=lambda s, m: seen.append(s), compiler_options=FAST, metrics_fn=prefix_metrics
            )
        finally:
            if worker_id != "master":
                (out.parent / "full_run.done").write_text("ok" if seen == [0, 1, 2, 3] else "failed")
        assert seen == [0, 1, 2, 3]
        return out, result
    done = out.parent / "full_run.done"
    for _ in range(6000):  # 10 min
        if done.exists():
            break
        time.sleep(0.1)
    assert done.exists() and done.read_text() == "ok", "the worker that trained full_run failed or timed out"
    result = jtrain.train(CONFIG, out, on_step=lambda s, m: pytest.fail("no step should run"), compiler_options=FAST)
    assert result.step == 4
    return out, result


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_validation():
    c = jtrain.TrainConfig()
    assert c.max_len == c.task.max_len and c.model.vocab == tasks.VOCAB_SIZE
    assert c.model.max_len == c.task.prompt_len + c.max_len
    assert c.spec == methods.get("grpo") and c.needs_ref
    hash(c)
    spec = jtrain.TrainConfig(method="dapo", method_overrides=(("eps_high", 0.3),)).spec
    assert spec.name == "dapo" and spec.eps_high == 0.3
    assert not jtrain.TrainConfig(method=methods.get("grpo", beta=0.0)).needs_ref
    with pytest.raises(ValueError, match="TrainConfig.optimizer must be one of"):
        jtrain.TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="TrainConfig.group_size must be an int >= 2"):
        jtrain.TrainConfig(group_size=1)
    with pytest.raises(ValueError, match="TrainConfig.temperature"):
        jtrain.TrainConfig(temperature=0.0)
    with pytest.raises(ValueError, match="unknown MethodSpec field"):
        jtrain.TrainConfig(method_overrides=(("not_a_field", 1),))
    with pytest.raises(ValueError, match="unknown method name"):
        jtrain.TrainConfig(method="ppo")
    with pytest.raises(ValueError, match="model.vocab must be the task's vocab_size 16"):
        jtrain.TrainConfig(model=policies.TransformerConfig.tiny(vocab=32, max_len=64))
    with pytest.raises(ValueError, match=r"model.max_len must be >= prompt_len \+ max_len = 5 \+ 11 = 16"):
        jtrain.TrainConfig(model=policies.TransformerConfig.tiny(vocab=16, max_len=12))
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        jtrain.train({"steps": 1})


def test_policy_logprob_matches_nnx_logprob_at_temperature_one():
    model = policies.TransformerConfig.tiny(vocab=16, max_len=16)
    graphdef, params = policies.make_transformer(jax.random.key(3), model)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 16, size=(2, 3, 11)).astype(np.int32)
    prompt = rng.integers(0, 16, size=(2, 5)).astype(np.int32)
    fn = jax.jit(jtrain.policy_logprob, static_argnums=0)
    logp, ent = fn(policies.nnx_logits_fn(graphdef), params, tokens, prompt, 1.0)
    ref_logp, ref_ent = policies.nnx_logprob_and_entropy_fn(graphdef)(params, tokens, prompt)
    np.testing.assert_allclose(logp, ref_logp, atol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-5)
    hot, _ = fn(policies.nnx_logits_fn(graphdef), params, tokens, prompt, 2.0)
    assert not np.allclose(hot, logp)


@pytest.mark.parametrize("name", jtrain.OPTIMIZERS)
def test_optimizers_take_the_extra_args(name):
    config = CONFIG.replace(optimizer=name, momentum=0.9 if name == "sgd" else 0.0, weight_decay=0.01)
    opt = jtrain.make_optimizer(config)
    params = {"w": jnp.zeros(3)}  # ratios exp(w) = 1: inside the trust region
    ratio_fn = lambda p: (jnp.exp(p["w"]), jnp.array([1.0, -1.0, 1.0]))  # noqa: E731

    @jax.jit
    def run(params):
        state = opt.init(params)
        for k in range(3):
            grads = {"w": jnp.array([-1.0, 1.0, -0.5])}
            updates, state = opt.update(
                grads, state, params, new_batch=k == 0, clip_fraction=jnp.float32(0.5), ratio_fn=ratio_fn
            )
            params = optax.apply_updates(params, updates)
        return params, state

    new, state = run(params)
    assert np.all(np.isfinite(new["w"])) and not np.allclose(new["w"], params["w"])
    flat = {type(s).__name__: s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "_fields"))}
    if name in ("adam_with_reset", "adam_rel"):
        assert int(flat["ResetState"].num_resets) == 1
    if name == "gated_adam":
        assert float(flat["GatedAdamState"].gate) == 0.5
    if name == "guarded_adamw":
        assert "TrustRegionGuardState" in flat


def test_data_mesh_and_divisibility_errors():
    mesh = jtrain.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    with pytest.raises(ValueError, match=r"mesh must have the axes \('data',\) or \('data', 'fsdp'\)"):
        jtrain.train(CONFIG, mesh=jax.make_mesh((1,), ("batch",)))
    mesh2 = jtrain.make_mesh(fsdp=1)
    assert mesh2.axis_names == ("data", "fsdp") and mesh2.size == jax.device_count()
    with pytest.raises(ValueError, match="data \\* fsdp = 1 \\* 2 must equal the number of devices"):
        jtrain.make_mesh(fsdp=2, data=1)
    # Divisibility is checked against the mesh size (8 devices in the subprocess test below).
    with pytest.raises(ValueError, match="prompts_per_step = 12 must be divisible by the number of devices"):
        jtrain._check_divisible("TrainConfig.prompts_per_step", 12, _FakeMesh(data=8))
    with pytest.raises(ValueError, match=r"batch axes \('data', 'fsdp'\) \(8\)"):
        jtrain._check_divisible("TrainConfig.prompts_per_step", 12, _FakeMesh(data=2, fsdp=4))
    jtrain._check_divisible("TrainConfig.prompts_per_step", 16, _FakeMesh(data=2, fsdp=4))


class _FakeMesh:
    def __init__(self, **shape):
        self.shape = shape


def test_fsdp_spec_splits_the_largest_divisible_dimension():
    from jax.sharding import PartitionSpec as Spec

    assert jtrain.fsdp_spec((896, 4864), 4) == Spec(None, "fsdp")
    assert jtrain.fsdp_spec((4864, 896), 4) == Spec("fsdp", None)
    assert jtrain.fsdp_spec((24, 896, 4864), 4) == Spec(None, None, "fsdp")  # stacked layers: never the layer axis
    assert jtrain.fsdp_spec((24, 896, 4862), 4) == Spec(None, "fsdp", None)  # 4862 % 4 != 0
    assert jtrain.fsdp_spec((8, 3, 5), 4) == Spec()  # only the layer axis divides: replicated
    assert jtrain.fsdp_spec((151936, 896), 8) == Spec("fsdp", None)
    assert jtrain.fsdp_spec((), 4) == Spec() and jtrain.fsdp_spec((7,), 4) == Spec()
    assert jtrain.fsdp_spec((2,), 4) == Spec()  # smaller than the axis
    assert jtrain.fsdp_spec((896, 4864), 1) == Spec()


# ----------------------------------------------------------------------------- the loop


def test_training_steps_give_finite_metrics(full_run):
    _, result = full_run
    assert result.step == 4 and len(result.history) == 4
    for s, metrics in enumerate(result.history):
        assert set(metrics) == EXPECTED_METRICS | PREFIX_METRICS
        for k, v in metrics.items():
            assert isinstance(v, float)
            assert math.isfinite(v) or k in MAYBE_NAN, (s, k, v)
        for k in ("reward_mean", "accuracy", "valid_frac", "mixed_groups", "escape_frac", "shared_all_frac"):
            assert 0.0 <= metrics[k] <= 1.0, (s, k)
        assert metrics["escape_frac"] <= metrics["escape_frac_high"] + metrics["escape_frac_low"] + 1e-6
        assert metrics["escape_max"] >= 0 and metrics["ratio_min_after"] <= metrics["ratio_max_after"]
        assert metrics["logp_sampler_gap"] < 1e-4  # pi_old recomputed == sampling policy
        assert 1.0 <= metrics["length_mean"] <= CONFIG.max_len
    # The warm-up leaves a policy that is right some of the time: mixed groups exist.
    assert max(m["mixed_groups"] for m in result.history) > 0
    # Prop. 4: at the first inner step of the first batch (pi = pi_old = pi_ref) GRPO's J is 0.
    assert abs(result.history[0]["objective_first"]) < 1e-6
    assert result.history[0]["kl"] >= 0
    # pi_ref stays the warmed-up policy; the policy moved.
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), result.params, result.ref_params)
    assert max(jax.tree.leaves(moved)) > 0


def test_kill_and_resume_matches_uninterrupted_run(full_run, tmp_path):
    _, full = full_run

    class Killed(Exception):
        pass

    def kill_at_2(step, metrics):
        if step == 2:  # after step 2 ran; the last checkpoint holds steps 0..1
            raise Killed

    with pytest.raises(Killed):
        jtrain.train(CONFIG, tmp_path, on_step=kill_at_2, compiler_options=FAST, metrics_fn=prefix_metrics)
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert saved == [2]

    resumed_steps = []
    result = jtrain.train(
        CONFIG, tmp_path, on_step=lambda s, m: resumed_steps.append(s), compiler_options=FAST, metrics_fn=prefix_metrics
    )
    assert resumed_steps == [2, 3] and result.step == 4
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(result.opt_state), jax.tree.leaves(full.opt_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(result.history) == 4
    for ma, mb in zip(result.history, full.history, strict=True):
        assert all(_same(ma[k], mb[k]) for k in EXPECTED_METRICS), (ma, mb)


@pytest.mark.slow  # make test-all: a second full training run
def test_resume_of_a_finished_run_and_of_another_config(full_run):
    out, full = full_run
    again = jtrain.train(CONFIG, out, on_step=lambda s, m: pytest.fail("no step should run"), compiler_options=FAST)
    assert again.step == 4 and len(again.history) == 4
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="written by another config"):
        jtrain.train(CONFIG.replace(learning_rate=1e-3), out)


_EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax
    assert jax.device_count() == 8, jax.devices()
    from tests import test_train as t
    from jgrpo import train as jtrain
    try:
        jtrain.train(t.CONFIG.replace(prompts_per_step=12))
        raise SystemExit("B = 12 on 8 devices did not raise")
    except ValueError as e:
        assert "must be divisible by the number of devices" in str(e), e
    mesh = jtrain.make_mesh(data=2, fsdp=4)
    result = jtrain.train(t.CONFIG, mesh=mesh, compiler_options=t.FAST, metrics_fn=t.prefix_metrics)
    shardings = [x.sharding for x in jax.tree.leaves(result.params) + jax.tree.leaves(result.opt_state)]
    assert all(sh.mesh.size == 8 for sh in shardings)
    split = [sh for sh in shardings if "fsdp" in sh.spec]
    assert len(split) >= len(jax.tree.leaves(result.params)), "params and Adam moments are FSDP-sharded"
    big = max(jax.tree.leaves(result.params), key=lambda x: x.size)
    assert "fsdp" in big.sharding.spec and big.addressable_shards[0].data.size == big.size // 4
    out = {"history": result.history, "logp": t._probe_logp(result).tolist()}
    out["hf_step"] = t._hf_steps(jtrain.make_mesh(data=2, fsdp=4), remat=True)
    out["hf_step_one"] = t._hf_steps(jtrain.make_mesh(fsdp=1, devices=jax.devices()[:1]), remat=False)
    json.dump(out, sys.stdout)
    """
)


# Functions of the sampled tokens only: equal when both runs drew the same completions.
SAMPLE_METRICS = {
    "reward_mean",
    "accuracy",
    "valid_frac",
    "mixed_groups",
    "length_mean",
    "length_correct",
    "length_incorrect",
    "filler_mean",
    "shared_all_frac",
}


def _hf_steps(mesh, *, remat: bool, steps: int = 2) -> dict:
    """Two GRPO steps (SGD with momentum, linear in the gradient) of a tiny Qwen2 via make_train_step on ``mesh``."""
    import jgrpo
    import jgrpo.models as M
    from tests.model_utils import random_params

    cfg = M.ModelConfig.tiny("qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, head_dim=8, remat=remat)
    params = random_params(cfg, 0, std=0.2)
    b, g, t, p = 8, 2, 6, 3
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=(b, g, t)).astype(np.int32)
    prompt = rng.integers(0, 64, size=(b, p)).astype(np.int32)
    lengths = rng.integers(1, t + 1, size=(b, g))
    mask = (np.arange(t) < lengths[..., None]).astype(np.float32)
    logprob = M.logprob_fn(M.model_fn(cfg))
    logp_old = np.asarray(jax.jit(M.logprob_fn(M.model_fn(cfg.replace(remat=False))))(params, tokens, prompt))
    batch = jgrpo.GroupBatch(
        mask=mask, logp_old=logp_old - 0.05, rewards=rng.integers(0, 2, size=(b, g)).astype(np.float32), tokens=tokens
    )
    opt = optax.sgd(0.5, momentum=0.9)
    step = jtrain.make_train_step(logprob, methods.get("grpo", beta=0.0), opt, mesh)
    params = jtrain._place(params, mesh)
    state = jtrain._place(opt.init(params), mesh)
    losses = []
    for _ in range(steps):
        params, state, metrics = step(params, state, batch, prompt)
        losses.append(float(metrics["loss"]))
    w_up = params["layers"]["w_up"]
    return {
        "loss": losses,
        "params": {k: np.asarray(v).tolist() for k, v in params["layers"].items() if k in ("wq", "w_up", "bk")},
        "spec": str(w_up.sharding.spec),
        "shard_size": int(w_up.addressable_shards[0].data.size),
        "size": int(w_up.size),
    }


def test_eight_virtual_devices_match_one_device(full_run):
    """Same config on 8 virtual CPU devices (a data=2 x fsdp=4 mesh, subprocess) vs this process's run.

    The sampled completions are identical (threefry is partitionable, so random bits do not depend on the
    sharding). Float metrics agree to float32 rounding, accumulated over the steps: measured (grpo, lr 3e-4,
    4 steps) at most 7.5e-5 relative on metrics above 1e-3 and 1.5e-5 on the final log-probs. (Before the
    transformer lost its q/k/v bias, the key bias -- an exact null direction of softmax -- carried pure
    rounding noise that Adam's first step, ~lr * sign(g), turned into +-lr moves: differences were ~3e-3.)
    """
    _, full = full_run
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    other = json.loads(proc.stdout)
    assert len(other["history"]) == len(full.history)
    for s, (a, b) in enumerate(zip(full.history, other["history"], strict=True)):
        for k in EXPECTED_METRICS | PREFIX_METRICS:
            if k in SAMPLE_METRICS:
                assert _same(a[k], b[k]), (s, k, a[k], b[k])
            elif math.isnan(a[k]):
                assert math.isnan(b[k]), (s, k)
            else:
                assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), (s, k, a[k], b[k])
    # The trained policies are the same function up to that noise.
    np.testing.assert_allclose(np.asarray(other["logp"]), _probe_logp(full), atol=1e-4)
    # make_train_step on a Hugging Face-architecture model: FSDP over 4 x data over 2 (with remat) vs one device.
    sharded, one = other["hf_step"], other["hf_step_one"]
    assert "fsdp" in sharded["spec"] and sharded["shard_size"] * 4 == sharded["size"]
    assert one["shard_size"] == one["size"]
    np.testing.assert_allclose(sharded["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    assert abs(one["loss"][1] - one["loss"][0]) > 1e-4  # the step moved the policy
    for k, v in one["params"].items():
        a, b = np.asarray(sharded["params"][k]), np.asarray(v)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max(), err_msg=k)
