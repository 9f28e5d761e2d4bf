"""Prop. 2 (reward scaling under Adam(W)): analysis.reward_scale.

Layers: the optimizers against optax and hand arithmetic; the inner-loop
trajectories of dr_grpo against an independent float64 NumPy loop (the gradient
of Eq. 1 for a tabular softmax policy, ∇log π = onehot − π, and Adam's
Eqs. 24–27 / SGD written out); the reward degree of every preset against the
objective itself (J_policy(θ; φr) = φ^d J_policy(θ; r) at a θ ≠ θ_old); the
invariance and its breaking factors on one shared compiled grid; the noise-floor
machinery (reorderings, φ = 1 ± 1 ulp); bf16; one compile per sweep; bad input.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrpo
from analysis import reward_scale as rs
from jgrpo import policies as P

V, T, B, G = 5, 6, 2, 4
STEPS = 8
PHIS = np.array([0.1, 0.5, 2.0, 10.0], np.float32)
POW2 = np.array([p in (0.5, 2.0) for p in PHIS])
TAB = P.tabular_logprob
LIMIT = 1e-30  # Adam's ε standing for ε → 0

# (name, sgd, beta, eps, weight_decay, l2, learning rate) — one compiled program per preset serves them all
ROWS = [
    ("adamw", 0, 0.0, LIMIT, 0.0, 0.0, 1e-2),
    ("adamw_wd", 0, 0.0, LIMIT, 0.1, 0.0, 1e-2),
    ("adam_l2", 0, 0.0, LIMIT, 0.0, 0.1, 1e-2),
    ("beta", 0, 0.04, LIMIT, 0.0, 0.0, 1e-2),
    ("eps", 0, 0.0, 1e-3, 0.0, 0.0, 1e-2),
    ("eps_wd", 0, 0.0, 1e-3, 0.1, 0.0, 1e-2),
    ("eps_l2", 0, 0.0, 1e-3, 0.0, 0.1, 1e-2),
    ("sgd", 1, 0.0, LIMIT, 0.0, 0.0, 0.5),
    ("sgd_wd", 1, 0.0, LIMIT, 0.1, 0.0, 0.5),
]
ROW = {r[0]: i for i, r in enumerate(ROWS)}


def _hypers(rows=ROWS):
    cols = list(zip(*rows, strict=True))
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    hyper = rs.OptimizerHyper(
        learning_rate=f32(cols[6]), eps=f32(cols[3]), weight_decay=f32(cols[4]), l2=f32(cols[5]), sgd=f32(cols[1])
    )
    return hyper, f32(cols[2])


def _data(seed: int, kind: str):
    rng = np.random.default_rng(seed)
    params = P.tabular_init(jax.random.key(seed), vocab=V, max_len=T, scale=1.0)
    tokens = rng.integers(0, V, size=(B, G, T)).astype(np.int32)
    lengths = rng.integers(2, T + 1, size=(B, G))
    mask = (np.arange(T) < lengths[..., None]).astype(np.float32)
    rewards = (rng.random((B, G)) < 0.5) if kind == "binary" else rng.random((B, G))
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # no all-equal group
    logp, entropy = P.tabular_logprob_and_entropy(params, tokens)
    ref = {"logits": params["logits"] + 0.3 * rng.normal(size=params["logits"].shape).astype(np.float32)}
    batch = jgrpo.GroupBatch(
        mask=mask,
        logp_old=np.asarray(logp),
        rewards=rewards.astype(np.float32),
        logp_ref=np.asarray(TAB(ref, tokens)),
        tokens=tokens,
        entropy=np.asarray(entropy),
    )
    return params, batch, np.zeros((B, 1), np.int32), rs.random_permutations(rng, 2, B, G)


def _stack(items):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *items)


@pytest.fixture(scope="module")
def data():
    items = [_data(seed, kind) for seed, kind in ((0, "binary"), (1, "uniform"), (2, "uniform"))]
    return tuple(_stack([x[i] for x in items]) for i in range(4))


@pytest.fixture(scope="module")
def grids(data):
    """deviation_grid of dr_grpo (d = 1) and grpo (d = 0) over every row: two compiles for most tests."""
    params, batch, prompt, perms = data
    hyper, betas = _hypers()
    out = {}
    for name in ("dr_grpo", "grpo"):
        d = rs.deviation_grid(
            jgrpo.methods.get(name), TAB, params, batch, PHIS, prompt=prompt,
            num_steps=STEPS, optimizer="adamw_or_sgd", hypers=hyper, betas=betas, permutations=perms,
        )  # fmt: skip
        out[name] = jax.tree.map(np.asarray, d)
    return out


def _log_ratio(d, row):
    """Pooled log10(max deviation / max floor) of one row over the data sets."""
    return float(np.log10(np.max(d.max_rel_param_dev[:, row]) / np.max(d.noise_floor[:, row])))


# ----------------------------------------------------------------------------- the reward degree


DEGREES = {
    "grpo": 0, "grpo_v32": 1, "gspo": 0, "gtpo": 1, "dapo": 0, "cppo": None, "dr_grpo": 1, "gpg": 1, "cispo": 0,
    "gcpo": 0, "bnpo": 0, "gmpo": 0, "sapo": 0, "rloo": 1,
}  # fmt: skip


def test_reward_degree_table():
    assert set(DEGREES) == set(jgrpo.methods.names())
    for name, d in DEGREES.items():
        assert rs.reward_degree(jgrpo.methods.get(name)) == d, name
    assert rs.reward_degree(jgrpo.methods.get("grpo", flavor="verl")) is None  # sigma + 1e-6 is not ∝ phi
    assert rs.reward_degree(jgrpo.methods.get("gpg", f_norm="batch_std")) == 0
    assert rs.reward_degree(jgrpo.methods.get("grpo", f_norm="batch_std")) == -1  # two 1/sigma factors
    with pytest.raises(TypeError, match="spec must be a jgrpo.MethodSpec"):
        rs.reward_degree("grpo")


@pytest.mark.parametrize("name", sorted(DEGREES))
def test_reward_degree_matches_the_objective(name):
    """J_policy(θ; φ r) = φ^d J_policy(θ; r) at ratios ≠ 1 — and for d = None some φ breaks homogeneity."""
    from tests.conftest import make_batch

    spec = jgrpo.methods.get(name)
    batch, logp = make_batch(seed=3, b=2, g=4, t=6, empty=False, spread=0.1)
    rewards = np.array([[0.9, 0.05, 0.3, 0.62], [0.1, 0.55, 0.7, 0.2]], np.float32)
    # entropies below GTPO's threshold (ln 2), so that its δ filter keeps every completion and J is non-trivial
    batch = dataclasses.replace(batch, rewards=rewards, entropy=np.asarray(batch.entropy) * 0.3)

    def j_policy(phi, magnitude=False):
        t = jgrpo.terms(spec, jnp.asarray(logp), rs.scale_rewards(batch, phi))
        x = jnp.abs(t.alpha * t.term) if magnitude else t.alpha * t.term
        return np.asarray(jnp.sum(x, axis=(-2, -1)), np.float64)

    base = j_policy(1.0)
    assert np.all(np.abs(base) > 1e-4), base  # a non-trivial objective at this θ
    # float32 rounding of a sum is relative to the sum of the magnitudes (the second group's J cancels to ~5%
    # of it), so the tolerance is 2e-5 of Σ|α·term| -- a wrong degree d is off by a factor φ^±1
    mag = j_policy(1.0, magnitude=True)
    d = rs.reward_degree(spec)
    for phi in (0.25, 4.0, 10.0):
        if d is not None:
            err = np.abs(j_policy(phi) - phi**d * base)
            assert np.all(err <= 2e-5 * phi**d * mag), (name, phi, err, mag)
    if d is None:  # cppo: gamma = 0.1 prunes every completion at phi = 0.1 (|A| < 0.1) but none at phi = 1
        assert not np.allclose(j_policy(0.1), 0.1 * base, rtol=1e-3)
        assert not np.allclose(j_policy(0.1), base, rtol=1e-3)


def test_prunes_on_standardised_recognises_an_option():
    """Table 1's CPPO prunes on centred advantages; a prune_* field naming standardisation is recognised."""
    assert rs.prunes_on_standardised(jgrpo.methods.get("cppo")) is False
    assert rs.prunes_on_standardised(jgrpo.methods.get("grpo")) is False

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Spec(jgrpo.MethodSpec):
        prune_on: str = "centred"

    std = Spec(prune_gamma=0.5, prune_on="standardised")
    assert rs.prunes_on_standardised(std) is True
    assert rs.reward_degree(std) == 0
    assert rs.prunes_on_standardised(Spec(prune_gamma=0.5)) is False
    assert rs.reward_degree(Spec(prune_gamma=0.5)) is None
    assert rs.prunes_on_standardised(Spec(prune_gamma=None, prune_on="standardised")) is False


