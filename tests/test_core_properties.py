"""Property tests with structured inputs (issue 9 §7), against tests/reference.py and brute-force loops.

Hypothesis draws the batch shape (B, G, T), every completion length (empty ones
included), rewards from {0, 0.5, 1} (ties and all-equal groups arise often),
log-ratios inside and outside the clip ranges, and a preset in any flavour with
MethodSpec fields drawn on top (aggregation, scope, clip range, dual clip, KL
estimator and coefficient, TRL's options). Every draw's loss and gradient are
compared with the float64 reference. The shapes come from a small set so that
eager op compiles are reused across examples.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jgrpo
from analysis.prefix import prefix_tree
from jgrpo import methods
from jgrpo.weights import conflict_tokens
from tests.reference import conflict_tokens as reference_conflict_tokens
from tests.reference import reference_coefficients, reference_loss

SHAPES = [(1, 2, 3), (2, 3, 4), (2, 4, 5)]
PRESETS = [(n, f) for n in methods.names() for f in methods.flavors(n)]


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@st.composite
def batches(draw, shape=None):
    b, g, t = draw(st.sampled_from(SHAPES)) if shape is None else shape
    lengths = np.array(draw(st.lists(st.integers(0, t), min_size=b * g, max_size=b * g))).reshape(b, g)
    rewards = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=b * g, max_size=b * g)))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([1e-5, 0.1, 0.5]))
    rng = np.random.default_rng(seed)
    mask = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.float64)
    x = spread * rng.normal(size=(b, g, t))
    x_ref = 0.5 * rng.normal(size=(b, g, t))
    logp = -rng.uniform(0.05, 3.0, size=(b, g, t)) + np.minimum(0.0, np.minimum(x, -x_ref))
    tokens = rng.integers(0, 3, size=(b, g, t)).astype(np.int32)
    tokens[..., 0] = 1  # a first token shared by the group: prefix nodes and GTPO conflicts arise
    return dict(
        logp=logp,
        mask=mask,
        logp_old=logp - x,
        rewards=rewards.reshape(b, g),
        logp_ref=logp + x_ref,
        tokens=tokens,
        entropy=rng.uniform(0.0, 1.5, size=(b, g, t)),
    )


# Fields valid on every preset, with values drawn on top of the preset's own.
_OVERRIDES = {
    "agg": st.sampled_from([a.value for a in methods.Agg]),
    "scope": st.sampled_from([s.value for s in methods.Scope]),
    "eps_low": st.sampled_from([0.1, 0.2, 0.4]),
    "eps_high": st.sampled_from([0.1, 0.28, 0.6]),
    "dual_clip": st.sampled_from([None, 3.0]),
    "kl": st.sampled_from([k.value for k in methods.KLEstimator]),
    "beta": st.sampled_from([0.0, 0.04, 0.3]),
    "std_ddof": st.sampled_from([0, 1]),
    "top_entropy_quantile": st.sampled_from([1.0, 0.5]),
    "entropy_coef": st.sampled_from([0.0, 0.05]),
}


@st.composite
def specs(draw):
    name, flavor = draw(st.sampled_from(PRESETS))
    keys = draw(st.lists(st.sampled_from(sorted(_OVERRIDES)), max_size=3, unique=True))
    overrides = {k: draw(_OVERRIDES[k]) for k in keys}
    if name == "gtpo":
        overrides["entropy_threshold"] = draw(st.sampled_from([None, math.log(2.0)]))
    return methods.get(name, flavor=flavor, **overrides)


def _fields(spec):
    return {
        f.name: (v.value if isinstance(v := getattr(spec, f.name), enum.Enum) else v) for f in dataclasses.fields(spec)
    }


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(spec, logp, batch):
    return jax.value_and_grad(lambda lp: jgrpo.loss(spec, lp, batch)[0])(logp)


def _lib(spec, data):
    """The library's loss and d/dlogp in float64: one jitted program per drawn spec (faster than eager dispatch)."""
    with jax.enable_x64(True):
        cast = {k: jnp.asarray(v) for k, v in data.items()}
        logp = cast.pop("logp")
        value, grad = _value_and_grad(spec, logp, jgrpo.GroupBatch(**cast))
        return float(value), np.asarray(grad)


