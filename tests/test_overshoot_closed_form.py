"""Prop. 3/7 closed forms (Eqs. 32-38) against optax's Adam and a float64 textbook loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from analysis import overshoot as ov

CONFIGS = [  # (beta1, beta2, T)
    (0.9, 0.95, 1),
    (0.9, 0.95, 7),
    (0.9, 0.95, 100),
    (0.9, 0.999, 3),
    (0.9, 0.999, 50),
    (0.5, 0.9, 20),
    (0.99, 0.999, 30),
    (0.0, 0.9, 4),
]


def adam_after_clip_np(g, b1, b2, eps, T, K):
    """Textbook Adam (Kingma & Ba, Alg. 1, ε outside the root), float64, gradient g then 0."""
    m = v = 0.0
    out = []
    for t in range(1, T + K + 1):
        gt = g if t <= T else 0.0
        m = b1 * m + (1 - b1) * gt
        v = b2 * v + (1 - b2) * gt * gt
        mh, vh = m / (1 - b1**t), v / (1 - b2**t)
        out.append(-mh / (math.sqrt(vh) + eps))
    return np.array(out)


# ---------------------------------------------------------------------------- hand cases


def test_limit_values_from_the_paper():
    # Eq. 33: beta1/sqrt(beta2) = 0.9/sqrt(0.95) ~ 0.923; Eq. 37, k = 4: 0.923^5 ~ 0.671 (paper: ~0.66).
    r = 0.9 / math.sqrt(0.95)
    assert float(ov.c_coefficient(0.9, 0.95, None)) == pytest.approx(r, rel=1e-6)
    assert float(ov.c_coefficient(0.9, 0.95, jnp.inf)) == pytest.approx(0.923, abs=1e-3)
    assert float(ov.c_coefficient(0.9, 0.95, jnp.inf, 4)) == pytest.approx(0.671, abs=1e-3)
    assert float(ov.c_coefficient(0.9, 0.95, None, 4)) == pytest.approx(r**5, rel=1e-6)
    assert float(ov.c_limit(0.9, 0.95, 4)) == pytest.approx(r**5, rel=1e-6)
    # a long finite run is at the limit
    assert float(ov.c_coefficient(0.9, 0.95, 10_000, 4)) == pytest.approx(r**5, rel=1e-6)


def test_hand_case_T1():
    # T = 1, k = 0: m_hat = b1 (1-b1) g / (1-b1^2) = b1 g/(1+b1); v_hat = b2 g^2/(1+b2)
    # -> C = b1/(1+b1) * sqrt((1+b2)/b2).
    b1, b2 = 0.9, 0.95
    expected = b1 / (1 + b1) * math.sqrt((1 + b2) / b2)
    assert float(ov.c_coefficient(b1, b2, 1)) == pytest.approx(expected, rel=1e-6)


def test_total_overshoot_geometric_limit():
    r = 0.9 / math.sqrt(0.95)
    assert float(ov.total_overshoot(0.9, 0.95, None, num_steps=5)) == pytest.approx(r * (1 - r**5) / (1 - r), rel=1e-5)
    with pytest.raises(ValueError, match="num_steps"):
        ov.total_overshoot(0.9, 0.95, None, num_steps=0)


# ---------------------------------------------------------------------------- closed form vs simulation


@pytest.mark.parametrize("b1,b2,T", CONFIGS)
def test_closed_form_matches_optax_adam(b1, b2, T):
    K = 6
    sim = ov.simulate_adam_after_clip(jnp.float32(0.37), b1, b2, 0.0, T, K)
    closed = ov.c_coefficient(b1, b2, T, jnp.arange(K))
    np.testing.assert_allclose(sim.c, closed, atol=1e-5, rtol=0)
    ref = adam_after_clip_np(0.37, b1, b2, 0.0, T, K)
    np.testing.assert_allclose(ref[T:] / ref[T - 1], closed, atol=1e-5, rtol=0)


@pytest.mark.parametrize("b1,b2,T", CONFIGS[:4])
def test_closed_form_matches_optax_adam_float64(b1, b2, T):
    with jax.enable_x64(True):
        sim = ov.simulate_adam_after_clip(np.float64(-2.5), np.float64(b1), np.float64(b2), 0.0, T, 5)
        closed = ov.c_coefficient(np.float64(b1), np.float64(b2), T, jnp.arange(5))
        assert closed.dtype == jnp.float64
        np.testing.assert_allclose(sim.c, closed, rtol=1e-12)


def test_simulation_vector_gradient_is_per_coordinate():
    g = jnp.array([1e-3, -4.0, 0.2], jnp.float32)
    sim = ov.simulate_adam_after_clip(g, 0.9, 0.95, 0.0, 10, 3, lr=0.1)
    assert sim.updates.shape == (13, 3) and sim.c.shape == (3, 3)
    np.testing.assert_allclose(
        sim.c, np.broadcast_to(ov.c_coefficient(0.9, 0.95, 10, jnp.arange(3))[:, None], (3, 3)), atol=1e-5
    )
    # the last gradient step is the steady step -lr sign(g) (bias correction, eps = 0)
    np.testing.assert_allclose(sim.updates[9], -0.1 * np.sign(g), rtol=1e-6)


@pytest.mark.parametrize("eps", [1e-8, 1e-4, 1e-2, 0.3])
@pytest.mark.parametrize("g,b2,T", [(0.01, 0.99, 10), (1.0, 0.95, 3), (0.05, 0.999, 40)])
def test_eps_factor_matches_simulation(eps, g, b2, T):
    b1, K = 0.9, 5
    ks = jnp.arange(K)
    sim = ov.simulate_adam_after_clip(jnp.float32(g), b1, b2, eps, T, K)
    closed = ov.c_coefficient(b1, b2, T, ks) * ov.eps_factor(g, b2, T, ks, eps)
    np.testing.assert_allclose(sim.c, closed, atol=1e-5, rtol=0)
    ref = adam_after_clip_np(g, b1, b2, eps, T, K)
    np.testing.assert_allclose(ref[T:] / ref[T - 1], closed, atol=1e-5, rtol=0)


def test_eps_factor_properties():
    ks = jnp.arange(8)
    np.testing.assert_array_equal(ov.eps_factor(0.3, 0.95, 5, ks, 0.0), np.ones(8))
    f = ov.eps_factor(0.3, 0.95, 5, ks, 1e-2)
    assert np.all(f < 1) and np.all(np.diff(f) < 0)  # shrinks more the longer v decays
    # T -> inf: rho = b2^((k+1)/2)
    g, b2, e = 0.3, 0.95, 1e-2
    np.testing.assert_allclose(
        ov.eps_factor(g, b2, None, ks, e), (g + e) / (g + e / b2 ** ((np.arange(8) + 1) / 2)), rtol=1e-6
    )


# ---------------------------------------------------------------------------- jit, vmap, recompilation


def test_jit_vmap_over_every_argument_without_recompiling():
    traces = []

    def f(b1, b2, T, k):
        traces.append(1)
        return ov.c_coefficient(b1, b2, T, k)

    fj = jax.jit(jax.vmap(f))
    b1 = jnp.array([0.0, 0.5, 0.9, 0.95], jnp.float32)
    b2 = jnp.array([0.9, 0.95, 0.95, 0.999], jnp.float32)
    T = jnp.array([1.0, 10.0, jnp.inf, 300.0], jnp.float32)
    k = jnp.array([0, 1, 4, 2], jnp.int32)
    out = fj(b1, b2, T, k)
    expected = [
        float(ov.c_coefficient(float(a), float(b), float(t), int(kk))) for a, b, t, kk in zip(b1, b2, T, k, strict=True)
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out[0] == 0.0 and float(out[2]) == pytest.approx((0.9 / math.sqrt(0.95)) ** 5, rel=1e-6)
    fj(b1 * 0.99, b2, T + 1, k)
    assert len(traces) == 1


def test_vmap_simulation_over_beta1_matches_closed_form_with_one_compile():
    b1 = jnp.linspace(0.5, 0.95, 5)
    sim = jax.vmap(lambda a: ov.simulate_adam_after_clip(0.2, a, 0.95, 0.0, 12, 4).c)(b1)
    closed = jax.vmap(lambda a: ov.c_coefficient(a, 0.95, 12, jnp.arange(4)))(b1)
    np.testing.assert_allclose(sim, closed, atol=1e-5)
    before = ov._simulate_adam_after_clip_jit._cache_size()
    ov.simulate_adam_after_clip(0.2, 0.8, 0.9, 1e-8, 12, 4)
    ov.simulate_adam_after_clip(0.3, 0.7, 0.99, 0.0, 12, 4)
    assert ov._simulate_adam_after_clip_jit._cache_size() - before <= 1


def test_simulation_rejects_bad_static_args():
    with pytest.raises(ValueError, match="T must be"):
        ov.simulate_adam_after_clip(1.0, 0.9, 0.95, 0.0, 0, 3)
    with pytest.raises(ValueError, match="K must be"):
        ov.simulate_adam_after_clip(1.0, 0.9, 0.95, 0.0, 3, 2.0)


# ---------------------------------------------------------------------------- inner-step simulator


def clipped_toy(eps_high=0.2):
    """One token, A = 1, linear ratio s = 1 + theta: gradient -1 inside the clip region, 0 beyond 1 + eps_high."""

    def loss_fn(theta):
        s = 1.0 + theta
        loss = -jnp.minimum(s, jnp.clip(s, 0.8, 1.0 + eps_high))
        return loss, {"ratio": s, "clip_frac": (s > 1.0 + eps_high).astype(jnp.float32)}

    return loss_fn


def test_inner_steps_measure_the_overshoot_of_prop3():
    # lr 0.03, eps = 0: every gradient step is exactly 0.03 (bias-corrected constant gradient);
    # theta after 7 steps = 0.21 > 0.2, so T = 7 and then C_{T,k} takes over.
    lr, b1, b2, T, S = 0.03, 0.9, 0.95, 7, 20
    traj = jax.jit(lambda p: ov.simulate_inner_steps(clipped_toy(), p, optax.adam(lr, b1=b1, b2=b2, eps=0.0), S))(
        jnp.float32(0.0)
    )
    grads_zero = traj.grad_norm == 0
    assert not grads_zero[:T].any() and grads_zero[T:].all()
    closed = ov.c_coefficient(b1, b2, T, jnp.arange(S - T))
    np.testing.assert_allclose(traj.update_norm[T:] / traj.update_norm[T - 1], closed, atol=1e-5)
    np.testing.assert_allclose(traj.update_ratio[T + 1 :], closed[1:] / closed[:-1], atol=1e-5)
    assert np.isnan(traj.update_ratio[0])
    # the escape beyond 1 + eps_high is lr * (T + sum_k C_{T,k})
    escape = float(traj.final_aux["ratio"])
    assert escape == pytest.approx(1 + lr * (T + float(closed.sum())), abs=1e-5)
    assert escape > 1.4  # far outside the 1.2 clip bound
    np.testing.assert_allclose(traj.aux["ratio"][1:], 1 + np.cumsum(traj.update_norm)[:-1], atol=1e-5)


def test_inner_steps_against_python_loop_with_extra_args():
    from jgrpo import optim

    opt = optim.gated_adam(learning_rate=0.03, b1=0.9, b2=0.95, eps=0.0)
    loss_fn = clipped_toy()
    traj = ov.simulate_inner_steps(
        loss_fn, jnp.float32(0.0), opt, 12, extra_args_fn=lambda t, loss, aux: {"clip_fraction": aux["clip_frac"]}
    )

    @jax.jit
    def step(p, s):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        u, s = opt.update(g, s, p, clip_fraction=aux["clip_frac"])
        return optax.apply_updates(p, u), s, loss

    p, s = jnp.float32(0.0), opt.init(jnp.float32(0.0))
    for t in range(12):
        p, s, loss = step(p, s)
        assert float(loss) == pytest.approx(float(traj.loss[t]), abs=1e-6)
    np.testing.assert_allclose(traj.final_params, p, atol=1e-7)
    # the gate removes the overshoot entirely: the ratio stops at 1.21
    assert float(traj.final_aux["ratio"]) == pytest.approx(1.21, abs=1e-5)


def test_inner_steps_vmap_over_hyperparams_one_compile():
    traces = []
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.03, b1=0.9, b2=0.95, eps=0.0)
    loss_fn = clipped_toy()
    p0 = jnp.float32(0.0)

    def run(lr, b1):
        traces.append(1)
        state = opt.init(p0)
        state.hyperparams["learning_rate"] = lr
        state.hyperparams["b1"] = b1
        return ov.simulate_inner_steps(loss_fn, p0, opt, 15, opt_state=state)

    run_j = jax.jit(jax.vmap(run))
    lrs = jnp.array([0.03, 0.03, 0.045, 0.065], jnp.float32)
    b1s = jnp.array([0.0, 0.5, 0.9, 0.9], jnp.float32)
    out = run_j(lrs, b1s)
    assert out.update_norm.shape == (4, 15) and out.aux["ratio"].shape == (4, 15)
    for i in range(4):
        single = ov.simulate_inner_steps(loss_fn, p0, optax.adam(float(lrs[i]), b1=float(b1s[i]), b2=0.95, eps=0.0), 15)
        np.testing.assert_allclose(out.final_params[i], single.final_params, atol=1e-6)
    run_j(lrs * 2, b1s)
    assert len(traces) == 1
    # b1 = 0 (RMSProp-like): no momentum, the ratio stops after the step that crosses 1.2
    assert float(out.final_aux["ratio"][0]) == pytest.approx(1.21, abs=1e-5)
    assert np.all(np.asarray(out.final_aux["ratio"][1:]) > 1.24)


def test_inner_steps_rejects_bad_num_steps():
    with pytest.raises(ValueError, match="num_steps"):
        ov.simulate_inner_steps(clipped_toy(), jnp.float32(0.0), optax.adam(0.1), 0)
