"""Prop. 1: shared-prefix attribution through a real transformer, checked against separate gradients."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from analysis import prefix
from jgrpo import methods
from jgrpo.policies import TransformerConfig, make_transformer, nnx_logprob_fn

# Four completions; prefixes shared at depths 1 (all four), 2 (three), 4 (two); unequal lengths.
TOKENS = np.array(
    [
        [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 0, 0, 0], [1, 2, 5, 6, 7, 8, 0], [1, 3, 3, 0, 0, 0, 0]],
        [[4, 4, 4, 4, 4, 4, 4], [4, 4, 1, 0, 0, 0, 0], [5, 1, 2, 3, 0, 0, 0], [4, 4, 1, 2, 3, 4, 0]],
    ],
    np.int32,
)
MASK = (TOKENS > 0).astype(np.float32)
MASK[1, 0] = 1.0
PROMPT = np.array([[9, 10], [11, 9]], np.int32)


@pytest.fixture(scope="module")
def model():
    graphdef, params = make_transformer(jax.random.key(0), TransformerConfig.tiny(vocab=12, max_len=10))
    fn = nnx_logprob_fn(graphdef)
    return functools.partial(fn, prompt=jnp.asarray(PROMPT)), params


def assert_tree_close(a, b, rel=1e-5):
    """Relative L2 error of pytree a against b (float32 rounding shows per element, not in the norm)."""
    err = float(prefix.tree_norm(jax.tree.map(jnp.subtract, a, b)) / prefix.tree_norm(b))
    assert err <= rel, err


def make_batch(logprob_fn, params, rewards, seed=0):
    logp = np.asarray(logprob_fn(params, jnp.asarray(TOKENS)))
    rng = np.random.default_rng(seed)
    return jgrpo.GroupBatch(
        mask=MASK,
        logp_old=np.where(MASK > 0, logp - 0.05 * rng.normal(size=logp.shape), 0.0).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        logp_ref=np.where(MASK > 0, logp + 0.1 * rng.normal(size=logp.shape), 0.0).astype(np.float32),
        tokens=TOKENS,
    )


def test_prefix_tree_from_tokens():
    tree = prefix.prefix_tree(TOKENS, MASK)
    np.testing.assert_array_equal(tree.node_size[0, :, 0], [4, 4, 4, 4])
    np.testing.assert_array_equal(tree.node_size[0, :, 1], [3, 3, 3, 1])
    np.testing.assert_array_equal(tree.node_size[0, :, 3], [2, 2, 1, 0])
    np.testing.assert_array_equal(tree.node_size[0, :, 4], [1, 0, 1, 0])
    # depth 2 (t = 2): completions 0 and 1 share [1, 2, 3]; completion 2 has [1, 2, 5].
    np.testing.assert_array_equal(tree.node_size[0, :, 2], [2, 2, 1, 1])
    assert int(tree.representative[0, :, 0].sum()) == 1
    # The second group: [4, 4, ...] is shared by three completions at t = 0, 1; one starts with 5.
    np.testing.assert_array_equal(tree.node_size[1, :, 0], [3, 3, 1, 3])
    np.testing.assert_array_equal(tree.node_size[1, :, 2], [1, 2, 1, 2])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "gspo", "gcpo"])
def test_shared_equals_w_agg_times_separate_prefix_gradients(model, name):
    logprob_fn, params = model
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    spec = methods.get(name, eps_low=0.5, eps_high=0.5) if name == "gspo" else methods.get(name)
    dec = jax.jit(prefix.decompose, static_argnums=(0, 1))(spec, logprob_fn, params, batch)
    # total = jax.grad of -loss
    direct = jax.grad(lambda p: -jgrpo.loss(spec, logprob_fn(p, jnp.asarray(TOKENS)), batch)[0])(params)
    assert_tree_close(dec.total, direct)
    # shared + divergent = total
    assert_tree_close(jax.tree.map(jnp.add, dec.shared, dec.divergent), dec.total)
    # shared = sum over nodes of W_agg(node) * grad log pi(node token | prefix), one copy of each prefix.
    reps = np.argwhere(np.asarray(dec.tree.representative & dec.tree.shared))
    assert len(reps) >= 5
    w = np.asarray(dec.w_agg)

    def one_logp(p, b, i, t):
        return logprob_fn(p, jnp.asarray(TOKENS))[b, i, t]

    grad_one = jax.jit(jax.grad(one_logp))  # one compile: the token index is traced
    expected = jax.tree.map(jnp.zeros_like, params)
    for b, i, t in reps:
        g = grad_one(params, int(b), int(i), int(t))
        expected = jax.tree.map(lambda e, x, c=w[b, i, t]: e + c * x, expected, g)
    num = prefix.tree_norm(jax.tree.map(jnp.subtract, dec.shared, expected))
    den = prefix.tree_norm(expected)
    assert float(den) > 0
    assert float(num / den) <= 1e-5, float(num / den)


def _all_shared_w(spec, logprob_fn, params, rewards):
    batch = make_batch(logprob_fn, params, rewards)
    # first inner step: logp_old = current logp, ratio 1.
    logp = logprob_fn(params, jnp.asarray(TOKENS))
    batch = dataclasses.replace(batch, logp_old=np.asarray(logp))
    dec = prefix.decompose(spec, logprob_fn, params, batch)
    return np.asarray(dec.w_agg)[0, 0, 0], dec  # group 0, token 0: shared by all four


def test_fully_shared_prefix_zero_under_dr_grpo_nonzero_under_grpo(model):
    logprob_fn, params = model
    rewards = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]  # dyadic: the mean is exact
    w_dr, _ = _all_shared_w(methods.get("dr_grpo", beta=0.0), logprob_fn, params, rewards)
    w_grpo, dec = _all_shared_w(methods.get("grpo", beta=0.0), logprob_fn, params, rewards)
    assert w_dr == 0.0
    # grpo weights 1/(G |o_i| sigma): unequal lengths 7, 4, 6, 3 with A = +-0.5 leave a residue.
    lengths = MASK[0].sum(-1)
    expected = np.sum(np.array([0.5, -0.5, 0.5, -0.5]) / (4 * lengths * 0.5)) / 2  # / B = 2 prompts
    assert w_grpo == pytest.approx(expected, rel=1e-5)
    assert abs(w_grpo) > 1e-3
    assert float(prefix.tree_norm(dec.shared)) > 0


@pytest.mark.parametrize("name", [n for n in methods.names() if n != "gmpo"])
def test_prefix_debias_zeroes_fully_shared_prefix_for_every_preset(model, name):
    logprob_fn, params = model
    rewards = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]
    spec = methods.get(name, prefix_debias=True, beta=0.0)
    batch = make_batch(logprob_fn, params, rewards)
    logp = np.asarray(logprob_fn(params, jnp.asarray(TOKENS)))
    batch = dataclasses.replace(batch, logp_old=logp, entropy=np.full_like(logp, 0.5))  # < ln 2: GTPO keeps all
    coef = np.asarray(prefix.coefficients(spec, logp, batch))
    w = np.asarray(prefix.w_agg(jnp.asarray(coef), prefix.prefix_tree(TOKENS, MASK)))
    scale = np.abs(coef).max()
    assert scale > 0
    assert abs(w[0, 0, 0]) <= 1e-6 * scale, (name, w[0, 0, 0], scale)


def test_prefix_debias_keeps_divergent_weights_and_node_means_shared_ones():
    spec = methods.get("grpo", beta=0.0)
    debiased = spec.replace(prefix_debias=True)
    rng = np.random.default_rng(0)
    logp = np.where(MASK > 0, -rng.uniform(0.5, 2.0, size=MASK.shape), 0.0).astype(np.float32)
    batch = jgrpo.GroupBatch(
        mask=MASK, logp_old=logp, rewards=np.array([[1, 0, 1, 0], [0, 1, 1, 0.5]], np.float32), tokens=TOKENS
    )
    a0 = np.asarray(jgrpo.terms(spec, logp, batch).alpha)
    a1 = np.asarray(jgrpo.terms(debiased, logp, batch).alpha)
    tree = prefix.prefix_tree(TOKENS, MASK)
    same = np.asarray(tree.same_prefix)
    # independent loop: node mean of alpha for every token
    expected = np.zeros_like(a0)
    for b in range(2):
        for i in range(4):
            for t in range(TOKENS.shape[-1]):
                members = [j for j in range(4) if same[b, i, j, t]]
                if members:
                    expected[b, i, t] = np.mean([a0[b, j, t] for j in members])
    np.testing.assert_allclose(a1, expected, rtol=1e-6)
    divergent = np.asarray(tree.node_size) == 1
    np.testing.assert_array_equal(a1[divergent], a0[divergent])


def test_subsets_by_depth_sum_to_shared(model):
    logprob_fn, params = model
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    spec = methods.get("grpo")
    tree = prefix.prefix_tree(TOKENS, MASK)
    subsets = prefix.depth_subsets(tree, TOKENS.shape[-1])
    dec = prefix.decompose(spec, logprob_fn, params, batch, subsets=subsets)
    assert_tree_close(jax.tree.map(lambda x: x.sum(0), dec.subsets), dec.shared)


def test_decompose_needs_tokens(model):
    logprob_fn, params = model
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    with pytest.raises(ValueError, match="needs batch.tokens"):
        prefix.decompose(methods.get("grpo"), logprob_fn, params, dataclasses.replace(batch, tokens=None))
