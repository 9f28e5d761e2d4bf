"""Momentum-aware optax transforms of jgrpo.optim against textbook loops and toy GRPO problems."""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgrpo import optim

H = np.array([1.0, 4.0, 0.25], np.float64)
C = np.array([0.5, -1.0, 2.0], np.float64)


def quad_grad(x, batch):
    """Gradient of 0.5 sum h (x - c - 0.3 batch)^2: the 'batch' moves the minimum."""
    return H * (x - C - 0.3 * batch)


def textbook_adam(steps, *, lr, b1, b2, eps, reset_every=None, reset="all", gates=None, wd=0.0):
    """Plain-Python float64 Adam(W) loop on the quadratic, with optional resets / momentum gates."""
    x = np.zeros(3)
    m, v, t = np.zeros(3), np.zeros(3), 0
    xs = []
    for step in range(steps):
        batch = step // reset_every if reset_every else 0
        if reset_every and step % reset_every == 0:
            t = 0
            if reset == "all":
                m, v = np.zeros(3), np.zeros(3)
        g = quad_grad(x, batch)
        gate = 1.0 if gates is None else gates[step]
        t += 1
        m = b1 * gate * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        x = x - lr * (u + wd * x)
        xs.append(x.copy())
    return np.array(xs)


def run_transform(opt, steps, extra_fn):
    x = jnp.zeros(3, jnp.float32)
    state = opt.init(x)
    update = jax.jit(lambda g, s, p, extra: opt.update(g, s, p, **extra))
    xs = []
    for step in range(steps):
        extra = extra_fn(step)
        batch = extra.pop("_batch", 0)
        g = jnp.asarray(quad_grad(np.asarray(x, np.float64), batch), jnp.float32)
        u, state = update(g, state, x, extra)
        x = optax.apply_updates(x, u)
        xs.append(np.asarray(x))
    return np.array(xs), state


# ---------------------------------------------------------------------------- reset