# ----------------------------------------------------------------------------- optimizers


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {"a": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}


def _updates(opt, params, grads_seq):
    state = opt.init(params)
    out = []
    for g in grads_seq:
        u, state = opt.update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out


def test_make_optimizer_adamw_is_optax_adamw_and_sgd_is_hand_arithmetic():
    params, grads = _tree(0), [_tree(s) for s in (1, 2, 3)]
    h = rs.OptimizerHyper(learning_rate=0.03, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1)
    ours = _updates(rs.make_optimizer("adamw", h), params, grads)
    ref = _updates(optax.adamw(0.03, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1), params, grads)
    for a, b in zip(ours, ref, strict=True):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8), a, b)
    # SGD with weight decay (coupled = decoupled for SGD): u = -eta (g + lambda theta)
    (u,) = _updates(rs.make_optimizer("sgd", rs.OptimizerHyper(learning_rate=0.5, weight_decay=0.1, l2=0.2)), params,
                    grads[:1])  # fmt: skip
    jax.tree.map(lambda u_, g, p: np.testing.assert_allclose(u_, -0.5 * (g + 0.3 * p), rtol=1e-6), u, grads[0], params)


def test_adam_with_coupled_l2_adds_lambda_theta_before_the_moments():
    params, grads = _tree(0), [_tree(s) for s in (1, 2)]
    h = rs.OptimizerHyper(learning_rate=0.1, eps=1e-8, l2=0.3)
    ours = _updates(rs.make_optimizer("adamw", h), params, grads)
    # first step of Adam: m̂ = g', v̂ = g'^2, u = -eta g'/(|g'| + eps) with g' = g + l2 theta
    gp = jax.tree.map(lambda g, p: g + 0.3 * p, grads[0], params)
    jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-5), ours[0], gp)


