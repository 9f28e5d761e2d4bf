"""Hand cases, properties, bad input and jit behaviour of jgrpo.loss."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jgrpo
from jgrpo import methods
from tests.conftest import make_batch

loss_jit = jax.jit(jgrpo.loss, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _grad_logp(spec, logp, batch):
    return jax.grad(lambda lp: jgrpo.loss(spec, lp, batch)[0])(logp)


def grad_logp(spec, logp, batch):
    """d loss / d logp, one jitted program per spec and shapes."""
    return _grad_logp(spec, jnp.asarray(logp), batch)


def one_token_batch(rewards, log_ratio=0.0):
    g = len(rewards)
    mask = np.ones((1, g, 1), np.float32)
    logp_old = np.full((1, g, 1), -3.0, np.float32)
    return jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=np.asarray([rewards], np.float32)), (
        logp_old + np.float32(log_ratio)
    )


# ---------------------------------------------------------------------------- hand cases


def test_grpo_hand_case_on_policy():
    # rewards [1, 0]: A = [0.5, -0.5], sigma (ddof 0) = 0.5, alpha = 1/(G |o| sigma) = 1.
    spec = methods.get("grpo", beta=0.0)
    batch, logp = one_token_batch([1.0, 0.0])
    value, aux = jgrpo.loss(spec, logp, batch)
    assert float(value) == pytest.approx(0.0, abs=1e-7)  # J = 0.5 - 0.5 at ratio 1
    np.testing.assert_allclose(aux["advantages"], [[0.5, -0.5]])
    np.testing.assert_allclose(aux["omega"], [[1.0, 1.0]])
    # d(-J)/dlogp = -alpha * s * A = [-0.5, 0.5]
    np.testing.assert_allclose(grad_logp(spec, logp, batch)[0, :, 0], [-0.5, 0.5], rtol=1e-6)


def test_clip_high_zeroes_gradient_and_caps_value():
    spec = methods.get("grpo", beta=0.0)  # eps 0.2
    batch, logp = one_token_batch([1.0, 0.0], log_ratio=np.log(1.5))
    value, aux = jgrpo.loss(spec, logp, batch)
    # A>0 completion: min(1.5 * 0.5, 1.2 * 0.5) = 0.6; A<0: min(-0.75, -0.6) = -0.75. J = -0.15.
    assert float(value) == pytest.approx(0.15, rel=1e-5)
    g = grad_logp(spec, logp, batch)[0, :, 0]
    assert float(g[0]) == 0.0  # clipped: no advantage gradient
    assert float(g[1]) == pytest.approx(1.5 * 0.5, rel=1e-5)
    assert float(aux["clip_frac_high"]) == 0.5


def test_dr_grpo_weights_are_constant_and_first_step_objective_is_sum_a_len():
    # Dr. GRPO alpha = 1/G: at ratio 1, J = (1/G) sum_i A_i |o_i| (Appendix A).
    spec = methods.get("dr_grpo", beta=0.0)
    mask = np.array([[[1, 1, 1], [1, 0, 0], [1, 1, 0]]], np.float32)
    logp_old = np.full(mask.shape, -0.5, np.float32)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=np.array([[1.0, 0.0, 0.0]], np.float32))
    value, aux = jgrpo.loss(spec, logp_old, batch)
    a = np.array([2 / 3, -1 / 3, -1 / 3])
    assert float(-value) == pytest.approx(float(np.sum(a * [3, 1, 2]) / 3), rel=1e-6)
    np.testing.assert_allclose(aux["omega"][0], [1 / 3 * 3, 1 / 3, 2 / 3], rtol=1e-6)


def test_dapo_token_mean_per_group():
    spec = methods.get("dapo")
    mask = np.array([[[1, 1, 1], [1, 0, 0]]], np.float32)
    logp_old = np.full(mask.shape, -0.5, np.float32)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=np.array([[2.0, 0.0]], np.float32))
    _, aux = jgrpo.loss(spec, logp_old, batch)
    # alpha = 1/(sigma * sum_j |o_j|) = 1/(1 * 4) on every token.
    np.testing.assert_allclose(aux["omega"][0], [3 / 4, 1 / 4], rtol=1e-6)


def test_gpg_alpha_hat_rescales_for_equal_groups():
    spec = methods.get("gpg")
    mask = np.ones((2, 2, 1), np.float32)
    logp_old = np.full(mask.shape, -1.0, np.float32)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=np.array([[1.0, 0.0], [1.0, 1.0]], np.float32))
    _, aux = jgrpo.loss(spec, logp_old, batch)
    # B = 2 groups, M = 1 all-equal: alpha-hat = 2; alpha = 2 / (F_norm * 2 tokens) = 1.
    np.testing.assert_allclose(aux["omega"][0], [1.0, 1.0], rtol=1e-6)


def test_gcpo_is_table1_literally_and_once_is_an_option():
    mask = np.array([[[1, 1, 1, 1], [1, 0, 0, 0]]], np.float32)
    logp_old = np.full(mask.shape, -0.5, np.float32)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=np.array([[1.0, 0.0]], np.float32))
    # sigma = 0.5, G = 2: alpha = 1/(sigma G) = 1 on every token, each with the whole-sequence ratio,
    # so Omega_i = |o_i| / (sigma G) = [4, 1] (a long-answer weighting); J(theta_old) = 0.5*4 - 0.5*1 = 1.5.
    value, aux = jgrpo.loss(methods.get("gcpo"), logp_old, batch)
    np.testing.assert_allclose(aux["omega"][0], [4.0, 1.0], rtol=1e-6)
    assert float(-value) == pytest.approx(1.5, rel=1e-6)
    # The gradient of every token of completion 0 is Omega_0 * A_0 * S_0 = 4 * 0.5 * 1.
    np.testing.assert_allclose(grad_logp(methods.get("gcpo"), logp_old, batch)[0, 0], [-2.0] * 4, rtol=1e-6)
    # sequence_terms="once": each completion's term counts once, Omega_i = 1/(sigma G) whatever its length.
    value, aux = jgrpo.loss(methods.get("gcpo", sequence_terms="once"), logp_old, batch)
    np.testing.assert_allclose(aux["omega"][0], [1.0, 1.0], rtol=1e-6)
    assert float(value) == pytest.approx(0.0, abs=1e-7)


def test_gspo_value_is_sequence_ratio_and_gradient_token_form():
    spec = methods.get("gspo", eps_low=0.5, eps_high=0.5)
    mask = np.array([[[1, 1], [1, 1]]], np.float32)
    logp_old = np.full(mask.shape, -1.0, np.float32)
    logp = logp_old + np.array([[[0.2, 0.0], [0.0, 0.0]]], np.float32)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=np.array([[1.0, 0.0]], np.float32))
    value, _ = jgrpo.loss(spec, logp, batch)
    s0 = np.exp(0.1)
    # J = (1/(G sigma)) (s0 * 0.5 + 1 * -0.5), sigma = 0.5, G = 2.
    assert float(-value) == pytest.approx((s0 * 0.5 - 0.5), rel=1e-5)
    g = grad_logp(spec, logp, batch)
    # d(-J)/dlogp_{0,t} = -(1/(G |o| sigma)) * s0 * A = -(1/2) * s0 * 0.5
    np.testing.assert_allclose(g[0, 0], [-0.25 * s0, -0.25 * s0], rtol=1e-5)


def test_dual_clip_bounds_negative_advantage_terms():
    spec = methods.get("grpo", beta=0.0, dual_clip=3.0)
    batch, logp = one_token_batch([1.0, 0.0], log_ratio=np.log(5.0))
    value, _ = jgrpo.loss(spec, logp, batch)
    # A<0: max(min(5 * -0.5, 1.2 * -0.5), 3 * -0.5) = -1.5 ; A>0: 1.2 * 0.5 = 0.6
    assert float(-value) == pytest.approx(0.6 - 1.5, rel=1e-5)


# ---------------------------------------------------------------------------- properties


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_zero_variance_group_contributes_exactly_zero(seed):
    for name in ("grpo", "dapo", "dr_grpo", "gspo", "cispo", "gpg"):
        spec = methods.get(name, beta=0.0)
        batch, logp = make_batch(seed, equal_group=True)
        grad = grad_logp(spec, logp, batch)
        assert np.all(np.asarray(grad[-1]) == 0.0), name
        assert np.isfinite(np.asarray(grad)).all()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), phi=st.floats(0.01, 100.0))
def test_std_normalised_methods_are_reward_scale_invariant(seed, phi):
    batch, logp = make_batch(seed)
    scaled = dataclasses.replace(batch, rewards=batch.rewards * np.float32(phi))
    for name in ("grpo", "dapo", "gspo", "gcpo", "cispo"):
        spec = methods.get(name, beta=0.0)
        v1, v2 = jgrpo.loss(spec, logp, batch)[0], jgrpo.loss(spec, logp, scaled)[0]
        np.testing.assert_allclose(v1, v2, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(grad_logp(spec, logp, batch), grad_logp(spec, logp, scaled), rtol=2e-4, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_clipped_tokens_have_no_advantage_gradient(seed):
    spec = methods.get("dapo", beta=0.0)
    batch, logp = make_batch(seed, spread=1.0)
    ratio = np.exp(logp - batch.logp_old)
    adv = np.asarray(jgrpo.advantages(spec, batch))[..., None]
    clipped = ((adv > 0) & (ratio > 1 + spec.eps_high)) | ((adv < 0) & (ratio < 1 - spec.eps_low))
    clipped &= batch.mask > 0
    grad = np.asarray(grad_logp(spec, logp, batch))
    assert np.all(grad[clipped] == 0.0)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000), junk=st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
def test_padding_never_leaks(seed, junk):
    batch, logp = make_batch(seed)
    pad = batch.mask == 0
    dirty_logp = np.where(pad, junk, logp).astype(np.float32)
    dirty = dataclasses.replace(
        batch,
        logp_old=np.where(pad, junk, batch.logp_old).astype(np.float32),
        logp_ref=np.where(pad, junk, batch.logp_ref).astype(np.float32),
    )
    for name in methods.names():
        spec = methods.get(name)
        clean_v = jgrpo.loss(spec, logp, batch)[0]
        dirty_v = jgrpo.loss(spec, dirty_logp, dirty)[0]
        np.testing.assert_allclose(clean_v, dirty_v, rtol=1e-6, atol=1e-7, err_msg=name)
        grad = np.asarray(grad_logp(spec, dirty_logp, dirty))
        assert np.all(grad[pad] == 0.0), name
        assert np.isfinite(grad).all(), name


# ---------------------------------------------------------------------------- hard but valid input


def test_presets_finite_on_hard_input(preset):
    batch, logp = make_batch(3, equal_group=True)
    logp_old = np.asarray(batch.logp_old).copy()
    logp_old[0, 0, :] -= 100.0  # log-ratio +100
    batch = dataclasses.replace(batch, logp_old=logp_old)
    extreme = logp.copy()
    extreme[0, 0, :] = logp_old[0, 0, :] + 100.0
    extreme[0, 1, :] = logp_old[0, 1, :] - 100.0
    for lp in (extreme, extreme.astype(jnp.bfloat16)):
        value, aux = jgrpo.loss(preset, lp, batch)
        grad = grad_logp(preset, lp, batch)
        assert value.dtype == jnp.float32
        assert np.isfinite(float(value)) and bool(aux["finite"])
        assert np.isfinite(np.asarray(grad, np.float32)).all()


def test_all_empty_completions_give_zero():
    batch, logp = make_batch(0)
    empty = dataclasses.replace(batch, mask=np.zeros_like(batch.mask))
    for name in methods.names():
        value = jgrpo.loss(methods.get(name), logp, empty)[0]
        assert float(value) == 0.0, name


def test_bf16_is_reduced_in_float32():
    batch, logp = make_batch(1)
    spec = methods.get("grpo")
    v16 = jgrpo.loss(spec, jnp.asarray(logp, jnp.bfloat16), batch)[0]
    v32 = jgrpo.loss(spec, jnp.asarray(jnp.asarray(logp, jnp.bfloat16), jnp.float32), batch)[0]
    assert v16.dtype == jnp.float32
    np.testing.assert_allclose(v16, v32, rtol=1e-6)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="nope"), "unknown method name 'nope'; known methods: grpo, grpo_v32"),
        (dict(name="grpo", flavor="openrlhf"), "flavor must be one of 'paper', 'verl', 'trl'"),
        (dict(name="gtpo", flavor="verl"), "has no 'verl' flavour; available flavours: paper"),
        (dict(name="grpo", eps_low=1.5), r"MethodSpec.eps_low must be in \[0, 1\]; got 1.5"),
        (dict(name="grpo", beta=-0.1), "MethodSpec.beta must be >= 0; got -0.1"),
        (dict(name="grpo", agg="mean"), "MethodSpec.agg must be one of 'seq-mean-token-mean'"),
        (dict(name="grpo", dual_clip=0.5), "MethodSpec.dual_clip must be > 1"),
        (dict(name="grpo", std_ddof=2), "MethodSpec.std_ddof must be 0 or 1"),
        (dict(name="grpo", clip=0.2), r"unknown MethodSpec field\(s\) \['clip'\]"),
    ],
)
def test_bad_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        methods.get(**kwargs)


def test_bad_shapes_and_dtypes():
    batch, logp = make_batch(0)
    spec = methods.get("grpo")
    with pytest.raises(ValueError, match=r"logp must have shape \[B, G, T\] = \(2, 4, 6\) like mask, got \(2, 4, 5\)"):
        jgrpo.loss(spec, logp[..., :5], batch)
    with pytest.raises(ValueError, match=r"logp_old must have shape"):
        jgrpo.loss(spec, logp, dataclasses.replace(batch, logp_old=batch.logp_old[0]))
    with pytest.raises(
        ValueError,
        match=r"rewards must have shape \[B, G\] = \(2, 4\) \(or \[B, G, K\] for K reward functions\), got \(2, 3\)",
    ):
        jgrpo.loss(spec, logp, dataclasses.replace(batch, rewards=batch.rewards[:, :3]))
    with pytest.raises(ValueError, match=r"mask must have shape \[..., G, T\] \(rank >= 2\), got shape \(6,\)"):
        jgrpo.loss(spec, logp[0, 0], dataclasses.replace(batch, mask=batch.mask[0, 0]))
    with pytest.raises(TypeError, match="logp must be a floating-point array, got dtype int32"):
        jgrpo.loss(spec, logp.astype(np.int32), batch)
    with pytest.raises(ValueError, match="batch.logp_ref is required"):
        jgrpo.loss(spec, logp, dataclasses.replace(batch, logp_ref=None))
    with pytest.raises(ValueError, match="needs batch.tokens"):
        jgrpo.loss(methods.get("gtpo"), logp, dataclasses.replace(batch, tokens=None))
    with pytest.raises(ValueError, match="needs a group size G >= 2; got G = 1"):
        jgrpo.loss(
            spec,
            logp[:, :1],
            jgrpo.GroupBatch(
                mask=batch.mask[:, :1],
                logp_old=batch.logp_old[:, :1],
                rewards=batch.rewards[:, :1],
                logp_ref=batch.logp_ref[:, :1],
            ),
        )
    with pytest.raises(TypeError, match="spec must be a jgrpo.MethodSpec"):
        jgrpo.loss("grpo", logp, batch)
    with pytest.raises(TypeError, match="batch must be a jgrpo.GroupBatch"):
        jgrpo.loss(spec, logp, {"mask": batch.mask})


def test_nan_logp_on_completion_tokens_is_an_error():
    batch, logp = make_batch(0)
    bad = logp.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"logp has NaN on 1 completion token\(s\), first at index \(1, 2, 0\)"):
        jgrpo.loss(methods.get("grpo"), bad, batch)


def test_verl_group_of_one_is_allowed():
    batch, logp = make_batch(0, g=1, empty=False)
    value, aux = jgrpo.loss(methods.get("grpo", flavor="verl"), logp, batch)
    np.testing.assert_allclose(aux["advantages"], batch.rewards)  # mean 0, sigma 1
    assert np.isfinite(float(value))


# ---------------------------------------------------------------------------- jit


def test_jit_matches_eager_and_does_not_recompile(preset):
    batch, logp = make_batch(5)
    traces = []

    def counted(spec, lp, b):
        traces.append(1)
        return jgrpo.loss(spec, lp, b)[0]

    f = jax.jit(counted, static_argnums=0)
    eager = jgrpo.loss(preset, logp, batch)[0]
    np.testing.assert_allclose(f(preset, logp, batch), eager, rtol=1e-6, atol=1e-7)
    equal_spec = methods.get(preset.name, flavor=preset.flavor)  # a distinct but equal object
    f(equal_spec, logp + np.float32(0.01), batch)
    assert len(traces) == 1
    assert hash(equal_spec) == hash(preset)


def test_vmap_over_leading_axis_matches_per_prompt():
    batch, logp = make_batch(7, b=3)
    spec = methods.get("grpo")
    # jitted: one compile each instead of op-by-op dispatch of every primitive (the same vmap rules run)
    per = jax.jit(jax.vmap(lambda lp, b: jgrpo.loss(spec, lp, b)[0]))(
        jnp.asarray(logp), jax.tree.map(jnp.asarray, batch)
    )
    whole = jax.jit(lambda lp, b: jgrpo.loss(spec, lp, b)[0])(jnp.asarray(logp), jax.tree.map(jnp.asarray, batch))
    np.testing.assert_allclose(jnp.mean(per), whole, rtol=1e-6)