@pytest.mark.parametrize("reset", ["all", "count"])
def test_reset_adam_against_textbook(reset):
    steps, every = 12, 4
    opt = optim.adam_with_reset(learning_rate=0.05, b1=0.9, b2=0.95, eps=1e-8, reset=reset)
    xs, state = run_transform(opt, steps, lambda s: {"new_batch": s % every == 0, "_batch": s // every})
    ref = textbook_adam(steps, lr=0.05, b1=0.9, b2=0.95, eps=1e-8, reset_every=every, reset=reset)
    np.testing.assert_allclose(xs, ref, rtol=1e-5, atol=1e-6)
    assert int(state[0].num_resets) == 3
    assert int(state[0].inner_state.count) == steps - 2 * every


def test_reset_really_zeroes_the_moments():
    opt = optim.scale_by_adam_with_reset(b1=0.9, b2=0.99)
    params = jnp.ones(3)
    state = opt.init(params)
    for _ in range(5):
        _, state = opt.update(jnp.array([1.0, -2.0, 3.0]), state, params)
    assert float(jnp.abs(state.inner_state.mu).sum()) > 0 and int(state.num_resets) == 0
    g = jnp.array([0.5, 0.5, -0.5])
    u, new = opt.update(g, state, params, new_batch=True)
    # after the reset: m = (1-b1) g, v = (1-b2) g^2, count = 1 -- a first-ever Adam step
    np.testing.assert_allclose(new.inner_state.mu, 0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(new.inner_state.nu, 0.01 * g**2, rtol=1e-6)
    assert int(new.inner_state.count) == 1 and int(new.num_resets) == 1
    first, _ = optax.scale_by_adam(b1=0.9, b2=0.99).update(g, optax.scale_by_adam(b1=0.9, b2=0.99).init(params))
    np.testing.assert_array_equal(u, first)
    # new_batch=False (or omitted) is plain Adam
    plain = optax.scale_by_adam(b1=0.9, b2=0.99)
    ps = plain.init(params)
    rs = opt.init(params)
    for i in range(4):
        gi = jnp.array([1.0, -2.0, 3.0]) * (i + 1)
        up, ps = plain.update(gi, ps)
        ur, rs = opt.update(gi, rs, params, new_batch=False)
        np.testing.assert_array_equal(up, ur)


def test_reset_on_new_batch_wraps_any_transform():
    opt = optim.reset_on_new_batch(optax.trace(decay=0.9))
    p = jnp.zeros(2)
    s = opt.init(p)
    _, s = opt.update(jnp.ones(2), s, p)
    _, s = opt.update(jnp.ones(2), s, p)
    np.testing.assert_allclose(s.inner_state.trace, 1.9)
    u, s = opt.update(jnp.ones(2), s, p, new_batch=jnp.array(True))
    np.testing.assert_allclose(u, 1.0)


# ---------------------------------------------------------------------------- gate


def test_gate_with_zero_clip_fraction_is_plain_adam_exactly():
    opt = optim.gated_adam(learning_rate=0.05, b1=0.9, b2=0.95)
    ref = optax.adam(0.05, b1=0.9, b2=0.95)
    p = jnp.zeros(3)
    s, rs = opt.init(p), ref.init(p)
    for _ in range(8):
        g = jnp.asarray(quad_grad(np.asarray(p, np.float64), 0), jnp.float32)
        u, s = opt.update(g, s, p, clip_fraction=0.0)
        ur, rs = ref.update(g, rs, p)
        np.testing.assert_array_equal(u, ur)
        p = optax.apply_updates(p, u)
    assert int(s[0].num_gated) == 0 and float(s[0].gate) == 1.0


def test_gated_adam_against_textbook():
    steps = 10
    fracs = np.array([0, 0, 0.25, 0.5, 1.0, 0, 0.1, 0.9, 0, 0.4])
    opt = optim.gated_adam(learning_rate=0.05, b1=0.9, b2=0.95, eps=1e-8)
    xs, state = run_transform(opt, steps, lambda s: {"clip_fraction": float(fracs[s])})
    ref = textbook_adam(steps, lr=0.05, b1=0.9, b2=0.95, eps=1e-8, gates=1 - fracs)
    np.testing.assert_allclose(xs, ref, rtol=1e-5, atol=1e-6)
    assert int(state[0].num_gated) == 6
    assert float(state[0].gate) == pytest.approx(0.6)


def test_all_clipped_with_zero_gradient_stops_the_overshoot():
    opt = optim.scale_by_gated_adam(b1=0.9, b2=0.95)
    p = jnp.zeros(2)
    s = opt.init(p)
    for _ in range(10):
        _, s = opt.update(jnp.ones(2), s, p)
    u_stale, _ = opt.update(jnp.zeros(2), s, p)  # plain Adam: C_T ~ 0.92 of the last step
    assert float(u_stale[0]) > 0.9
    u, s2 = opt.update(jnp.zeros(2), s, p, all_clipped=True)
    np.testing.assert_array_equal(u, 0.0)
    assert float(s2.gate) == 0.0
    u, _ = opt.update(jnp.zeros(2), s, p, clip_fraction=1.0)
    np.testing.assert_array_equal(u, 0.0)


def test_gate_rejects_non_scalar_clip_fraction():
    opt = optim.scale_by_gated_adam()
    s = opt.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="clip_fraction must be a scalar"):
        opt.update(jnp.ones(2), s, None, clip_fraction=jnp.ones(2))


# ---------------------------------------------------------------------------- composition


def test_chain_with_weight_decay_matches_adamw():
    opt = optax.chain(
        optim.scale_by_gated_adam(b1=0.9, b2=0.95),
        optax.add_decayed_weights(0.1),
        optax.scale_by_learning_rate(0.05),
    )
    xs, _ = run_transform(opt, 8, lambda s: {"clip_fraction": 0.0, "new_batch": False})
    ref = textbook_adam(8, lr=0.05, b1=0.9, b2=0.95, eps=1e-8, wd=0.1)
    np.testing.assert_allclose(xs, ref, rtol=1e-5, atol=1e-6)
    xs2, _ = run_transform(optax.adamw(0.05, b1=0.9, b2=0.95, weight_decay=0.1), 8, lambda s: {})
    np.testing.assert_allclose(xs, xs2, rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_and_vmap_one_compile():
    gated = optax.inject_hyperparams(optim.gated_adam)(learning_rate=0.05, b1=0.9, b2=0.95)
    reset = optax.inject_hyperparams(optim.adam_with_reset)(learning_rate=0.05, b1=0.9, b2=0.95, reset="count")
    p = jnp.zeros(3)

    @jax.jit
    @jax.vmap
    @chex.assert_max_traces(n=1)
    def run_j(lr, b1):
        out = []
        for opt, extra, shift in ((gated, {"clip_fraction": 0.5}, 0.0), (reset, {"new_batch": True}, 0.3)):
            s = opt.init(p)
            s.hyperparams["learning_rate"] = lr
            s.hyperparams["b1"] = b1
            x = p
            for i in range(3):  # with reset_every=1 every step is a new batch (the minimum moves by 0.3)
                u, s = opt.update(H * (x - C - shift * i), s, x, **extra)
                x = optax.apply_updates(x, u)
            out.append(x)
        return out

    lrs, b1s = jnp.array([0.01, 0.05, 0.1]), jnp.array([0.5, 0.9, 0.0])
    xg, xr = run_j(lrs, b1s)
    for i in range(3):
        ref_g = textbook_adam(3, lr=float(lrs[i]), b1=float(b1s[i]), b2=0.95, eps=1e-8, gates=[0.5] * 3)
        np.testing.assert_allclose(xg[i], ref_g[-1], rtol=1e-5, atol=1e-6)
        ref_r = textbook_adam(3, lr=float(lrs[i]), b1=float(b1s[i]), b2=0.95, eps=1e-8, reset_every=1, reset="count")
        np.testing.assert_allclose(xr[i], ref_r[-1], rtol=1e-5, atol=1e-6)
    run_j(lrs * 0.5, b1s)  # other values, same shapes: no second trace (chex.assert_max_traces would raise)


# ---------------------------------------------------------------------------- optax habits


FULL_OPTIMIZERS = [optim.adam_with_reset, optim.gated_adam, optim.clip_gated_adam]
SCALE_TRANSFORMS = [
    optim.scale_by_adam_with_reset,
    optim.scale_by_gated_adam,
    optim.scale_by_clip_gated_adam,
    optim.project_clipped,
    optim.trust_region_guard,
]


@pytest.mark.parametrize("factory", FULL_OPTIMIZERS, ids=lambda f: f.__name__)
def test_full_optimizers_are_called_like_optax_adam(factory):
    # learning rate positional (float or schedule), Adam's other hyperparameters keyword-only with optax's names
    params = inspect.signature(factory).parameters
    names = list(params)
    assert names[0] == "learning_rate" and params["learning_rate"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names[1:])
    adam = inspect.signature(optax.adam).parameters
    for n in ("b1", "b2", "eps", "eps_root", "mu_dtype"):
        assert n in params and params[n].default == adam[n].default, n
    p, g = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.5, -0.25, 1e-3])
    for lr in (1e-3, optax.linear_schedule(1e-3, 0.0, 10)):
        ours, ref = factory(lr), optax.adam(lr)
        s, rs = ours.init(p), ref.init(p)
        for _ in range(2):  # nothing clipped, no new batch, no gate: exactly Adam (the same ops, bit for bit)
            u, s = ours.update(g, s, p, ratio_fn=lambda q: (jnp.ones(2), jnp.ones(2)))
            ur, rs = ref.update(g, rs, p)
            np.testing.assert_array_equal(u, ur)


@pytest.mark.parametrize("factory", SCALE_TRANSFORMS, ids=lambda f: f.__name__)
def test_transform_hyperparameters_are_keyword_only(factory):
    params = inspect.signature(factory).parameters
    positional = [n for n, p in params.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional in ([], ["ratio_fn"]), positional  # a callable may come first, as optax's wrappers take theirs
    if "b1" in params:
        with pytest.raises(TypeError):
            factory(None, 0.9) if positional else factory(0.9)


def test_counters_saturate_instead_of_overflowing():
    # optax.safe_increment: a diagnostic counter at int32's maximum stays there (plain + 1 would wrap to -2^31)
    opt = optim.reset_on_new_batch(optax.scale_by_adam())
    p = jnp.zeros(2)
    s = opt.init(p)._replace(num_resets=jnp.asarray(np.iinfo(np.int32).max, jnp.int32))
    _, s = opt.update(jnp.ones(2), s, p, new_batch=True)
    assert int(s.num_resets) == np.iinfo(np.int32).max
    _, s2 = opt.update(jnp.ones(2), opt.init(p), p, new_batch=False)
    assert int(s2.num_resets) == 0


def test_clip_excess_is_the_one_predicate_behind_violation_weights_and_escape():
    from analysis.overshoot import escape

    rng = np.random.default_rng(0)
    ratio = jnp.asarray(rng.uniform(0.5, 1.5, (3, 4, 6)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32).at[0, 0].set(0.0)
    mask = jnp.asarray(rng.uniform(size=(3, 4, 6)) < 0.8, jnp.float32)
    lo, hi = 0.2, 0.28
    # the clipped set written out as the paper states it (float64 NumPy), against each reduction
    r, a, m = np.asarray(ratio, np.float64), np.asarray(adv, np.float64)[..., None], np.asarray(mask) > 0
    above = m & (a > 0) & (r > 1 + np.float32(hi))
    below = m & (a < 0) & (r < 1 - np.float32(lo))
    e = optim.clip_excess(ratio, adv[..., None], mask, eps_low=lo, eps_high=hi)
    np.testing.assert_array_equal(np.asarray(e.high > 0), above)
    np.testing.assert_array_equal(np.asarray(e.low > 0), below)
    w = optim.clipped_weights(ratio, adv[..., None], mask, eps_low=lo, eps_high=hi)
    np.testing.assert_array_equal(np.asarray(w), np.where(above, 1.0, np.where(below, -1.0, 0.0)))
    v = optim.violation(ratio, adv[..., None], mask, eps_low=lo, eps_high=hi)
    expected = np.sum(np.where(above, r - (1 + hi), 0.0) + np.where(below, (1 - lo) - r, 0.0))
    assert float(v) == pytest.approx(expected, rel=1e-5)
    esc = escape(ratio, adv, mask, eps_low=lo, eps_high=hi)
    n = m.sum()
    assert float(esc.frac_high) == pytest.approx(above.sum() / n) and float(esc.frac_low) == pytest.approx(
        below.sum() / n
    )
    assert float(esc.frac) == pytest.approx((above.sum() + below.sum()) / n)
    assert float(esc.max_excess_high) == pytest.approx(np.max(np.where(above, r - (1 + hi), 0.0)), rel=1e-6)
    assert float(esc.max_excess_low) == pytest.approx(np.max(np.where(below, (1 - lo) - r, 0.0)), rel=1e-6)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="reset must be one of"):
        optim.scale_by_adam_with_reset(reset="moments")
    with pytest.raises(ValueError, match=r"b1 must be a number in \[0, 1\)"):
        optim.scale_by_gated_adam(b1=1.0)
    with pytest.raises(ValueError, match="max_backtracks"):
        optim.trust_region_guard(max_backtracks=-1)
    with pytest.raises(ValueError, match="eps_high"):
        optim.trust_region_guard(eps_high=-0.1)


# ---------------------------------------------------------------------------- trust-region guard


V_TOK, EPS_LOW, EPS_HIGH = 5, 0.2, 0.2
TOKENS = jnp.array([0, 1, 2, 3, 1, 4])
ADV = jnp.array([1.0, -1.0, 0.5, -0.5, -1.0, 1.0])
LOGITS_OLD = jnp.array([0.3, -0.2, 0.1, 0.0, -0.4])


def ratios(logits):
    """Tabular softmax policy: s_i = pi(y_i)/pi_old(y_i) for six sampled tokens."""
    logp = jax.nn.log_softmax(logits)[TOKENS]
    logp_old = jax.nn.log_softmax(LOGITS_OLD)[TOKENS]
    return jnp.exp(logp - logp_old)


def grpo_loss(logits):
    s = ratios(logits)
    return -jnp.mean(jnp.minimum(s * ADV, jnp.clip(s, 1 - EPS_LOW, 1 + EPS_HIGH) * ADV))


def run_toy(opt, steps=40):
    ratio_fn = lambda p: (ratios(p), ADV)

    @jax.jit
    def run():
        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(grpo_loss)(p), s, p, ratio_fn=ratio_fn)
            p = optax.apply_updates(p, u)
            return (p, s), optim.violation(ratios(p), ADV, eps_low=EPS_LOW, eps_high=EPS_HIGH)

        (_, s), viols = jax.lax.scan(step, (LOGITS_OLD, opt.init(LOGITS_OLD)), None, length=steps)
        return viols, s

    viols, s = run()
    return np.asarray(viols), s


def test_violation_hand_case():
    r = jnp.array([1.3, 0.7, 1.3, 0.7, 1.0])
    a = jnp.array([1.0, -1.0, -1.0, 1.0, 1.0])  # only the first two escape in their favoured direction
    assert float(optim.violation(r, a, eps_low=0.2, eps_high=0.2)) == pytest.approx(0.2, abs=1e-6)
    assert float(optim.violation(r, a, jnp.array([0, 1, 1, 1, 1]), eps_low=0.2, eps_high=0.2)) == pytest.approx(0.1)


def test_guard_keeps_ratios_in_the_trust_region():
    base = optax.adam(0.1, b1=0.9, b2=0.95)
    viols, _ = run_toy(optax.with_extra_args_support(base))
    assert viols.max() > 0.05  # plain Adam overshoots the clip region (Prop. 3)
    guarded = optax.chain(base, optim.trust_region_guard(eps_low=EPS_LOW, eps_high=EPS_HIGH, max_backtracks=12))
    viols, state = run_toy(guarded)
    assert viols.max() == 0.0
    g = state[1]
    assert int(g.total_backtracks) > 0 and 0.0 <= float(g.scale) <= 1.0


def test_guard_is_identity_inside_the_region():
    guard = optim.trust_region_guard(lambda p: (ratios(p), ADV), eps_low=EPS_LOW, eps_high=EPS_HIGH)
    update = jax.jit(guard.update)
    s = guard.init(LOGITS_OLD)
    u = 1e-3 * jnp.ones(V_TOK)
    out, s = update(u, s, LOGITS_OLD)
    np.testing.assert_array_equal(out, u)
    assert int(s.num_backtracks) == 0 and float(s.scale) == 1.0
    # a huge step toward a favoured token is halved until it fits, or rejected
    big = jnp.array([0.0, 0.0, 0.0, 0.0, 50.0])
    out, s = update(big, s, LOGITS_OLD)
    assert int(s.num_backtracks) > 0
    assert float(optim.violation(ratios(LOGITS_OLD + out), ADV, eps_low=EPS_LOW, eps_high=EPS_HIGH)) == 0.0
    tiny = optim.trust_region_guard(lambda p: (ratios(p), ADV), eps_low=EPS_LOW, eps_high=EPS_HIGH, max_backtracks=1)
    out, s = jax.jit(tiny.update)(big, tiny.init(LOGITS_OLD), LOGITS_OLD)
    np.testing.assert_array_equal(out, 0.0)
    assert int(s.num_rejected) == 1 and int(s.num_backtracks) == 1


def test_guard_needs_ratio_fn_and_params():
    guard = optim.trust_region_guard()
    s = guard.init(LOGITS_OLD)
    with pytest.raises(ValueError, match="needs ratio_fn"):
        guard.update(jnp.zeros(V_TOK), s, LOGITS_OLD)
    with pytest.raises(ValueError, match="needs params"):
        guard.update(jnp.zeros(V_TOK), s, None, ratio_fn=lambda p: (ratios(p), ADV))


# ---------------------------------------------------------------------------- projection and strong gate

M_TOK, N_PAR = 12, 5
_rng = np.random.default_rng(7)
X = _rng.normal(size=(M_TOK, N_PAR)) / np.sqrt(N_PAR)
A_SIGN = np.where(np.arange(M_TOK) % 3 == 0, -1.0, 1.0)
A_SIGN[5] = 0.0  # an unconstrained token


def lin_ratio_fn(p):
    """s_j = exp(X_j · θ): a log-linear policy over 12 tokens (J = diag(s) X)."""
    return jnp.exp(jnp.asarray(X, jnp.float32) @ p), jnp.asarray(A_SIGN, jnp.float32)


def lin_loss(p):
    s, a = lin_ratio_fn(p)
    return -jnp.mean(jnp.minimum(s * a, jnp.clip(s, 1 - EPS_LOW, 1 + EPS_HIGH) * a))


def clipped_np(theta):
    s = np.exp(X @ theta)
    beyond = ((A_SIGN > 0) & (s > 1 + EPS_HIGH)) | ((A_SIGN < 0) & (s < 1 - EPS_LOW))
    return s, np.where(beyond, np.sign(A_SIGN), 0.0)


def project_np(u, theta, rounds):
    """Textbook float64 projection (loops over rounds; explicit Jacobian J = diag(s) X)."""
    s, w = clipped_np(theta)
    J = s[:, None] * X
    u = np.array(u, np.float64)
    for _ in range(rounds):
        dz = w * (J @ u)
        active = (w != 0) & (dz > 0)
        d = J.T @ np.where(active, w, 0.0)
        du, dd = dz[active].sum(), d @ d
        if du > 0 and dd > 0:
            u = u - du / dd * d
    return u


def gated_adam_np(steps, *, lr, b1, b2, eps, mode, drop):
    """Textbook float64 Adam with the strong gate on the log-linear GRPO toy."""
    theta = np.zeros(N_PAR)
    m, v = np.zeros(N_PAR), np.zeros(N_PAR)
    out = []
    for t in range(1, steps + 1):
        s, w = clipped_np(theta)
        g = np.asarray(jax.grad(lin_loss)(jnp.asarray(theta, jnp.float32)), np.float64)
        d = (s[:, None] * X).T @ w
        fill = (1 - b1 ** (t - 1)) * g if drop == "restart" else np.zeros_like(m)
        if mode == "parameter":
            m = np.where(d * m < 0, fill, m)
        elif t > 1:
            vh = v / (1 - b2 ** (t - 1))
            if np.sum(d * m / (np.sqrt(vh) + eps)) < 0:
                m = fill
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out.append(theta.copy())
    return np.array(out)


@pytest.mark.parametrize("rounds", [1, 3])
def test_projection_against_textbook(rounds):
    proj = optim.project_clipped(lin_ratio_fn, eps_low=EPS_LOW, eps_high=EPS_HIGH, rounds=rounds)
    update = jax.jit(proj.update)
    rng = np.random.default_rng(rounds)
    hit = 0
    for _ in range(6):
        theta = rng.normal(size=N_PAR) * 0.6
        u = rng.normal(size=N_PAR) * 0.1
        got, state = update(jnp.asarray(u, jnp.float32), proj.init(None), jnp.asarray(theta, jnp.float32))
        ref = project_np(u, theta, rounds)
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-6)
        hit += int(not np.allclose(ref, u))
        assert float(state.outward_after) <= float(state.outward_before) + 1e-6
        assert int(state.num_clipped) == int(np.sum(clipped_np(theta)[1] != 0))
    assert hit >= 3  # the cases really project