def test_adamw_or_sgd_switches_between_the_two_programs():
    params, grads = _tree(0), [_tree(s) for s in (1, 2, 3)]
    for sgd, kind in ((0.0, "adamw"), (1.0, "sgd")):
        h = rs.OptimizerHyper(learning_rate=0.05, eps=1e-7, weight_decay=0.1, sgd=sgd)
        both = _updates(rs.make_optimizer("adamw_or_sgd", h), params, grads)
        one = _updates(rs.make_optimizer(kind, h), params, grads)
        for a, b in zip(both, one, strict=True):
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), a, b)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        rs.make_optimizer("adagrad", rs.OptimizerHyper())


# ----------------------------------------------------------------------------- independent float64 reference


def _reference_dr_grpo(params, batch, phi, row, steps):
    """θ_1..θ_S of dr_grpo (β = 0) from explicit float64 loops: Eq. 1 with α = 1/G, Eq. 2, the PPO clip, the
    tabular softmax gradient onehot − π, and Adam (Eqs. 24–27, bias-corrected) / SGD, decoupled or coupled λ."""
    _, sgd, beta, eps, wd, l2, lr = row
    assert beta == 0.0
    theta = np.asarray(params["logits"], np.float64).copy()
    tokens, mask = np.asarray(batch.tokens), np.asarray(batch.mask, np.float64)
    r = np.asarray(batch.rewards, np.float64) * np.float64(np.float32(phi))

    def logsoftmax(z):
        z = z - z.max()
        return z - np.log(np.exp(z).sum())

    def token_logp(th):
        out = np.zeros((B, G, T))
        for b in range(B):
            for i in range(G):
                prev = V
                for t in range(T):
                    out[b, i, t] = logsoftmax(th[t, prev])[tokens[b, i, t]]
                    prev = tokens[b, i, t]
        return out

    logp_old = token_logp(theta)
    m, v, path = np.zeros_like(theta), np.zeros_like(theta), []
    b1, b2 = 0.9, 0.999
    for k in range(1, steps + 1):
        logp = token_logp(theta)
        grad = np.zeros_like(theta)  # gradient of the loss -J (mean over prompts)
        for b in range(B):
            adv = r[b] - r[b].mean()
            for i in range(G):
                prev = V
                for t in range(T):
                    if mask[b, i, t] > 0:
                        s = np.exp(logp[b, i, t] - logp_old[b, i, t])
                        clipped = (adv[i] > 0 and s > 1.2) or (adv[i] < 0 and s < 0.8)
                        if not clipped:
                            dlogp = -(1.0 / G) * adv[i] * s / B
                            pi = np.exp(logsoftmax(theta[t, prev]))
                            grad[t, prev] += dlogp * (np.eye(V)[tokens[b, i, t]] - pi)
                    prev = tokens[b, i, t]
        if sgd:
            theta = theta - lr * (grad + (wd + l2) * theta)
        else:
            g = grad + l2 * theta
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
            theta = theta - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * theta)
        path.append(theta.copy())
    return path


