"""Presets read as the paper writes them (issue 8 §1) and TRL's options, as hand cases.

The float64 reference (tests/reference.py) checks every option on random inputs
(tests/test_presets_reference.py); here each semantic choice is pinned by
arithmetic small enough to read.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from jgrpo import methods
from jgrpo.advantages import group_all_equal, rounding_spread


def _batch(rewards, lengths, t=4, logp_old=-1.0, dtype=np.float32, **extra):
    rewards = np.asarray([rewards], dtype)
    g = rewards.shape[1]
    mask = (np.arange(t)[None, None, :] < np.asarray([lengths])[..., None]).astype(dtype)
    old = np.full((1, g, t), logp_old, dtype)
    return jgrpo.GroupBatch(mask=mask, logp_old=old, rewards=rewards, **extra), old


def _grad(spec, logp, batch, wrt="logp"):
    if wrt == "logp":
        return np.asarray(jax.grad(lambda lp: jgrpo.loss(spec, lp, batch)[0])(jnp.asarray(logp)))
    return np.asarray(
        jax.grad(lambda e: jgrpo.loss(spec, logp, batch.replace(entropy=e))[0])(jnp.asarray(batch.entropy))
    )


# ----------------------------------------------------------------------------- sigma at rounding level


@pytest.mark.parametrize("name, flavor", [("grpo", "paper"), ("grpo", "verl"), ("grpo", "trl"), ("dapo", "paper")])
def test_rewards_one_ulp_apart_are_a_zero_variance_group(name, flavor):
    """Rewards [0.3, nextafter(0.3), 0.3, 0.3] (float32): A = 0, J = 0 and no gradient (not 0.489 as before)."""
    r = np.float32(0.3)
    rewards = [r, np.nextafter(r, np.float32(1)), r, r]
    batch, logp_old = _batch(rewards, [4, 3, 2, 1])
    logp = logp_old + np.float32(0.1) * np.arange(4, dtype=np.float32)  # ratios != 1
    spec = methods.get(name, flavor=flavor, beta=0.0)
    value, aux = jgrpo.loss(spec, logp, batch)
    assert float(value) == 0.0 and np.all(np.asarray(aux["advantages"]) == 0)
    assert np.all(_grad(spec, logp, batch) == 0)
    # Positive control: a spread of 1e-3 is a real difference and keeps its full-size advantages.
    batch2, _ = _batch([r, r + np.float32(1e-3), r, r], [4, 3, 2, 1])
    assert abs(float(jgrpo.loss(spec, logp, batch2)[0])) > 1e-3


def test_zero_variance_tolerance_comes_from_the_dtype_eps():
    """The tolerance is G * eps(dtype) * max|r| (a bound on the mean's rounding error), in the compute dtype."""
    r = jnp.asarray([[0.3, 0.3, 0.5]], jnp.float32)
    np.testing.assert_allclose(rounding_spread(r), 3 * np.finfo(np.float32).eps * 0.5)
    with jax.enable_x64(True):
        r64 = jnp.asarray([[0.3, np.nextafter(0.3, 1.0), 0.3]], jnp.float64)
        assert bool(group_all_equal(r64)[0, 0])
        np.testing.assert_allclose(rounding_spread(r64), 3 * np.finfo(np.float64).eps * np.nextafter(0.3, 1.0))
        # float64 sees a 1e-12 spread; float32 cannot tell it from rounding.
        r_far = jnp.asarray([[0.3, 0.3 + 1e-12, 0.3]], jnp.float64)
        assert not bool(group_all_equal(r_far)[0, 0])
    assert bool(group_all_equal(jnp.asarray([[0.3, 0.3 + 1e-12, 0.3]], jnp.float32))[0, 0])


# ----------------------------------------------------------------------------- GCPO, GTPO, CPPO


def test_gcpo_paper_weights_long_answers():
    """Omega_i = |o_i| / (sigma G): the first-step J is sum_i A_i |o_i| / (sigma G), a length covariance."""
    batch, logp_old = _batch([1.0, 0.0, 1.0, 0.0], [4, 1, 2, 3])
    value, aux = jgrpo.loss(methods.get("gcpo"), logp_old, batch)
    sigma, g = 0.5, 4
    np.testing.assert_allclose(aux["omega"][0], np.array([4, 1, 2, 3]) / (sigma * g), rtol=1e-6)
    a = np.array([0.5, -0.5, 0.5, -0.5])
    assert float(-value) == pytest.approx(float(np.sum(a * [4, 1, 2, 3]) / (sigma * g)), rel=1e-6)
    once = jgrpo.loss(methods.get("gcpo", sequence_terms="once"), logp_old, batch)
    np.testing.assert_allclose(once[1]["omega"][0], np.full(4, 1 / (sigma * g)), rtol=1e-6)
    assert float(once[0]) == pytest.approx(0.0, abs=1e-7)


def test_gtpo_paper_preset_has_r_and_delta_on():
    spec = methods.get("gtpo")
    assert spec.regularizer == "gtpo_entropy" and spec.beta == 0.1
    assert spec.entropy_threshold == pytest.approx(math.log(2)) and spec.gtpo_w == 2.0 and spec.gtpo_conflicts
    # Two completions with no shared tokens (lambda = 1): mean entropies 0.5 (kept) and 1.0 (> ln 2: filtered).
    tokens = np.array([[[1, 2, 3, 4], [5, 6, 7, 8]]], np.int32)
    entropy = np.array([[[0.5] * 4, [1.0] * 4]], np.float32)
    batch, logp_old = _batch([1.0, 0.0], [4, 2], tokens=tokens, entropy=entropy)
    value, aux = jgrpo.loss(spec, logp_old, batch)
    # Policy: delta = (1, 0); alpha = delta / (G |o_i|); at ratio 1 J_policy = sum_i delta_i A_i / G = 0.25.
    # R = (1/G) sum_i delta_i <H>_i / |o_i| sum_t I lambda = (1/2) * 0.5 / 4 * 4 = 0.25; J = 0.25 - 0.1 * 0.25.
    assert float(aux["policy"][0]) == pytest.approx(0.25, rel=1e-6)
    assert float(aux["regularizer"][0]) == pytest.approx(0.25, rel=1e-6)
    assert float(-value) == pytest.approx(0.25 - 0.1 * 0.25, rel=1e-6)
    g = _grad(spec, logp_old, batch)
    np.testing.assert_allclose(g[0, 1], 0.0)  # the filtered completion gets no gradient at all
    np.testing.assert_allclose(g[0, 0], -(0.5 / 8 - 0.1 * 0.5 / 8), rtol=1e-6)
    with pytest.raises(ValueError, match="needs batch.entropy"):
        jgrpo.loss(spec, logp_old, batch.replace(entropy=None))


def test_cppo_prunes_centred_or_standardised_advantages():
    """G = 4, one success: A = [0.75, -0.25, -0.25, -0.25], sigma = sqrt(3)/4 = 0.433.

    gamma = 0.3 on the centred A (Table 1) prunes the three failures; on A / sigma (CPPO paper:
    [1.73, -0.58, ...]) it keeps all four. Then J(theta_old) = -beta R for the latter only.
    """
    batch, logp_old = _batch([1.0, 0.0, 0.0, 0.0], [2, 2, 2, 2])
    centred = jgrpo.loss(methods.get("cppo", prune_gamma=0.3, beta=0.0), logp_old, batch)[1]
    std = jgrpo.loss(methods.get("cppo", prune_gamma=0.3, prune_on="standardised", beta=0.0), logp_old, batch)[1]
    sigma = math.sqrt(3) / 4
    np.testing.assert_allclose(centred["omega"][0], np.array([1, 0, 0, 0]) / (4 * sigma), rtol=1e-6)
    np.testing.assert_allclose(std["omega"][0], np.ones(4) / (4 * sigma), rtol=1e-6)
    assert float(centred["policy"][0]) == pytest.approx(0.75 / (4 * sigma), rel=1e-6)  # pruning fires: J != 0
    assert float(std["policy"][0]) == pytest.approx(0.0, abs=1e-7)


# ----------------------------------------------------------------------------- TRL's options


def test_trl_grpo_kl_is_bias_corrected():
    """TRL >= 1.10: the KL term is beta * I * k3 with I carrying a gradient: at I = 1 the KL part of
    d(loss)/dlogp is beta w (k3 + k3'), the plain KL's beta w k3' (w = 1/(G |o_i|))."""
    rng = np.random.default_rng(0)
    batch, logp_old = _batch([1.0, 0.0], [3, 2], logp_ref=None)
    logp_ref = (logp_old - 0.3 * rng.normal(size=logp_old.shape)).astype(np.float32)
    batch = batch.replace(logp_ref=-np.abs(logp_ref))
    trl = methods.get("grpo", flavor="trl")
    assert trl.regularizer == "kl_importance" and trl.kl == "k3"
    plain = trl.replace(regularizer="kl")
    v1, v2 = jgrpo.loss(trl, logp_old, batch)[0], jgrpo.loss(plain, logp_old, batch)[0]
    assert float(v1) == pytest.approx(float(v2), rel=1e-6)  # same value at I = 1
    x = np.asarray(batch.logp_ref) - logp_old
    k3 = np.exp(x) - x - 1
    w = np.asarray(batch.mask) / (2 * np.asarray(batch.mask).sum(-1, keepdims=True))
    diff = _grad(trl, logp_old, batch) - _grad(plain, logp_old, batch)
    np.testing.assert_allclose(diff, trl.beta * w * k3, rtol=1e-5, atol=1e-8)


def test_entropy_coef_adds_the_mean_entropy_with_its_gradient():
    entropy = np.array([[[0.5, 1.0, 1.5, 0.0], [2.0, 3.0, 0.0, 0.0]]], np.float32)
    batch, logp_old = _batch([1.0, 0.0], [3, 2], entropy=entropy)
    base = methods.get("grpo", flavor="trl", beta=0.0)
    spec = base.replace(entropy_coef=0.1)
    v0, v1 = jgrpo.loss(base, logp_old, batch)[0], jgrpo.loss(spec, logp_old, batch)[0]
    assert float(v0 - v1) == pytest.approx(0.1 * 8.0 / 5, rel=1e-6)  # mean over the 5 completion tokens
    np.testing.assert_allclose(_grad(spec, logp_old, batch, wrt="entropy"), -0.1 * batch.mask / 5, rtol=1e-6)
    np.testing.assert_allclose(_grad(spec, logp_old, batch), _grad(base, logp_old, batch), rtol=1e-6)


def test_top_entropy_quantile_keeps_the_policy_term_of_high_entropy_tokens():
    entropy = np.array([[[0.5, 1.0, 1.5, 9.0], [2.0, 3.0, 9.0, 9.0]]], np.float32)
    batch, logp_old = _batch([1.0, 0.0], [3, 2], entropy=entropy)
    spec = methods.get("grpo", flavor="trl", beta=0.0, top_entropy_quantile=0.4)
    # completion-token entropies [0.5, 1, 1.5, 2, 3]; 0.6-quantile = 1.5 + 0.4 * 0.5 = 1.7 -> keep 2 and 3.
    g = _grad(spec, logp_old, batch)
    assert np.all(g[0, 0] == 0) and np.all(g[0, 1, :2] != 0)
    np.testing.assert_allclose(g[0, 1, :2], _grad(spec.replace(top_entropy_quantile=1.0), logp_old, batch)[0, 1, :2])


def test_vespo_weight_is_one_on_policy_and_decays_off_policy():
    """phi(w) = exp(lambda + k log w - lambda w): phi(1) = 1, so at I = 1 the gradient is -alpha A."""
    batch, logp_old = _batch([1.0, 0.0], [2, 2])
    spec = methods.get("dapo", flavor="trl", objective="vespo")  # TRL's loss_type="vespo"
    alpha = 1 / ((np.std([1.0, 0.0], ddof=1) + 1e-4) * 4)  # 1 / (sigma * tokens of the batch)
    g = _grad(spec, logp_old, batch)
    np.testing.assert_allclose(g[0, :, :2], -alpha * np.array([[0.5, 0.5], [-0.5, -0.5]]), rtol=1e-5)
    # Off policy: w = e^0.5 for the positive completion, phi = exp(3 + 2 * 0.5 - 3 e^0.5) < 1.
    logp = logp_old.copy()
    logp[0, 0, :2] += 0.25
    phi = math.exp(3 + 2 * 0.5 - 3 * math.exp(0.5))
    assert phi < 0.6
    np.testing.assert_allclose(_grad(spec, logp, batch)[0, 0, :2], -alpha * 0.5 * phi, rtol=1e-5)
