"""One policy interface for every analysis: ``logprob_fn(params, tokens, prompt) -> logp`` with ``prompt=``.

The prompt reaches the policy (a prompt-conditioned tabular policy gives other log-probabilities for other
prompts, so a dropped or misrouted prompt changes the results), None works for policies that ignore it, a
wrong output shape is a clear error, and jgrpo itself imports neither ``analysis`` nor ``experiments``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrpo
from analysis import overshoot, proxy
from analysis import reward_scale as rs
from jgrpo import policies as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, G, T, V, K = 2, 4, 3, 3, 3  # K prompt ids of the prompt-conditioned tabular policy


@functools.cache
def _group(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = P.tabular_prompt_init(jax.random.key(seed), prompts=K, vocab=V, max_len=T, scale=1.0)
    tokens = rng.integers(0, V, size=(B, G, T)).astype(np.int32)
    prompt = np.array([0, 2], np.int32)  # [B]: two different tables
    mask = np.ones((B, G, T), np.float32)
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], np.float32)
    logp = P.tabular_prompt_logprob(params, tokens, prompt)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=np.asarray(logp), rewards=rewards, tokens=tokens)
    return params, batch, prompt


def test_simulate_group_passes_the_prompt_to_the_policy():
    params, batch, prompt = _group()
    spec = jgrpo.methods.get("dapo")
    lr, steps = 0.3, 2
    opt = optax.sgd(lr)
    run = jax.jit(
        lambda p, b, pr: overshoot.simulate_group(spec, P.tabular_prompt_logprob, p, b, opt, steps, prompt=pr)
    )
    got = run(params, batch, prompt)
    # Reference: plain gradient descent on jgrpo.loss of the same policy with the prompt closed over.
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda q: jgrpo.loss(spec, P.tabular_prompt_logprob(q, batch.tokens, prompt), batch)[0])
    )
    theta, losses = params, []
    for _ in range(steps):
        value, grad = value_and_grad(theta)
        theta, losses = jax.tree.map(lambda x, g: x - lr * g, theta, grad), losses + [float(value)]
    np.testing.assert_allclose(np.asarray(got.final_params["logits"]), np.asarray(theta["logits"]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.loss), losses, rtol=1e-6, atol=1e-7)
    assert float(got.final_aux["escape"].frac) >= 0.0
    # Another prompt is another policy: at step 0 its ratios are not 1, so the loss differs (the prompt is used).
    other = run(params, batch, prompt[::-1])
    assert abs(float(other.loss[0]) - float(got.loss[0])) > 1e-4


def test_grpo_loss_fn_is_jgrpo_loss_of_the_policy_with_escape_statistics():
    params, batch, prompt = _group()
    spec = jgrpo.methods.get("grpo", eps_high=0.05, eps_low=0.05, beta=0.0)
    moved = jax.tree.map(lambda x: x + 0.4 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), params)  # ratios ≠ 1
    loss_fn = overshoot.grpo_loss_fn(spec, P.tabular_prompt_logprob, batch, prompt=prompt)
    (value, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(moved)
    direct = lambda q: jgrpo.loss(spec, P.tabular_prompt_logprob(q, batch.tokens, prompt), batch)[0]  # noqa: E731
    np.testing.assert_allclose(float(value), float(direct(moved)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad["logits"]), np.asarray(jax.grad(direct)(moved)["logits"]), atol=1e-7)
    ratio = np.exp(np.asarray(P.tabular_prompt_logprob(moved, batch.tokens, prompt)) - np.asarray(batch.logp_old))
    esc = overshoot.escape(ratio, aux["advantages"], batch.mask, eps_low=0.05, eps_high=0.05)
    assert float(esc.frac) > 0  # the clip is active somewhere at this θ
    for name in esc._fields:
        np.testing.assert_allclose(float(getattr(aux["escape"], name)), float(getattr(esc, name)), rtol=1e-5)
    assert float(aux["clip_fraction"]) == pytest.approx(float(aux["clip_frac_high"] + aux["clip_frac_low"]))
    ratio_fn = overshoot.group_ratio_fn(P.tabular_prompt_logprob, batch, aux["advantages"], prompt=prompt)
    np.testing.assert_allclose(np.asarray(ratio_fn(moved)[0]), ratio, rtol=1e-5)


def test_loss_and_ratio_fns_check_the_policy_output():
    params, batch, prompt = _group()
    spec = jgrpo.methods.get("grpo")

    def per_completion(p, tokens, pr):  # [B, G]: a sequence log-prob, not per token
        return jnp.sum(P.tabular_prompt_logprob(p, tokens, pr), -1)

    with pytest.raises(ValueError, match=r"grpo_loss_fn: logprob_fn\(params, tokens, prompt\) must return logp"):
        overshoot.grpo_loss_fn(spec, per_completion, batch, prompt=prompt)(params)
    ratio_fn = overshoot.group_ratio_fn(P.tabular_prompt_logprob, batch, jgrpo.advantages(spec, batch), prompt=prompt)
    ratio, adv, _ = ratio_fn(params)
    np.testing.assert_allclose(np.asarray(ratio), 1.0, atol=1e-6)  # π = π_old: the prompt reached the policy
    assert adv.shape == (B, G, 1)
    with pytest.raises(TypeError, match="logprob_fn must be callable"):
        overshoot.grpo_loss_fn(spec, "not a function", batch)


def test_reward_scale_moves_the_prompt_with_its_group():
    """Reordered floor runs permute prompts with their groups: with a prompt-conditioned policy the floor stays at
    rounding level only if the prompt moved too (a prompt left in place would evaluate the other table)."""
    params, batch, prompt = _group()
    spec = jgrpo.methods.get("dr_grpo", beta=0.0)
    perms = (np.array([[1, 0]], np.int32), np.array([[[1, 0, 3, 2], [2, 3, 0, 1]]], np.int32))
    d = rs.trajectory_deviation(
        spec, P.tabular_prompt_logprob, params, batch, np.array([2.0], np.float32), prompt=prompt, num_steps=2,
        optimizer="sgd", hyper=rs.OptimizerHyper(learning_rate=0.1), permutations=perms, ulp_floor=False,
    )  # fmt: skip
    assert float(d.noise_floor) < 1e-5, float(d.noise_floor)
    assert float(d.displacement[-1]) > 1e-3  # the runs moved
    # dr_grpo under SGD is 1-homogeneous in φ (Prop. 2): φ = 2 doubles the step, far above the floor.
    assert float(d.max_rel_param_dev[0]) > 0.5
    with pytest.raises(ValueError, match=r"prompt must have shape \[B, \.\.\.\]"):
        rs.trajectory_deviation(spec, P.tabular_prompt_logprob, params, batch, [2.0], prompt=prompt[:1], num_steps=1)


def test_reward_scale_without_a_prompt_equals_an_ignored_prompt():
    plain = P.tabular_init(jax.random.key(2), vocab=V, max_len=T)
    _, batch, _ = _group()
    batch = batch.replace(logp_old=np.asarray(P.tabular_logprob(plain, batch.tokens)))
    spec = jgrpo.methods.get("dr_grpo", beta=0.0)
    kw = dict(num_steps=2, optimizer="sgd", hyper=rs.OptimizerHyper(learning_rate=0.1), ulp_floor=False)
    a = rs.trajectory_deviation(spec, P.tabular_logprob, plain, batch, [2.0], **kw)
    b = rs.trajectory_deviation(spec, P.tabular_logprob, plain, batch, [2.0], prompt=np.zeros((B, 1), np.int32), **kw)
    np.testing.assert_array_equal(np.asarray(a.param_dev), np.asarray(b.param_dev))


def test_policy_snis_gain_is_snis_gain_of_the_policy():
    params, held, prompt = _group()
    noise = jax.random.normal(jax.random.key(9), params["logits"].shape)
    new = {"logits": params["logits"] + noise}
    got = proxy.policy_snis_gain(P.tabular_prompt_logprob, new, held, prompt=prompt)
    logp = P.tabular_prompt_logprob(new, held.tokens, prompt)
    want = proxy.snis_gain(logp, held.logp_old, held.rewards, held.mask)
    np.testing.assert_array_equal(np.asarray(got.gain), np.asarray(want.gain))
    assert np.any(np.abs(np.asarray(got.gain)) > 1e-4)  # the update changed the estimate
    with pytest.raises(ValueError, match="held_out.tokens"):
        proxy.policy_snis_gain(P.tabular_prompt_logprob, new, held.replace(tokens=None), prompt=prompt)


_IMPORTS = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import jgrpo
    names = ["jgrpo"]
    for pkg in ("jgrpo", "jgrpo.models", "jgrpo.tasks", "jgrpo.train"):
        mod = importlib.import_module(pkg)
        names += [pkg + "." + m.name for m in pkgutil.iter_modules(mod.__path__)]
    for name in names:
        importlib.import_module(name)
    bad = sorted(m for m in sys.modules if m.split(".")[0] in ("analysis", "experiments"))
    assert not bad, bad
    assert "jgrpo.train.loop" in sys.modules and "jgrpo.models.policy" in sys.modules
    print(len(names))
    """
)


def test_jgrpo_imports_neither_analysis_nor_experiments():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _IMPORTS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip()) >= 20  # every submodule was imported