def test_trajectories_match_an_independent_float64_loop(data, grids):
    """Displacement ‖θ_t(1) − θ_0‖ and deviation ‖θ_t(φ) − θ_t(1)‖ of dr_grpo against the float64 loop.

    Rows whose Adam ε is far above the float32 gradient noise (ε = 1e-3) and SGD: there the float32 and
    float64 trajectories agree to ~1e-5; with ε → 0 Adam normalises rounding residues of exactly-zero
    gradients and the two precisions legitimately part (that is what the noise floor measures).
    """
    params, batch, _, _ = data
    d = grids["dr_grpo"]
    for dset in (1, 2):  # uniform rewards
        p0 = jax.tree.map(lambda x, k=dset: x[k], params)
        b0 = jax.tree.map(lambda x, k=dset: x[k], batch)
        for name in ("eps", "eps_wd", "eps_l2", "sgd", "sgd_wd"):
            row = ROW[name]
            ref1 = _reference_dr_grpo(p0, b0, 1.0, ROWS[row], STEPS)
            theta0 = np.asarray(p0["logits"], np.float64)
            disp = [np.linalg.norm(x - theta0) for x in ref1]
            np.testing.assert_allclose(d.displacement[dset, row], disp, rtol=2e-4, err_msg=name)
            for k in (0, 3):  # phi = 0.1, 10
                ref = _reference_dr_grpo(p0, b0, PHIS[k], ROWS[row], STEPS)
                dev = [np.linalg.norm(x - y) for x, y in zip(ref, ref1, strict=True)]
                np.testing.assert_allclose(d.param_dev[dset, row, k], dev, rtol=2e-3, err_msg=f"{name} {PHIS[k]}")
                np.testing.assert_allclose(d.rel_param_dev[dset, row, k], np.array(dev) / disp, rtol=2e-3)


# ----------------------------------------------------------------------------- Prop. 2 on the shared grid


def test_grid_shapes_and_reference(grids):
    d = grids["dr_grpo"]
    n_data, n_rows, n_floor = 3, len(ROWS), len(rs.ULP_PHIS) + 2
    assert d.max_rel_param_dev.shape == (n_data, n_rows, len(PHIS))
    assert d.rel_param_dev.shape == (n_data, n_rows, len(PHIS), STEPS)
    assert d.floor_rel_param_dev.shape == (n_data, n_rows, n_floor, STEPS)
    assert d.noise_floor.shape == (n_data, n_rows)
    np.testing.assert_array_equal(d.phis, PHIS)
    assert np.all(np.isfinite(d.max_rel_param_dev)) and np.all(d.displacement[..., -1] > 0.05)
    np.testing.assert_allclose(d.noise_floor, d.floor_rel_param_dev.max(axis=(-2, -1)))


