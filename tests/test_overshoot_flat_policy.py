"""analysis.overshoot.flat_policy: the parameter layout of vmapped inner-loop sweeps.

The flat layout must change nothing but the layout: the same log-probabilities, the
gradient reshaped, and (for an elementwise optimizer) the same inner-loop trajectory
as the policy on its own ``[T, V+1, V]`` table. The gradient on the flat leaf is also checked
against the closed form (a float64 NumPy loop over the tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrpo
from analysis import overshoot
from jgrpo.policies import tabular_init, tabular_logprob


def _problem(vocab=4, g=4, t=5, seed=0):
    rng = np.random.default_rng(seed)
    params = tabular_init(jax.random.key(seed), vocab=vocab, max_len=t)
    tokens = jnp.asarray(rng.integers(0, vocab, size=(g, t)), jnp.int32)
    mask = jnp.asarray((np.arange(t) < rng.integers(2, t + 1, size=(g, 1))).astype(np.float32))
    rewards = jnp.asarray(np.r_[0.0, 1.0, rng.integers(0, 2, size=g - 2)].astype(np.float32))
    batch = jgrpo.GroupBatch(mask=mask, logp_old=tabular_logprob(params, tokens), rewards=rewards, tokens=tokens)
    return params, tokens, batch


def test_flat_policy_same_logprob_and_the_closed_form_gradient():
    # d sum_t w_t logp_t / d logits[t, c, v] = sum of w_t (1{v = y_t} - pi(v | t, c)) over tokens in cell (t, c),
    # written here as a float64 NumPy loop over the tokens, independent of the library
    params, tokens, batch = _problem(vocab=3, g=3, t=4, seed=1)
    flat = overshoot.flat_policy(tabular_logprob, params)
    assert flat.params["logits"].shape == (params["logits"].size,)
    np.testing.assert_array_equal(flat.unflatten(flat.params)["logits"], params["logits"])
    w = np.random.default_rng(2).normal(size=tokens.shape).astype(np.float32)

    def f(p):
        logp = flat.logprob_fn(p, tokens, None)
        return jnp.sum(w * logp), logp

    grad, logp = jax.grad(f, has_aux=True)(flat.params)
    np.testing.assert_array_equal(logp, batch.logp_old)  # batch.logp_old = tabular_logprob(params, tokens)
    table = np.asarray(params["logits"], np.float64)
    vocab = table.shape[-1]
    ref = np.zeros_like(table)
    for i, row in enumerate(np.asarray(tokens)):
        for t, y in enumerate(row):
            c = vocab if t == 0 else row[t - 1]
            pi = np.exp(table[t, c] - table[t, c].max())
            ref[t, c] += w[i, t] * (np.eye(vocab)[y] - pi / pi.sum())
    np.testing.assert_allclose(np.asarray(grad["logits"]), ref.reshape(-1), rtol=0, atol=1e-6)
    assert np.count_nonzero(ref) > 0  # some cell is visited: the check is not on zeros alone


def test_flat_policy_keeps_a_pytree_of_several_leaves():
    params = {"a": jnp.arange(6.0).reshape(2, 3), "b": (jnp.ones((2, 2, 2)), jnp.float32(3.0))}
    seen = []
    flat = overshoot.flat_policy(lambda p, tok, prompt: seen.append(p) or tok * 0.0, params)
    assert jax.tree.map(jnp.shape, flat.params) == {"a": (6,), "b": ((8,), (1,))}
    back = flat.unflatten(flat.params)
    assert jax.tree.map(jnp.shape, back) == jax.tree.map(jnp.shape, params)
    flat.logprob_fn(flat.params, jnp.zeros((2, 3)), None)
    assert jax.tree.map(jnp.shape, seen[0]) == jax.tree.map(jnp.shape, params)


@pytest.mark.slow  # ~8 s of CPU compiling two simulate_group programs; the bench's sweep checks it at every run
def test_flat_policy_inner_loop_follows_the_same_trajectory_under_adam():
    params, _, batch = _problem()
    spec = jgrpo.methods.get("grpo", beta=0.0)
    opt = optax.adam(0.3, b1=0.9, b2=0.95)
    flat = overshoot.flat_policy(tabular_logprob, params)
    a = jax.jit(lambda p: overshoot.simulate_group(spec, tabular_logprob, p, batch, opt, 6))(params)
    b = jax.jit(lambda p: overshoot.simulate_group(spec, flat.logprob_fn, p, batch, opt, 6))(flat.params)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b.update_norm, a.update_norm, rtol=1e-6)
    np.testing.assert_allclose(flat.unflatten(b.final_params)["logits"], a.final_params["logits"], atol=1e-6)
    np.testing.assert_allclose(b.final_aux["escape"].frac, a.final_aux["escape"].frac)
    assert float(a.final_aux["escape"].frac) > 0  # the trajectory goes past the clip: a non-trivial comparison


def test_flat_policy_rejects_a_non_callable():
    with pytest.raises(TypeError, match="logprob_fn must be callable"):
        overshoot.flat_policy("tabular", {"logits": jnp.zeros((2, 3, 2))})
