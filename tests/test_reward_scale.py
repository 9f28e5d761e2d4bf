"""Prop. 2 (reward scaling under AdamW): analysis.reward_scale on the tabular policy.

The acceptance criteria: with β = 0 and Adam's ε → 0 the trajectory for φ r is
the one for r to float32 rounding (grpo and dr_grpo); β > 0, a large ε and SGD
break it for dr_grpo (no 1/σ), while grpo (α ∝ 1/σ) is invariant under all
three.

The fixture uses binary rewards with as many 1s as 0s in each group, so that
A_i = ±φ/2 is exact in float32 for every φ. This matters for dr_grpo: its
constant weights make the gradient on the start context of the tabular policy
(shared by every completion) exactly zero at step 0 (Σ_i A_i = 0, Prop. 1);
with generic rewards that zero is a rounding residue, and Adam with ε = 1e-12
turns it into a ±η step whose sign depends on φ (measured: up to 0.2 relative
deviation). grpo's invariance does not need this (tested with generic rewards).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrpo
from analysis import reward_scale as rs
from jgrpo import policies as P

V, T, B, G = 5, 6, 2, 4
STEPS = 20
PHIS = np.array([0.01, 0.1, 1.0, 10.0, 100.0], np.float32)
NOT_ONE = PHIS != 1.0
SGD = optax.sgd(0.5)  # one object: a static argument, compiled once
ROUNDING = 1e-4  # measured max: ~1.5e-6 (dr_grpo), ~8e-7 (grpo)
BROKEN = 1e-2  # measured min: ~0.15 (beta), ~0.2 (eps), |phi - 1| >= 0.9 (sgd)
TAB = P.tabular_logprob


def _setup(seed=0, rewards=None):
    rng = np.random.default_rng(seed)
    params = P.tabular_init(jax.random.key(seed), vocab=V, max_len=T, scale=1.0)
    tokens = rng.integers(0, V, size=(B, G, T)).astype(np.int32)
    lengths = rng.integers(2, T + 1, size=(B, G))
    mask = (np.arange(T) < lengths[..., None]).astype(np.float32)
    if rewards is None:
        rewards = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], np.float32)
    logp0 = np.asarray(TAB(params, tokens))
    ref = {"logits": params["logits"] + 0.3 * jax.random.normal(jax.random.key(seed + 100), params["logits"].shape)}
    batch = jgrpo.GroupBatch(
        mask=mask, logp_old=logp0, rewards=rewards, logp_ref=np.asarray(TAB(ref, tokens)), tokens=tokens
    )
    return params, batch, np.zeros((B, 1), np.int32)


@pytest.fixture(scope="module")
def setup():
    return _setup()


def _dev(setup, name, **kw):
    params, batch, prompt = setup
    kw.setdefault("beta", 0.0)
    d = rs.trajectory_deviation(jgrpo.methods.get(name), TAB, params, batch, prompt, PHIS, num_steps=STEPS, **kw)
    assert d.rel_param_dev.shape == (len(PHIS), STEPS)
    assert np.all(np.isfinite(np.asarray(d.rel_param_dev)))
    assert float(d.displacement[-1]) > 0.1  # the reference run moves
    np.testing.assert_array_equal(d.rel_param_dev[PHIS == 1.0], 0.0)
    return d


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_adamw_beta0_small_eps_is_invariant(setup, name):
    d = _dev(setup, name, hyper=rs.OptimizerHyper(eps=1e-12, eps_root=0.0))
    assert float(jnp.max(d.rel_param_dev)) < ROUNDING, d.max_rel_param_dev
    assert float(jnp.max(d.rel_update_dev)) < 10 * ROUNDING, d.rel_update_dev.max(-1)
    # the gradient scales with phi for dr_grpo (no 1/sigma) and not for grpo
    ratio = np.asarray(d.grad_norm[:, 0] / d.ref_grad_norm[0])
    np.testing.assert_allclose(ratio, PHIS if name == "dr_grpo" else np.ones_like(PHIS), rtol=1e-4)


def test_adamw_weight_decay_keeps_invariance(setup):
    d = _dev(setup, "dr_grpo", hyper=rs.OptimizerHyper(eps=1e-12, weight_decay=0.1))
    assert float(jnp.max(d.rel_param_dev)) < ROUNDING, d.max_rel_param_dev


def test_beta_breaks_dr_grpo(setup):
    d = _dev(setup, "dr_grpo", beta=0.04)
    assert np.all(np.asarray(d.max_rel_param_dev)[NOT_ONE] > BROKEN), d.max_rel_param_dev
    # phi -> 0 leaves only the KL: the farthest trajectory
    assert float(d.max_rel_param_dev[0]) == float(jnp.max(d.max_rel_param_dev))


def test_large_eps_breaks_dr_grpo(setup):
    d = _dev(setup, "dr_grpo", hyper=rs.OptimizerHyper(eps=1e-3))
    assert np.all(np.asarray(d.max_rel_param_dev)[NOT_ONE] > BROKEN), d.max_rel_param_dev
    # small phi: sqrt(v_hat) ~ phi |g| is below eps, the steps shrink
    assert float(d.displacement[-1]) > 0 and float(d.max_rel_param_dev[0]) > float(d.max_rel_param_dev[1])


def test_sgd_breaks_dr_grpo_as_phi_minus_one(setup):
    d = _dev(setup, "dr_grpo", optimizer="sgd", hyper=rs.OptimizerHyper(learning_rate=0.5))
    # step 1: theta_1(phi) - theta_0 = -eta phi g, so the relative deviation is |phi - 1| exactly
    np.testing.assert_allclose(d.rel_param_dev[:, 0], np.abs(PHIS - 1.0), rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(d.max_rel_param_dev)[NOT_ONE] > BROKEN)


def test_grpo_is_invariant_under_every_condition(setup):
    """alpha = 1/(G|o_i| sigma): J(phi r) = J(r), so beta, eps and SGD change nothing."""
    for kw in (
        dict(beta=0.04),
        dict(beta=0.4, hyper=rs.OptimizerHyper(eps=1e-3, weight_decay=0.1)),
        dict(optimizer=SGD, beta=0.04),  # any optax transformation
    ):
        d = _dev(setup, "grpo", **kw)
        assert float(jnp.max(d.rel_param_dev)) < ROUNDING, (kw, d.max_rel_param_dev)


def test_grpo_invariant_with_generic_rewards():
    rewards = np.array([[0.3, 0.9, 0.15, 0.71], [0.05, 0.5, 0.61, 0.2]], np.float32)
    d = _dev(_setup(seed=1, rewards=rewards), "grpo", hyper=rs.OptimizerHyper(eps=1e-12))
    assert float(jnp.max(d.rel_param_dev)) < ROUNDING, d.max_rel_param_dev


def test_one_compile_serves_the_sweep(setup):
    params, batch, prompt = setup
    spec = jgrpo.methods.get("dr_grpo")
    args = (spec, TAB, params, batch, prompt)
    rs.trajectory_deviation(*args, PHIS, num_steps=STEPS, beta=0.0)
    size = rs._trajectory_deviation._cache_size()
    for phis, hyper, beta in [
        (PHIS[::-1] * 3, rs.OptimizerHyper(eps=1e-6), 0.5),
        (PHIS / 7, rs.OptimizerHyper(learning_rate=3e-3, b1=0.5, b2=0.9, weight_decay=0.2), 0.0),
    ]:
        rs.trajectory_deviation(*args, phis, num_steps=STEPS, hyper=hyper, beta=beta)
    assert rs._trajectory_deviation._cache_size() == size

    # vmap over Adam's eps: one program for the whole (eps x phi) grid
    def sweep(eps):
        return rs.trajectory_deviation(*args, PHIS, num_steps=STEPS, hyper=rs.OptimizerHyper(eps=eps), beta=0.0)

    grid = jax.vmap(sweep)(jnp.array([1e-12, 1e-3], jnp.float32))
    assert grid.max_rel_param_dev.shape == (2, len(PHIS))
    assert float(jnp.max(grid.max_rel_param_dev[0])) < ROUNDING
    np.testing.assert_allclose(grid.max_rel_param_dev[1], sweep(1e-3).max_rel_param_dev, rtol=1e-3, atol=1e-5)


def test_recompute_logp_old_starts_on_policy(setup):
    params, batch, prompt = setup
    stale = jgrpo.GroupBatch(
        mask=batch.mask, logp_old=batch.logp_ref, rewards=batch.rewards, logp_ref=batch.logp_ref, tokens=batch.tokens
    )
    # default: logp_old is replaced by the starting policy's, so the stale one changes nothing
    fresh = _dev(setup, "grpo", optimizer=SGD, beta=0.04)
    d = _dev((params, stale, prompt), "grpo", optimizer=SGD, beta=0.04)
    np.testing.assert_allclose(d.ref_objective, fresh.ref_objective, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d.displacement, fresh.displacement, rtol=1e-6)
    # at step 0 every ratio is 1, so J = Sum_i A_i Omega_i - beta R = -beta R for grpo (Prop. 4)
    assert float(fresh.ref_objective[0]) < 0


@pytest.mark.parametrize("name", ["grpo", "grpo_v32", "gtpo"])
def test_scaled_loss_traced_beta_matches_jgrpo_loss(name):
    from tests.conftest import make_batch

    batch, logp = make_batch(seed=2, b=2, g=4, t=6)
    # gtpo: no entropy filter, so that every prompt keeps a regularizer term (asserted > 0 below).
    spec = jgrpo.methods.get(name, **({"entropy_threshold": None} if name == "gtpo" else {}))
    beta = spec.beta if spec.beta > 0 else 0.1
    spec = spec.replace(beta=beta)
    zero = spec.replace(beta=0.0)  # a traced beta ignores spec.beta: one MethodSpec serves every beta

    @jax.jit  # one program per preset (faster than op-by-op here)
    def both(logp, beta):
        (ref, ref_aux), g_ref = jax.value_and_grad(lambda lp: jgrpo.loss(spec, lp, batch), has_aux=True)(logp)
        (value, aux), g = jax.value_and_grad(lambda lp: rs.scaled_loss(zero, lp, batch, beta), has_aux=True)(logp)
        return (ref, ref_aux, g_ref), (value, aux, g), rs.scaled_loss(spec, logp, batch)[0]

    (ref, ref_aux, g_ref), (value, aux, g), value_none = both(jnp.asarray(logp), jnp.float32(beta))
    np.testing.assert_array_equal(value_none, ref)  # beta=None: jgrpo.loss itself
    np.testing.assert_allclose(value, ref, rtol=1e-6, atol=1e-7)
    for key in ("objective", "policy", "regularizer"):
        np.testing.assert_allclose(aux[key], ref_aux[key], rtol=1e-6, atol=1e-7)
    assert float(jnp.min(aux["regularizer"])) > 0
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)


def test_bad_input(setup):
    params, batch, prompt = setup
    spec = jgrpo.methods.get("grpo")
    call = lambda phis=PHIS, **kw: rs.trajectory_deviation(  # noqa: E731
        spec, TAB, params, kw.pop("batch", batch), prompt, phis, **{"num_steps": 2, **kw}
    )
    with pytest.raises(ValueError, match=r"phis must have shape \[K\]"):
        call(PHIS[None])
    with pytest.raises(ValueError, match="phis must be finite and > 0"):
        call(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="phis must be finite and > 0"):
        call(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="num_steps"):
        call(num_steps=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        call(optimizer="adagrad")
    with pytest.raises(ValueError, match="hyper applies"):
        call(optimizer=optax.sgd(0.1), hyper=rs.OptimizerHyper())
    no_tokens = jgrpo.GroupBatch(mask=batch.mask, logp_old=batch.logp_old, rewards=batch.rewards)
    with pytest.raises(ValueError, match="batch.tokens is required"):
        call(batch=no_tokens)


def test_scale_rewards_scales_given_advantages():
    batch = jgrpo.GroupBatch(
        mask=np.ones((2, 3)), logp_old=np.zeros((2, 3)), rewards=np.array([1.0, 3.0]), advantages=np.array([-1.0, 1.0])
    )
    s = rs.scale_rewards(batch, 2.5)
    np.testing.assert_allclose(s.rewards, [2.5, 7.5])
    np.testing.assert_allclose(s.advantages, [-2.5, 2.5])