def test_dr_grpo_adamw_beta0_eps_limit_is_invariant_to_rounding(grids):
    """Eqs. 23–27: at the measured floor, with and without decoupled weight decay; powers of two exact."""
    d = grids["dr_grpo"]
    for name in ("adamw", "adamw_wd"):
        assert _log_ratio(d, ROW[name]) <= 1.0, (name, d.max_rel_param_dev[:, ROW[name]], d.noise_floor)
        np.testing.assert_array_equal(d.max_rel_param_dev[:, ROW[name]][:, POW2], 0.0)
    # the advantage gradient scales with phi (Eq. 23): ‖∇‖ at step 0 is phi times the reference's
    ratio = d.grad_norm[:, ROW["adamw"], :, 0] / d.ref_grad_norm[:, ROW["adamw"], :1]
    np.testing.assert_allclose(ratio, np.broadcast_to(PHIS, ratio.shape), rtol=1e-5)


@pytest.mark.parametrize("name", ["adam_l2", "beta", "eps", "eps_l2", "sgd", "sgd_wd"])
def test_dr_grpo_breaking_factors_are_far_above_the_floor(grids, name):
    """β > 0, a large ε, coupled L2 and SGD: every data set ≥ 100× its own floor (the design's power)."""
    d = grids["dr_grpo"]
    row = ROW[name]
    ratio = d.max_rel_param_dev[:, row].max(-1) / d.noise_floor[:, row]
    assert np.all(ratio > 100), (name, ratio)


def test_sgd_first_step_deviation_is_phi_minus_one(grids):
    d = grids["dr_grpo"]
    # θ_1(φ) − θ_0 = −η φ g: the relative deviation after one step is |φ − 1| exactly (up to rounding)
    first = d.rel_param_dev[:, ROW["sgd"], :, 0]
    np.testing.assert_allclose(first, np.broadcast_to(np.abs(PHIS - 1), first.shape), rtol=1e-5)


def test_grpo_one_over_sigma_is_invariant_under_every_row(grids):
    d = grids["grpo"]
    for name, row in ROW.items():
        assert _log_ratio(d, row) <= 1.0, (name, d.max_rel_param_dev[:, row], d.noise_floor[:, row])
        np.testing.assert_array_equal(d.max_rel_param_dev[:, row][:, POW2], 0.0)
    np.testing.assert_allclose(d.grad_norm[:, 0, :, 0] / d.ref_grad_norm[:, 0, :1], 1.0, rtol=1e-5)


def test_adam_rms_sqrt_v_is_reported(grids):
    d = grids["dr_grpo"]
    v = d.ref_rms_sqrt_v[:, ROW["adamw"]]
    assert v.shape == (3, STEPS) and np.all(np.isfinite(v)) and np.all(v > 0)


def test_one_compile_serves_every_sweep(data, grids):
    params, batch, prompt, perms = data
    size = rs._deviation_grid._cache_size()
    hyper, betas = _hypers()
    rng = np.random.default_rng(7)
    other = rs.OptimizerHyper(*(np.asarray(x) * rng.uniform(0.5, 2, size=len(ROWS)).astype(np.float32) for x in hyper))
    rs.deviation_grid(jgrpo.methods.get("grpo"), TAB, params, batch, PHIS[::-1] * 3, prompt=prompt, num_steps=STEPS,
                      optimizer="adamw_or_sgd", hypers=other, betas=betas * 2, permutations=perms)  # fmt: skip
    assert rs._deviation_grid._cache_size() == size


# ----------------------------------------------------------------------------- the noise floor


