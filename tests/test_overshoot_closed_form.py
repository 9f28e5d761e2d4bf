"""Prop. 3/7 closed forms (Eqs. 32-38, the paper's index) against optax's Adam and float64 textbook loops."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from analysis import overshoot as ov

CONFIGS = [  # (beta1, beta2, T): T is the step at which the gradient vanishes (T - 1 gradient steps before it)
    (0.9, 0.95, 2),
    (0.9, 0.95, 8),
    (0.9, 0.95, 101),
    (0.9, 0.999, 4),
    (0.9, 0.999, 51),
    (0.5, 0.9, 21),
    (0.99, 0.999, 31),
    (0.0, 0.9, 5),
]


def adam_np(grads, b1, b2, eps, K):
    """Textbook Adam (Kingma & Ba, Alg. 1, eps outside the root), float64: the gradients, then K zeros.

    Returns (updates u_1..u_{n+K}, v_hat after each step).
    """
    m = v = 0.0
    us, vs = [], []
    for t, gt in enumerate(list(grads) + [0.0] * K, start=1):
        m = b1 * m + (1 - b1) * gt
        v = b2 * v + (1 - b2) * gt * gt
        mh, vh = m / (1 - b1**t), v / (1 - b2**t)
        us.append(-mh / (math.sqrt(vh) + eps))
        vs.append(vh)
    return np.array(us), np.array(vs)


def c_np(b1, b2, T, k):
    """Eq. 36 exactly as printed in Appendix D (Eq. 32 for k = 0), float64."""
    first = b1 ** (k + 1) * (1 - b1 ** (T - 1)) / (1 - b1 ** (T + k))
    second = math.sqrt((1 / b2 ** (k + 1)) * (1 - b2 ** (T + k)) / (1 - b2 ** (T - 1)))
    return first * second


# ---------------------------------------------------------------------------- hand cases


def test_c2_in_the_papers_index():
    # Eq. 32 at T = 2 (one gradient step, then the clip):
    # beta1 (1 - beta1)/(1 - beta1^2) sqrt((1 - beta2^2)/(beta2 (1 - beta2)))
    # = beta1/(1 + beta1) sqrt((1 + beta2)/beta2) = 0.67865 for (0.9, 0.95).
    b1, b2 = 0.9, 0.95
    hand = b1 / (1 + b1) * math.sqrt((1 + b2) / b2)
    assert hand == pytest.approx(0.67865, abs=5e-6)
    assert float(ov.c_coefficient(b1, b2, 2)) == pytest.approx(hand, rel=1e-6)
    assert float(ov.c_coefficient(b1, b2, 2)) == pytest.approx(c_np(b1, b2, 2, 0), rel=1e-6)


@pytest.mark.parametrize("b1,b2,T", CONFIGS)
def test_closed_form_is_the_printed_equation(b1, b2, T):
    got = np.asarray(ov.c_coefficient(b1, b2, T, jnp.arange(6)))
    np.testing.assert_allclose(got, [c_np(b1, b2, T, k) for k in range(6)], rtol=2e-6)


def test_limit_values_from_the_paper():
    # Eq. 33: beta1/sqrt(beta2) = 0.9/sqrt(0.95) ~ 0.923; Eq. 37, k = 4: 0.923^5 ~ 0.671 (the paper prints 0.66).
    r = 0.9 / math.sqrt(0.95)
    assert float(ov.c_coefficient(0.9, 0.95, None)) == pytest.approx(r, rel=1e-6)
    assert float(ov.c_coefficient(0.9, 0.95, jnp.inf)) == pytest.approx(0.923, abs=5e-4)
    assert float(ov.c_coefficient(0.9, 0.95, None, 4)) == pytest.approx(r**5, rel=1e-6)
    assert float(ov.c_limit(0.9, 0.95, 4)) == pytest.approx(r**5, rel=1e-6)
    assert float(ov.c_coefficient(0.9, 0.95, 10_000, 4)) == pytest.approx(r**5, rel=1e-6)


def test_total_overshoot_geometric_limit():
    r = 0.9 / math.sqrt(0.95)
    assert float(ov.total_overshoot(0.9, 0.95, None, num_steps=5)) == pytest.approx(r * (1 - r**5) / (1 - r), rel=1e-5)
    with pytest.raises(ValueError, match="num_steps"):
        ov.total_overshoot(0.9, 0.95, None, num_steps=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(b1=1.0, b2=0.95, T=3), "b1"),
        (dict(b1=-0.1, b2=0.95, T=3), "b1"),
        (dict(b1=0.9, b2=0.0, T=3), "b2"),
        (dict(b1=0.9, b2=1.0, T=3), "b2"),
        (dict(b1=0.9, b2=0.95, T=1), "T must be"),
        (dict(b1=0.9, b2=0.95, T=0), "T must be"),
        (dict(b1=0.9, b2=0.95, T=2.5), "T must be"),
        (dict(b1=0.9, b2=0.95, T=3, k=-1), "k must be"),
        (dict(b1=0.9, b2=0.95, T=3, k=0.5), "k must be"),
        (dict(b1=float("nan"), b2=0.95, T=3), "b1"),
        (dict(b1=np.array([0.5, 1.0]), b2=0.95, T=3), "b1"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ov.c_coefficient(**kwargs)


def test_other_closed_forms_validate():
    with pytest.raises(ValueError, match="g_abs"):
        ov.eps_factor(0.0, 0.95, 3)
    with pytest.raises(ValueError, match="eps"):
        ov.eps_factor(1.0, 0.95, 3, eps=-1e-8)
    with pytest.raises(ValueError, match="T must be"):
        ov.eps_factor(1.0, 0.95, 1)
    with pytest.raises(ValueError, match="v_hat_before"):
        ov.eps_modulation(-1.0, 1.0, 1e-8)
    with pytest.raises(ValueError, match="v_hat_after"):
        ov.eps_modulation(1.0, 0.0, 0.0)  # 0/0 guard: v_hat = 0 with eps = 0
    with pytest.raises(ValueError, match="b1"):
        ov.first_moment_decay(1.0, 3)
    with pytest.raises(ValueError, match="b2"):
        ov.second_moment_decay(0.0, 3)
    with pytest.raises(ValueError, match="k must be"):
        ov.c_limit(0.9, 0.95, -2)


def test_traced_arguments_pass_validation():
    # validation inspects concrete values only; under jit the values are traced
    f = jax.jit(lambda b1, T: ov.c_coefficient(b1, 0.95, T))
    assert float(f(0.9, 2.0)) == pytest.approx(0.67865, abs=1e-5)


# ---------------------------------------------------------------------------- closed form vs simulation


@pytest.mark.parametrize("b1,b2,T", CONFIGS)
def test_closed_form_matches_optax_adam(b1, b2, T):
    K = 6
    sim = ov.simulate_adam_after_clip(jnp.float32(0.37), b1, b2, 0.0, T, K)
    assert sim.updates.shape == (T - 1 + K,) and sim.c.shape == (K,)
    closed = ov.c_coefficient(b1, b2, T, jnp.arange(K))
    np.testing.assert_allclose(sim.c, closed, atol=1e-5, rtol=0)
    ref, _ = adam_np([0.37] * (T - 1), b1, b2, 0.0, K)
    np.testing.assert_allclose(ref[T - 1 :] / ref[T - 2], closed, atol=1e-5, rtol=0)


@pytest.mark.parametrize("b1,b2,T", CONFIGS[:4])
def test_closed_form_matches_optax_adam_float64(b1, b2, T):
    with jax.enable_x64(True):
        sim = ov.simulate_adam_after_clip(np.float64(-2.5), np.float64(b1), np.float64(b2), 0.0, T, 5)
        closed = ov.c_coefficient(np.float64(b1), np.float64(b2), T, jnp.arange(5))
        assert closed.dtype == jnp.float64
        np.testing.assert_allclose(sim.c, closed, rtol=1e-12)


@pytest.mark.parametrize("b1,b2,T", [(0.9, 0.95, 6), (0.5, 0.99, 3), (0.95, 0.999, 12)])
def test_eq36_holds_for_any_history_without_eps(b1, b2, T):
    # with eps = 0 the ratio depends only on the decay of m and v after the clip, not on the history
    hist = np.random.default_rng(T).normal(size=(T - 1, 4)) * np.array([1e-3, 1.0, 30.0, 0.2])
    sim = ov.simulate_adam_history(jnp.asarray(hist, jnp.float32), b1, b2, 0.0, 5)
    np.testing.assert_allclose(
        sim.c, np.broadcast_to(ov.c_coefficient(b1, b2, T, jnp.arange(5))[:, None], (5, 4)), atol=2e-5
    )


def test_simulation_vector_gradient_is_per_coordinate():
    g = jnp.array([1e-3, -4.0, 0.2], jnp.float32)
    sim = ov.simulate_adam_after_clip(g, 0.9, 0.95, 0.0, 11, 3, lr=0.1)
    assert sim.updates.shape == (13, 3) and sim.c.shape == (3, 3)
    np.testing.assert_allclose(
        sim.c, np.broadcast_to(ov.c_coefficient(0.9, 0.95, 11, jnp.arange(3))[:, None], (3, 3)), atol=1e-5
    )
    # the last gradient step is the steady step -lr sign(g) (bias correction, eps = 0)
    np.testing.assert_allclose(sim.updates[9], -0.1 * np.sign(g), rtol=1e-6)


# ---------------------------------------------------------------------------- Eq. 38


@pytest.mark.parametrize("eps", [1e-8, 1e-4, 1e-2, 0.3])
@pytest.mark.parametrize("g,b2,T", [(0.01, 0.99, 11), (1.0, 0.95, 4), (0.05, 0.999, 41)])
def test_eps_shortcut_is_exact_on_a_constant_history(eps, g, b2, T):
    b1, K = 0.9, 5
    ks = jnp.arange(K)
    sim = ov.simulate_adam_after_clip(jnp.float32(g), b1, b2, eps, T, K)
    shortcut = ov.c_coefficient(b1, b2, T, ks) * ov.eps_factor(g, b2, T, ks, eps)
    np.testing.assert_allclose(sim.c, shortcut, atol=1e-5, rtol=0)
    ref, _ = adam_np([g] * (T - 1), b1, b2, eps, K)
    np.testing.assert_allclose(ref[T - 1 :] / ref[T - 2], shortcut, atol=1e-5, rtol=0)
    exact = ov.c_coefficient_eps(b1, b2, T, ks, v_hat_before=g * g, eps=eps)
    np.testing.assert_allclose(exact, shortcut, rtol=2e-6)


@pytest.mark.parametrize("eps", [1e-3, 3e-3, 1e-2])
@pytest.mark.parametrize("b1,b2,T", [(0.9, 0.95, 12), (0.9, 0.999, 6), (0.5, 0.9, 9)])
def test_eq38_exact_on_a_varying_history(eps, b1, b2, T):
    K = 5
    ks = jnp.arange(K)
    hist = 0.01 * (1.0 + 0.6 * np.sin(np.arange(1, T)))  # |g| varies 4x, eps comparable
    sim = ov.simulate_adam_history(jnp.asarray(hist, jnp.float32), b1, b2, eps, K)
    ref, v_ref = adam_np(hist, b1, b2, eps, K)
    ref_c = ref[T - 1 :] / ref[T - 2]
    np.testing.assert_allclose(sim.c, ref_c, atol=1e-5)
    np.testing.assert_allclose(sim.v_hat, v_ref, rtol=1e-5)
    # Eq. 38 literally: first bracket of Eq. 36 times (sqrt(v_hat_{T-1}) + eps)/(sqrt(v_hat_{T+k}) + eps)
    literal = ov.first_moment_decay(b1, T, ks) * ov.eps_modulation(v_ref[T - 2], v_ref[T - 1 :], eps)
    np.testing.assert_allclose(literal, ref_c, atol=1e-6)
    exact = ov.c_coefficient_eps(b1, b2, T, ks, v_hat_before=v_ref[T - 2], eps=eps)
    np.testing.assert_allclose(exact, ref_c, atol=1e-6)
    # the constant-gradient shortcut (sqrt(v_hat) = |g_{T-1}|) is not exact here
    shortcut = ov.c_coefficient(b1, b2, T, ks) * ov.eps_factor(abs(hist[-1]), b2, T, ks, eps)
    assert np.max(np.abs(np.asarray(shortcut) - ref_c)) > 1e-4  # 100x the exact form's float32 error


def test_eps_modulation_reduces_to_eq36_second_bracket_at_eps_zero():
    T, ks = 7, jnp.arange(4)
    v_before = 0.3
    v_after = ov.second_moment_decay(0.95, T, ks) * v_before
    second = ov.c_coefficient(0.9, 0.95, T, ks) / ov.first_moment_decay(0.9, T, ks)
    np.testing.assert_allclose(ov.eps_modulation(v_before, v_after, 0.0), second, rtol=1e-6)
    np.testing.assert_allclose(
        ov.c_coefficient_eps(0.9, 0.95, T, ks, v_hat_before=v_before, eps=0.0),
        ov.c_coefficient(0.9, 0.95, T, ks),
        rtol=1e-6,
    )


def test_eps_factor_properties():
    ks = jnp.arange(8)
    np.testing.assert_array_equal(ov.eps_factor(0.3, 0.95, 6, ks, 0.0), np.ones(8))
    f = ov.eps_factor(0.3, 0.95, 6, ks, 1e-2)
    assert np.all(f < 1) and np.all(np.diff(f) < 0)  # shrinks more the longer v decays
    g, b2, e = 0.3, 0.95, 1e-2  # T -> inf: rho = b2^((k+1)/2)
    np.testing.assert_allclose(
        ov.eps_factor(g, b2, None, ks, e), (g + e) / (g + e / b2 ** ((np.arange(8) + 1) / 2)), rtol=1e-6
    )


# ---------------------------------------------------------------------------- the exact split of a step


def test_adam_update_split_sums_to_optax_adam():
    rng = np.random.default_rng(0)
    params = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 2))}
    opt = optax.adam(0.05, b1=0.9, b2=0.95, eps=1e-6)
    state = opt.init(params)
    for t in range(6):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        split = ov.adam_update_split(g, state[0], b1=0.9, b2=0.95, eps=1e-6, learning_rate=0.05)
        u, state = opt.update(g, state)
        total = jax.tree.map(lambda a, b: a + b, split.stale, split.fresh)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), total, u)
        if t == 0:  # no momentum yet
            jax.tree.map(lambda x: np.testing.assert_array_equal(x, 0.0), split.stale)
    # gradient zero: the whole step is stale momentum
    zero = jax.tree.map(jnp.zeros_like, params)
    split = ov.adam_update_split(zero, state[0], b1=0.9, b2=0.95, eps=1e-6, learning_rate=0.05)
    u, _ = opt.update(zero, state)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), split.stale, u)
    jax.tree.map(lambda x: np.testing.assert_array_equal(x, 0.0), split.fresh)


def test_momentum_update_split_sums_to_optax_sgd():
    opt = optax.sgd(0.1, momentum=0.8)
    p = jnp.zeros((4,))
    state = opt.init(p)
    rng = np.random.default_rng(1)
    for _ in range(4):
        g = jnp.asarray(rng.normal(size=4), jnp.float32)
        split = ov.momentum_update_split(g, state[0], decay=0.8, learning_rate=0.1)
        u, state = opt.update(g, state)
        np.testing.assert_allclose(split.stale + split.fresh, u, rtol=1e-6, atol=1e-7)


def test_log_ratio_jvps_match_finite_differences():
    rng = np.random.default_rng(2)
    W = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)

    def logp_fn(p):
        return jax.nn.log_softmax(W @ p["x"])

    params = {"x": jnp.asarray([0.1, -0.2, 0.3])}
    tangents = ({"x": jnp.asarray([1.0, 0.0, 0.0])}, {"x": jnp.asarray([0.2, -0.5, 0.4])})
    outs = ov.log_ratio_jvps(logp_fn, params, tangents)
    for t, out in zip(tangents, outs, strict=True):
        h = 1e-3
        fd = (logp_fn({"x": params["x"] + h * t["x"]}) - logp_fn({"x": params["x"] - h * t["x"]})) / (2 * h)
        np.testing.assert_allclose(out, fd, atol=1e-3)


# ---------------------------------------------------------------------------- jit, vmap, recompilation


def test_jit_vmap_over_every_argument_without_recompiling():
    @chex.assert_max_traces(n=1)
    def f(b1, b2, T, k):
        return ov.c_coefficient(b1, b2, T, k)

    fj = jax.jit(jax.vmap(f))
    b1 = jnp.array([0.0, 0.5, 0.9, 0.95], jnp.float32)
    b2 = jnp.array([0.9, 0.95, 0.95, 0.999], jnp.float32)
    T = jnp.array([2.0, 11.0, jnp.inf, 301.0], jnp.float32)
    k = jnp.array([0, 1, 4, 2], jnp.int32)
    out = fj(b1, b2, T, k)
    expected = [
        float(ov.c_coefficient(float(a), float(b), float(t), int(kk))) for a, b, t, kk in zip(b1, b2, T, k, strict=True)
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out[0] == 0.0 and float(out[2]) == pytest.approx((0.9 / math.sqrt(0.95)) ** 5, rel=1e-6)
    fj(b1 * 0.99, b2, T + 1, k)  # other values: no second trace (chex.assert_max_traces would raise)


def test_vmap_simulation_over_beta1_matches_closed_form_with_one_compile():
    b1 = jnp.linspace(0.5, 0.95, 5)
    sim = jax.vmap(lambda a: ov.simulate_adam_after_clip(0.2, a, 0.95, 0.0, 13, 4).c)(b1)
    closed = jax.vmap(lambda a: ov.c_coefficient(a, 0.95, 13, jnp.arange(4)))(b1)
    np.testing.assert_allclose(sim, closed, atol=1e-5)
    before = ov._simulate_adam_jit._cache_size()
    ov.simulate_adam_after_clip(0.2, 0.8, 0.9, 1e-8, 13, 4)
    ov.simulate_adam_after_clip(0.3, 0.7, 0.99, 0.0, 13, 4)
    assert ov._simulate_adam_jit._cache_size() - before <= 1


def test_simulation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="T must be"):
        ov.simulate_adam_after_clip(1.0, 0.9, 0.95, 0.0, 1, 3)  # T = 1: no gradient step before the clip
    with pytest.raises(ValueError, match="K must be"):
        ov.simulate_adam_after_clip(1.0, 0.9, 0.95, 0.0, 3, 2.0)
    with pytest.raises(ValueError, match="b1"):
        ov.simulate_adam_after_clip(1.0, 1.0, 0.95, 0.0, 3, 2)
    with pytest.raises(ValueError, match="b2"):
        ov.simulate_adam_after_clip(1.0, 0.9, 0.0, 0.0, 3, 2)
    with pytest.raises(ValueError, match="lr"):
        ov.simulate_adam_after_clip(1.0, 0.9, 0.95, 0.0, 3, 2, lr=0.0)
    with pytest.raises(ValueError, match="eps"):
        ov.simulate_adam_history(np.ones(3), 0.9, 0.95, -1.0, 2)
    with pytest.raises(ValueError, match="grads must be finite"):
        ov.simulate_adam_history(np.array([1.0, np.nan]), 0.9, 0.95, 0.0, 2)
    with pytest.raises(ValueError, match="grads must have shape"):
        ov.simulate_adam_history(np.zeros((0,)), 0.9, 0.95, 0.0, 2)


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
    # theta after 7 steps = 0.21 > 0.2: the gradient vanishes at step T = 8 (the paper's index), then C_{T,k}.
    lr, b1, b2, T, S = 0.03, 0.9, 0.95, 8, 20
    traj = jax.jit(lambda p: ov.simulate_inner_steps(clipped_toy(), p, optax.adam(lr, b1=b1, b2=b2, eps=0.0), S))(
        jnp.float32(0.0)
    )
    n = T - 1  # gradient steps (rows 0..n-1); rows n.. are steps T, T+1, ... with zero gradient
    grads_zero = traj.grad_norm == 0
    assert not grads_zero[:n].any() and grads_zero[n:].all()
    closed = ov.c_coefficient(b1, b2, T, jnp.arange(S - n))
    np.testing.assert_allclose(traj.update_norm[n:] / traj.update_norm[n - 1], closed, atol=1e-5)
    np.testing.assert_allclose(traj.update_ratio[n + 1 :], closed[1:] / closed[:-1], atol=1e-5)
    assert np.isnan(traj.update_ratio[0])
    # the escape beyond 1 + eps_high is lr * (T - 1 + sum_k C_{T,k})
    escape = float(traj.final_aux["ratio"])
    assert escape == pytest.approx(1 + lr * (n + float(closed.sum())), abs=1e-5)
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
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.03, b1=0.9, b2=0.95, eps=0.0)
    loss_fn = clipped_toy()
    p0 = jnp.float32(0.0)

    @chex.assert_max_traces(n=1)
    def run(lr, b1):
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
    run_j(lrs * 2, b1s)  # other values: no second trace
    # b1 = 0 (RMSProp-like): no momentum, the ratio stops after the step that crosses 1.2
    assert float(out.final_aux["ratio"][0]) == pytest.approx(1.21, abs=1e-5)
    assert np.all(np.asarray(out.final_aux["ratio"][1:]) > 1.24)


def test_inner_steps_rejects_bad_num_steps():
    with pytest.raises(ValueError, match="num_steps"):
        ov.simulate_inner_steps(clipped_toy(), jnp.float32(0.0), optax.adam(0.1), 0)