def test_projection_removes_the_aggregate_outward_motion():
    theta = jnp.asarray(np.random.default_rng(3).normal(size=N_PAR) * 0.8, jnp.float32)
    u = jnp.asarray(np.random.default_rng(4).normal(size=N_PAR) * 0.1, jnp.float32)
    proj = optim.project_clipped(lin_ratio_fn, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    got, state = jax.jit(proj.update)(u, proj.init(None), theta)
    s, w = clipped_np(np.asarray(theta, np.float64))
    J = s[:, None] * X
    dz_before, dz_after = w * (J @ np.asarray(u)), w * (J @ np.asarray(got))
    active = (w != 0) & (dz_before > 0)
    assert active.any()
    assert abs(dz_after[active].sum()) < 1e-5 * max(1.0, dz_before[active].sum())  # first order: 0 in aggregate
    assert float(state.removed) > 0 and int(state.num_projected) == 1


def test_projection_is_exactly_adam_when_nothing_is_clipped():
    lr = 0.01
    opt = optax.chain(optax.adam(lr, b1=0.9, b2=0.95), optim.project_clipped(eps_low=EPS_LOW, eps_high=EPS_HIGH))
    ref = optax.adam(lr, b1=0.9, b2=0.95)
    p, pr = jnp.zeros(N_PAR), jnp.zeros(N_PAR)
    s, sr = opt.init(p), ref.init(pr)
    zero_adv = lambda q: (lin_ratio_fn(q)[0], jnp.zeros(M_TOK))
    update = jax.jit(lambda g, s, p: opt.update(g, s, p, ratio_fn=zero_adv))
    update_ref = jax.jit(ref.update)
    for _ in range(6):
        g = jax.grad(lin_loss)(p)
        u, s = update(g, s, p)
        ur, sr = update_ref(g, sr, pr)
        np.testing.assert_allclose(u, ur, rtol=1e-6, atol=1e-12)  # two compiled programs: ulp-level fusion
        p, pr = optax.apply_updates(p, u), optax.apply_updates(pr, ur)
    assert int(s[1].num_projected) == 0


@pytest.mark.parametrize("mode,drop", [("parameter", "restart"), ("parameter", "zero"), ("global", "restart")])
def test_strong_gate_against_textbook(mode, drop):
    lr, steps = 0.08, 14
    opt = optim.clip_gated_adam(lr, ratio_fn=lin_ratio_fn, b1=0.9, b2=0.95, eps=1e-8, mode=mode, drop=drop)
    p = jnp.zeros(N_PAR)
    s = opt.init(p)
    update = jax.jit(opt.update)
    xs = []
    for _ in range(steps):
        u, s = update(jax.grad(lin_loss)(p), s, p)
        p = optax.apply_updates(p, u)
        xs.append(np.asarray(p))
    ref = gated_adam_np(steps, lr=lr, b1=0.9, b2=0.95, eps=1e-8, mode=mode, drop=drop)
    np.testing.assert_allclose(np.array(xs), ref, rtol=1e-4, atol=1e-5)
    assert int(s[0].num_gated) > 0  # the toy clips, so the gate acts


def test_strong_gate_is_exactly_adam_when_nothing_is_clipped():
    opt = optim.clip_gated_adam(learning_rate=0.05, b1=0.9, b2=0.95)
    ref = optax.adam(0.05, b1=0.9, b2=0.95)
    p = jnp.zeros(3)
    s, rs = opt.init(p), ref.init(p)
    inside = lambda q: (jnp.ones(4), jnp.array([1.0, -1.0, 1.0, 0.0]), jnp.ones(4))  # every ratio at 1
    update = jax.jit(lambda g, s, p: opt.update(g, s, p, ratio_fn=inside))
    update_ref = jax.jit(ref.update)
    for _ in range(8):
        g = jnp.asarray(quad_grad(np.asarray(p, np.float64), 0), jnp.float32)
        u, s = update(g, s, p)
        ur, rs = update_ref(g, rs, p)
        np.testing.assert_allclose(u, ur, rtol=1e-6, atol=1e-12)  # two compiled programs: ulp-level fusion
        p = optax.apply_updates(p, u)
    assert int(s[0].num_gated) == 0 and float(s[0].gated_frac) == 0.0


def test_strong_gate_stops_a_lone_clipped_coordinate():
    # one parameter, one token with A > 0 already beyond 1.2; zero gradient: Adam would step by C_T, the gate by 0
    ratio_fn = lambda q: (jnp.exp(q), jnp.ones(1))
    gated = optim.scale_by_clip_gated_adam(ratio_fn, b1=0.9, b2=0.95, eps_low=0.2, eps_high=0.2)
    plain = optax.scale_by_adam(b1=0.9, b2=0.95)
    p = jnp.zeros(1)
    s, sp = gated.init(p), plain.init(p)
    g_update, p_update = jax.jit(gated.update), jax.jit(plain.update)
    for _ in range(5):  # descent gradient -1 pushes the log-ratio up
        _, s = g_update(-jnp.ones(1), s, p)
        _, sp = p_update(-jnp.ones(1), sp, p)
    beyond = jnp.array([0.3])  # s = 1.35 > 1.2
    u, s = g_update(jnp.zeros(1), s, beyond)
    up, _ = p_update(jnp.zeros(1), sp, beyond)
    from analysis.overshoot import c_coefficient

    # plain Adam keeps moving it out by C_6 of Eq. 32 (five gradient steps, the gradient vanishes at step 6)
    assert float(-up[0]) == pytest.approx(float(c_coefficient(0.9, 0.95, 6)), rel=1e-5)
    np.testing.assert_array_equal(u, 0.0)
    assert float(s.gated_frac) == 1.0 and float(s.gated_mass) == 1.0


def test_projection_and_gate_cut_the_overshoot_of_the_toy():
    base = optax.adam(0.1, b1=0.9, b2=0.95)
    adam_viol, _ = run_toy(optax.with_extra_args_support(base))
    proj = optax.chain(base, optim.project_clipped(eps_low=EPS_LOW, eps_high=EPS_HIGH, rounds=2))
    proj_viol, _ = run_toy(proj)
    gate = optim.clip_gated_adam(learning_rate=0.1, b1=0.9, b2=0.95, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    gate_viol, _ = run_toy(gate)
    assert adam_viol.max() > 0.05
    assert proj_viol.max() < 0.5 * adam_viol.max() and gate_viol.max() < 0.5 * adam_viol.max()


def test_new_transforms_validate():
    with pytest.raises(ValueError, match="rounds"):
        optim.project_clipped(rounds=0)
    with pytest.raises(ValueError, match="eps_low"):
        optim.project_clipped(eps_low=-0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        optim.scale_by_clip_gated_adam(mode="token")
    with pytest.raises(ValueError, match="drop must be one of"):
        optim.scale_by_clip_gated_adam(drop="halve")
    with pytest.raises(ValueError, match=r"b2 must be a number in \[0, 1\)"):
        optim.scale_by_clip_gated_adam(b2=1.0)
    proj = optim.project_clipped()
    with pytest.raises(ValueError, match="needs ratio_fn"):
        proj.update(jnp.zeros(2), proj.init(None), jnp.zeros(2))
    gate = optim.scale_by_clip_gated_adam()
    with pytest.raises(ValueError, match="needs params"):
        gate.update(jnp.zeros(2), gate.init(jnp.zeros(2)), None, ratio_fn=lambda q: (q, q))
    with pytest.raises(ValueError, match="ratio_fn must return"):
        proj.update(jnp.zeros(2), proj.init(None), jnp.zeros(2), ratio_fn=lambda q: q)