def test_permute_batch_moves_every_field_and_keeps_the_objective(data):
    params, batch, prompt, (pb, pg) = data
    p0, b0 = jax.tree.map(lambda x: x[1], params), jax.tree.map(lambda x: x[1], batch)
    moved, moved_prompt = rs.permute_batch(b0, prompt[1] + np.arange(B)[:, None], pb[1, 0], pg[1, 0])
    for f in ("mask", "logp_old", "logp_ref", "tokens", "entropy"):
        want = np.stack([np.asarray(getattr(b0, f))[pb[1, 0, b]][pg[1, 0, b]] for b in range(B)])
        np.testing.assert_array_equal(getattr(moved, f), want)
    np.testing.assert_array_equal(moved_prompt[:, 0], pb[1, 0])
    assert moved.advantages is None
    for name in ("dr_grpo", "gtpo", "gpg"):
        spec = jgrpo.methods.get(name)
        a = jgrpo.loss(spec, TAB(p0, b0.tokens), b0)[0]
        b = jgrpo.loss(spec, TAB(p0, moved.tokens), moved)[0]
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_random_permutations_are_permutations_other_than_the_identity():
    pb, pg = rs.random_permutations(np.random.default_rng(0), 5, 3, 4)
    assert pb.shape == (5, 3) and pg.shape == (5, 3, 4) and pb.dtype == np.int32
    np.testing.assert_array_equal(np.sort(pb, -1), np.broadcast_to(np.arange(3), (5, 3)))
    np.testing.assert_array_equal(np.sort(pg, -1), np.broadcast_to(np.arange(4), (5, 3, 4)))
    for n in range(5):
        assert not (
            np.array_equal(pb[n], np.arange(3)) and np.array_equal(pg[n], np.broadcast_to(np.arange(4), (3, 4)))
        )
    with pytest.raises(ValueError, match="num >= 0"):
        rs.random_permutations(np.random.default_rng(0), -1, 3, 4)


def test_relative_deviation_marks_divergence():
    dev = jnp.array([0.0, 1.0, jnp.inf, jnp.nan, 2.0])
    disp = jnp.array([0.0, 2.0, 2.0, 2.0, jnp.nan])
    np.testing.assert_array_equal(rs._relative(dev, disp), [0.0, 0.5, np.inf, np.inf, np.nan])


def test_bf16_parameters_keep_powers_of_two_exact(data):
    params, batch, prompt, perms = data
    p0 = jax.tree.map(lambda x: jnp.asarray(x[0], jnp.bfloat16), params)
    b0 = jax.tree.map(lambda x: x[0], batch)
    d = rs.trajectory_deviation(
        jgrpo.methods.get("dr_grpo"), TAB, p0, b0, PHIS, prompt=prompt[0], num_steps=STEPS,
        hyper=rs.OptimizerHyper(eps=LIMIT), beta=0.0, permutations=(perms[0][0], perms[1][0]),
    )  # fmt: skip
    assert np.all(np.isfinite(np.asarray(d.max_rel_param_dev))) and float(d.displacement[-1]) > 0.05
    np.testing.assert_array_equal(np.asarray(d.max_rel_param_dev)[POW2], 0.0)
    # bf16 rounding moves the other φ-runs far more than float32's ~1e-7. (Not asserted of the ±1-ulp floor runs:
    # with the fused loss a 1-ulp change of φ is often absorbed in bf16, leaving them bitwise equal to φ = 1.)
    other = np.asarray(d.max_rel_param_dev)[~POW2]
    assert float(np.max(other)) > 1e-4, other


# ----------------------------------------------------------------------------- the loss and bad input


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("grpo_v32", {}),
        ("gtpo", {"entropy_threshold": None}),  # no entropy filter: every prompt keeps a regularizer term
        ("grpo", {"flavor": "trl", "entropy_coef": 0.05}),  # TRL's entropy bonus is part of J (it was dropped)
    ],
)
def test_scaled_loss_traced_beta_matches_jgrpo_loss(name, overrides):
    from tests.conftest import make_batch

    batch, logp = make_batch(seed=2, b=2, g=4, t=6)
    spec = jgrpo.methods.get(name, **overrides)
    beta = spec.beta if spec.beta > 0 else 0.1
    spec = spec.replace(beta=beta)
    zero = spec.replace(beta=0.0)  # a traced beta ignores spec.beta: one MethodSpec serves every beta

    @jax.jit
    def both(logp, beta):
        (ref, ref_aux), g_ref = jax.value_and_grad(lambda lp: jgrpo.loss(spec, lp, batch), has_aux=True)(logp)
        (value, aux), g = jax.value_and_grad(lambda lp: rs.scaled_loss(zero, lp, batch, beta), has_aux=True)(logp)
        return (ref, ref_aux, g_ref), (value, aux, g), rs.scaled_loss(spec, logp, batch)[0]

    (ref, ref_aux, g_ref), (value, aux, g), value_none = both(jnp.asarray(logp), jnp.float32(beta))
    np.testing.assert_array_equal(value_none, ref)
    np.testing.assert_allclose(value, ref, rtol=1e-6, atol=1e-7)
    for key in ("objective", "policy", "regularizer"):
        np.testing.assert_allclose(aux[key], ref_aux[key], rtol=1e-6, atol=1e-7)
    assert float(jnp.min(aux["regularizer"])) > 0
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)