def _ref(spec, data):
    args = (_fields(spec), data["logp"], data["mask"], data["logp_old"], data["rewards"])
    kw = dict(logp_ref=data["logp_ref"], tokens=data["tokens"], entropy=data["entropy"])
    return reference_loss(*args, **kw), reference_coefficients(*args, **kw)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), data=batches())
def test_every_preset_with_drawn_fields_matches_the_reference(spec, data):
    ref_loss, ref_grad = _ref(spec, data)
    loss, grad = _lib(spec, data)
    scale = max(1.0, float(np.abs(ref_grad).max()))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-8, atol=1e-11 * max(1.0, abs(ref_loss)))
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-8, atol=1e-11 * scale)
    assert np.all(grad[data["mask"] == 0] == 0)


@settings(max_examples=5, deadline=None)
@given(data=batches(), phi=st.sampled_from([1e-3, 0.37, 8.0, 1e3]))
def test_reward_scale_invariance_of_std_normalised_presets(data, phi):
    """Prop. 2's premise: with alpha containing 1/sigma (and beta = 0) the loss does not see the reward scale."""
    for name in ("grpo", "dapo", "gcpo", "cispo"):
        spec = methods.get(name, beta=0.0)
        scaled = dict(data, rewards=data["rewards"] * phi)
        (v1, g1), (v2, g2) = _lib(spec, data), _lib(spec, scaled)
        np.testing.assert_allclose(v2, v1, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(g2, g1, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 2), min_size=20, max_size=20),
    lengths=st.lists(st.integers(0, 5), min_size=4, max_size=4),
    adv=st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=4, max_size=4),
)
def test_gtpo_conflict_tokens_match_brute_force(tokens, lengths, adv):
    tokens = np.array(tokens, np.int32).reshape(1, 4, 5)
    mask = (np.arange(5)[None, None, :] < np.array([lengths])[..., None]).astype(np.float32)
    adv = np.array([adv])
    expected = reference_conflict_tokens(tokens, mask, adv)
    np.testing.assert_array_equal(
        np.asarray(conflict_tokens(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(adv))), expected
    )


def _brute_force_tree(tokens, mask):
    g, t = tokens.shape
    lengths = [int(mask[i].sum()) for i in range(g)]
    same = np.zeros((g, g, t), bool)
    for i in range(g):
        for j in range(g):
            for k in range(t):
                same[i, j, k] = k < min(lengths[i], lengths[j]) and all(
                    tokens[i, u] == tokens[j, u] for u in range(k + 1)
                )
    size = same.sum(1)
    rep = np.zeros((g, t), bool)
    for i in range(g):
        for k in range(lengths[i]):
            rep[i, k] = not any(same[i, j, k] for j in range(i))
    return same, size, rep


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 1), min_size=20, max_size=20),
    lengths=st.lists(st.integers(0, 5), min_size=4, max_size=4),
)
def test_prefix_tree_matches_brute_force(tokens, lengths):
    tokens = np.array(tokens, np.int32).reshape(4, 5)
    mask = (np.arange(5)[None, :] < np.array(lengths)[:, None]).astype(np.float32)
    same, size, rep = _brute_force_tree(tokens, mask)
    tree = prefix_tree(tokens[None], mask[None])
    np.testing.assert_array_equal(np.asarray(tree.same_prefix[0]), same)
    np.testing.assert_array_equal(np.asarray(tree.node_size[0]), size)
    np.testing.assert_array_equal(np.asarray(tree.shared[0]), size >= 2)
    np.testing.assert_array_equal(np.asarray(tree.representative[0]), rep)