def test_scale_rewards_scales_given_advantages():
    batch = jgrpo.GroupBatch(
        mask=np.ones((2, 3)), logp_old=np.zeros((2, 3)), rewards=np.array([1.0, 3.0]), advantages=np.array([-1.0, 1.0])
    )
    s = rs.scale_rewards(batch, 2.5)
    np.testing.assert_allclose(s.rewards, [2.5, 7.5])
    np.testing.assert_allclose(s.advantages, [-2.5, 2.5])


def test_bad_input(data):
    params, batch, prompt, perms = data
    p0, b0, pr0 = jax.tree.map(lambda x: x[0], params), jax.tree.map(lambda x: x[0], batch), prompt[0]
    spec = jgrpo.methods.get("grpo")

    def call(phis=PHIS, **kw):
        return rs.trajectory_deviation(spec, TAB, p0, kw.pop("batch", b0), phis, prompt=pr0, **{"num_steps": 2, **kw})

    with pytest.raises(ValueError, match=r"phis must have shape \[K\]"):
        call(PHIS[None])
    with pytest.raises(ValueError, match="phis must be finite and > 0"):
        call(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="phis must be finite and > 0"):
        call(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="num_steps"):
        call(num_steps=0)
    with pytest.raises(ValueError, match="ulp_floor must be a Python bool"):
        call(ulp_floor=1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        call(optimizer="adagrad")
    with pytest.raises(ValueError, match="hyper applies"):
        call(optimizer=optax.sgd(0.1), hyper=rs.OptimizerHyper())
    with pytest.raises(ValueError, match="batch.tokens is required"):
        call(batch=dataclasses.replace(b0, tokens=None))
    with pytest.raises(ValueError, match=r"batch must have shape \[B, G, T\]"):
        call(batch=batch)
    with pytest.raises(ValueError, match=r"perm_b\) must have shape"):
        call(permutations=(perms[0], perms[1]))
    with pytest.raises(ValueError, match="must hold permutations"):
        call(permutations=(np.zeros((1, B), np.int32), np.zeros((1, B, G), np.int32)))
    with pytest.raises(ValueError, match="permutations must be a tuple"):
        call(permutations=[perms[0][0], perms[1][0]])
    grid = dict(num_steps=2, optimizer="adamw_or_sgd", hypers=rs.OptimizerHyper(eps=np.ones(3)), betas=np.zeros(2))
    with pytest.raises(ValueError, match=r"every field of hypers must broadcast to \[R\]"):
        rs.deviation_grid(spec, TAB, params, batch, PHIS, prompt=prompt, **grid)
    with pytest.raises(ValueError, match=r"betas must have shape \[R\]"):
        rs.deviation_grid(spec, TAB, params, batch, PHIS, prompt=prompt, **{**grid, "betas": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"batch must have shape \[D, B, G, T\]"):
        rs.deviation_grid(spec, TAB, p0, b0, PHIS, prompt=pr0, **{**grid, "hypers": rs.OptimizerHyper()})
    with pytest.raises(ValueError, match="deviation_grid needs optimizer"):
        rs.deviation_grid(spec, TAB, params, batch, PHIS, prompt=prompt, **{**grid, "optimizer": optax.sgd(0.1)})
