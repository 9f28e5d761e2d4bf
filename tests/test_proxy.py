"""Prop. 4 / Appendix A (the loss is not a progress signal): analysis.proxy.

At the first inner step (logp = logp_old) J = Σ_i A_i Ω_i − β R, computed by
analysis.proxy from Ω and A and checked against jgrpo.loss; −β R exactly for
length-normalised weights, (1/G) Σ_i A_i |o_i| − β R for dr_grpo, G·Cov(A, Ω)
for dapo and the other weightings.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jgrpo
from analysis import proxy as px
from tests.conftest import make_batch

G, T = 4, 6

# Presets whose Omega_i is the same for every (non-empty) completion of a group,
# so that J(theta_old) = -beta R: alpha = c/|o_i| with c constant in the group.
LENGTH_NORMALISED = [
    ("grpo", {}),
    ("grpo_v32", {}),
    ("gspo", {}),
    ("gcpo", {"sequence_terms": "once"}),  # the paper preset (Table 1 literally) has Omega_i = |o_i|/(sigma G)
    ("gmpo", {}),
    ("rloo", {}),
    ("cppo", {}),  # only while no |A_i| <= gamma (see test_cppo_pruning_breaks_it)
    # only without conflict tokens (see test_gtpo_conflicts_break_it) and without the entropy filter delta_i
    ("gtpo", {"gtpo_conflicts": False, "entropy_threshold": None}),
]
CASES = [(n, f, o) for n, o in LENGTH_NORMALISED for f in jgrpo.methods.flavors(n)]


def _batch(seed=0, *, b=3, empty=False, rewards=None, ref_spread=0.5):
    batch, _ = make_batch(seed=seed, b=b, g=G, t=T, empty=empty)
    rng = np.random.default_rng(seed + 1)
    logp_ref = (-np.abs(np.asarray(batch.logp_old) - ref_spread * rng.normal(size=batch.logp_old.shape))).astype(
        np.float32
    )  # log-probabilities are <= 0 (jgrpo.loss checks it)
    return jgrpo.GroupBatch(
        mask=batch.mask,
        logp_old=batch.logp_old,
        rewards=batch.rewards if rewards is None else np.asarray(rewards, np.float32),
        logp_ref=logp_ref,
        tokens=batch.tokens,
        entropy=batch.entropy,
    )


# Eager on purpose: one small batch per preset compiles faster op by op than as a whole program.
_first_step = px.first_step_objective
_cov = px.advantage_weight_covariance


def _loss_objective(spec, batch):
    return jgrpo.loss(spec, jnp.asarray(batch.logp_old), batch)[1]


def _lengths(batch):
    return np.asarray(batch.mask, np.float64).sum(-1)


# ----------------------------------------------------------------------------- the identity, every preset


def test_first_step_identity_every_preset(preset):
    """J(theta_old) from Omega and A equals jgrpo.loss's objective at logp = logp_old."""
    batch = _batch(seed=3, empty=True)  # prompt 0 has an empty completion, the others none
    fs = _first_step(preset, batch)
    aux = _loss_objective(preset, batch)
    np.testing.assert_allclose(fs.objective, aux["objective"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fs.policy, aux["policy"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fs.regularizer, aux["regularizer"], rtol=1e-5, atol=1e-6)
    if preset.regularizer in ("kl", "kl_importance") and preset.beta > 0:
        assert np.all(np.asarray(fs.regularizer) > 0)  # R(theta_old) != 0: logp_ref != logp_old
    # Sum_i A_i Omega_i = G Cov(A, Omega) (Sum_i A_i = 0)
    np.testing.assert_allclose(_cov(preset, batch), fs.policy, rtol=1e-5, atol=1e-6)
    # Omega = Sum_t alpha (jgrpo.loss's aux["omega"]) where the term at ratio 1 is A itself
    if preset.objective not in ("logp", "cispo", "sapo"):
        np.testing.assert_allclose(fs.omega, aux["omega"], rtol=1e-6)
    else:  # A log pi_old or (2/tau) A
        assert not np.allclose(fs.omega, aux["omega"])


# ----------------------------------------------------------------------------- Prop. 4's three cases


@pytest.mark.parametrize("name,flavor,over", CASES, ids=[f"{n}-{f}" for n, f, _ in CASES])
def test_length_normalised_first_step_is_minus_beta_r(name, flavor, over):
    spec = jgrpo.methods.get(name, flavor=flavor, **over)
    batch = _batch(seed=5)
    fs = _first_step(spec, batch)
    omega, adv = np.asarray(fs.omega), np.asarray(fs.advantages)
    live = np.abs(adv).sum(-1) > 0
    assert live.sum() >= 2
    np.testing.assert_allclose(omega[live], omega[live][:, :1] * np.ones((1, G)), rtol=1e-6)  # constant in a group
    scale = np.sum(np.abs(adv) * np.abs(omega), axis=-1)
    assert np.all(np.abs(np.asarray(fs.policy)) <= 1e-6 * np.maximum(scale, 1e-30))
    np.testing.assert_allclose(fs.objective, -spec.beta * np.asarray(fs.regularizer), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_loss_objective(spec, batch)["objective"], fs.objective, rtol=1e-5, atol=1e-7)
    if name == "cppo":
        return  # other rewards may put some |A_i| <= gamma: see test_cppo_pruning_breaks_it
    # the first-step surrogate does not see the rewards at all
    other = _batch(seed=5, rewards=np.random.default_rng(9).uniform(-3, 3, size=(3, G)))
    fo = _first_step(spec, other)
    tol = 1e-6 * np.max(np.sum(np.abs(np.asarray(fo.advantages) * np.asarray(fo.omega)), axis=-1))
    np.testing.assert_allclose(fo.objective, fs.objective, rtol=1e-5, atol=tol)


def test_empty_completion_breaks_length_normalisation():
    """Omega_i = 0 for |o_i| = 0: grpo's J(theta_old) = -A_empty/(G sigma) - beta R, not -beta R."""
    spec = jgrpo.methods.get("grpo")
    batch = _batch(seed=3, empty=True)  # completion G-1 of prompt 0 is empty
    fs = _first_step(spec, batch)
    r = np.asarray(batch.rewards, np.float64)[0]
    a = r - r.mean()
    assert abs(a[-1]) > 0.1
    np.testing.assert_allclose(fs.policy[0], -a[-1] / (G * r.std()), rtol=1e-5)


@pytest.mark.parametrize("flavor,c", [("paper", 1.0 / G), ("trl", 1.0 / (G * 512.0)), ("verl", 1.0 / (G * T))])
def test_constant_weights_dr_grpo(flavor, c):
    """alpha = C: J(theta_old) = C Sum_i A_i |o_i| - beta R (C = 1/G; TRL 1/(G L), verl 1/(G T))."""
    spec = jgrpo.methods.get("dr_grpo", flavor=flavor)
    batch = _batch(seed=6)
    fs = _first_step(spec, batch)
    r = np.asarray(batch.rewards, np.float64)
    expected = c * np.sum((r - r.mean(-1, keepdims=True)) * _lengths(batch), axis=-1)
    assert np.max(np.abs(expected)) > 0.1 * c  # lengths differ: not zero
    np.testing.assert_allclose(fs.policy, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fs.objective, expected - spec.beta * np.asarray(fs.regularizer), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_loss_objective(spec, batch)["objective"], fs.objective, rtol=1e-5, atol=1e-7)


def test_dapo_is_g_times_covariance():
    """dapo: Omega_i = |o_i| / (sigma Sum_j |o_j|), J(theta_old) = G Cov(A, Omega)."""
    spec = jgrpo.methods.get("dapo")
    batch = _batch(seed=7)
    r = np.asarray(batch.rewards, np.float64)
    lengths = _lengths(batch)
    sigma = r.std(-1, keepdims=True)
    omega = np.where(sigma > 0, lengths / np.where(sigma > 0, sigma, 1) / lengths.sum(-1, keepdims=True), 0.0)
    np.testing.assert_allclose(px.cumulative_weights(spec, batch), omega, rtol=1e-6)
    a = r - r.mean(-1, keepdims=True)
    cov = np.array([G * np.cov(a[k], omega[k], bias=True)[0, 1] for k in range(len(r))])
    fs = _first_step(spec, batch)
    assert np.max(np.abs(cov)) > 1e-2
    np.testing.assert_allclose(_cov(spec, batch), cov, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fs.objective, cov, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_loss_objective(spec, batch)["objective"], cov, rtol=1e-5, atol=1e-7)


def test_cppo_pruning_breaks_it():
    """Omega_i = 1{|A_i| > gamma}/(G sigma): J = Sum_{|A_i| > gamma} A_i / (G sigma) - beta R."""
    spec = jgrpo.methods.get("cppo", prune_gamma=0.3)
    r = np.array([[1.0, 0.6, 0.2, 0.0]] * 3)  # A = .55, .15, -.25, -.45
    batch = _batch(seed=8, rewards=r)
    fs = _first_step(spec, batch)
    a = r - r.mean(-1, keepdims=True)
    expected = np.sum(np.where(np.abs(a) > 0.3, a, 0.0), axis=-1) / (G * r.std(-1))
    assert np.all(np.abs(expected) > 0.05)
    np.testing.assert_allclose(fs.policy, expected, rtol=1e-5)
    np.testing.assert_allclose(_loss_objective(spec, batch)["objective"], fs.objective, rtol=1e-5, atol=1e-7)


def test_sapo_temperatures_break_it():
    """Omega_i = 2/(tau_i G sigma): J = 2/(G sigma) (1/tau_pos - 1/tau_neg) Sum_{A_i > 0} A_i > 0."""
    spec = jgrpo.methods.get("sapo")
    batch = _batch(seed=9)
    r = np.asarray(batch.rewards, np.float64)
    a = r - r.mean(-1, keepdims=True)
    sigma = r.std(-1)
    pos = np.sum(np.where(a > 0, a, 0.0), axis=-1)
    expected = np.where(sigma > 0, 2 / (G * np.where(sigma > 0, sigma, 1)), 0.0) * (1 / spec.tau_pos - 1 / spec.tau_neg)
    expected = expected * pos
    assert np.all(expected[pos > 0] > 1e-3)
    np.testing.assert_allclose(_first_step(spec, batch).objective, expected, rtol=1e-5, atol=1e-7)


def test_gtpo_conflicts_break_it():
    """lambda = w on conflict tokens of positive completions, 0 on negative ones: Cov(A, Omega) > 0."""
    spec = jgrpo.methods.get("gtpo", entropy_threshold=None)  # lambda alone (no entropy filter delta_i)
    batch = _batch(seed=10)
    fs = _first_step(spec, batch)
    live = np.abs(np.asarray(fs.advantages)).sum(-1) > 0
    assert np.all(np.asarray(fs.policy)[live] > 1e-3)
    np.testing.assert_allclose(_cov(spec, batch), fs.policy, rtol=1e-5)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=15, deadline=None)
@given(
    rewards=st.lists(st.floats(-5, 5, width=32), min_size=3 * G, max_size=3 * G),
    lengths=st.lists(st.integers(1, T), min_size=3 * G, max_size=3 * G),
    name=st.sampled_from(["grpo", "dr_grpo", "dapo", "gpg", "cispo", "sapo", "rloo"]),
)
def test_sum_a_omega_is_g_cov_property(rewards, lengths, name):
    spec = jgrpo.methods.get(name)
    lengths = np.array(lengths).reshape(3, G)
    base = _batch(seed=11)
    batch = jgrpo.GroupBatch(
        mask=(np.arange(T) < lengths[..., None]).astype(np.float32),
        logp_old=base.logp_old,
        rewards=np.array(rewards, np.float32).reshape(3, G),
        logp_ref=base.logp_ref,
    )
    fs = _first_step(spec, batch)
    scale = np.sum(np.abs(np.asarray(fs.advantages) * np.asarray(fs.omega)), axis=-1)
    np.testing.assert_allclose(_cov(spec, batch), fs.policy, rtol=0, atol=1e-5 * np.max(scale) + 1e-7)
    if name in ("grpo", "rloo"):
        assert np.all(np.abs(np.asarray(fs.policy)) <= 1e-5 * scale + 1e-7)


def test_jit_vmap_and_no_recompile():
    spec = jgrpo.methods.get("dr_grpo")
    batches = [_batch(seed=s) for s in (20, 21, 22)]
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *batches)
    f = jax.jit(px.first_step_objective, static_argnums=0)
    out = jax.vmap(lambda b: f(spec, b))(stacked)
    for k, b in enumerate(batches):
        np.testing.assert_allclose(out.objective[k], px.first_step_objective(spec, b).objective, rtol=1e-6)
        np.testing.assert_allclose(out.omega[k], px.cumulative_weights(spec, b), rtol=1e-6)
    g = jax.jit(chex.assert_max_traces(px.first_step_objective, n=1), static_argnums=0)
    g(spec, batches[0])
    g(spec, batches[1])  # other values, same shapes: no second trace (chex.assert_max_traces would raise)


def test_bad_input():
    batch = _batch(seed=0)
    spec = jgrpo.methods.get("grpo")
    no_ref = jgrpo.GroupBatch(mask=batch.mask, logp_old=batch.logp_old, rewards=batch.rewards)
    with pytest.raises(ValueError, match="logp_ref"):
        px.first_step_objective(spec, no_ref)
    px.cumulative_weights(spec, no_ref)  # Omega does not need the reference policy
    bad = jgrpo.GroupBatch(mask=batch.mask, logp_old=batch.logp_old[..., :-1], rewards=batch.rewards)
    with pytest.raises(ValueError, match="logp"):
        px.cumulative_weights(spec, bad)


# ----------------------------------------------------------------------------- surrogate vs improvement


def _np_spearman(x, y):
    def ranks(v):
        out = np.empty(len(v))
        for i, vi in enumerate(v):
            out[i] = np.sum(v < vi) + (np.sum(v == vi) - 1) / 2
        return out

    return np.corrcoef(ranks(x), ranks(y))[0, 1]


def test_surrogate_vs_improvement_hand_cases():
    rng = np.random.default_rng(0)
    gains = rng.normal(size=30)
    rewards = np.concatenate([[0.0], np.cumsum(gains)])  # r_{n+1} - r_n = gains[n]
    stats = px.surrogate_vs_improvement(np.concatenate([3 * gains + 1, [0.0]]), rewards)
    assert stats.n == 30
    np.testing.assert_allclose([stats.pearson, stats.spearman], [1.0, 1.0], rtol=1e-5)
    monotone = px.surrogate_vs_improvement(np.concatenate([np.exp(2 * gains), [0.0]]), rewards)
    np.testing.assert_allclose(monotone.spearman, 1.0, rtol=1e-5)
    assert float(monotone.pearson) < 0.95
    anti = px.surrogate_vs_improvement(np.concatenate([-gains, [5.0]]), rewards)
    np.testing.assert_allclose(anti.pearson, -1.0, rtol=1e-5)
    # constant surrogate (e.g. -beta R = 0): the correlation is undefined
    assert np.isnan(px.surrogate_vs_improvement(np.zeros(31), rewards).pearson)


def test_surrogate_vs_improvement_matches_numpy_with_ties_batch_and_lag():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 4, size=(2, 25)).astype(np.float32)  # many ties
    rewards = rng.integers(0, 3, size=(2, 25)).astype(np.float32)
    for lag in (2,):
        stats = px.surrogate_vs_improvement(values, rewards, lag=lag)
        assert stats.pearson.shape == (2,) and stats.n == 25 - lag
        for k in range(2):
            v, d = values[k, :-lag].astype(np.float64), (rewards[k, lag:] - rewards[k, :-lag]).astype(np.float64)
            np.testing.assert_allclose(stats.pearson[k], np.corrcoef(v, d)[0, 1], rtol=1e-5)
            np.testing.assert_allclose(stats.spearman[k], _np_spearman(v, d), rtol=1e-5)


def test_surrogate_vs_improvement_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        px.surrogate_vs_improvement(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="at least 3"):
        px.surrogate_vs_improvement(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="lag"):
        px.surrogate_vs_improvement(np.zeros(5), np.zeros(5), lag=0)
    with pytest.raises(ValueError, match="rank"):
        px.surrogate_vs_improvement(np.float32(1), np.float32(2))


# ----------------------------------------------------------------------------- the SNIS progress monitor


def _np_snis(logp, logp_old, rewards, mask, normalize=True):
    """Float64 loops: log w_j = sum_t m (logp - logp_old); SNIS = sum w r / sum w - mean r (plain IS: mean w r)."""
    logp, logp_old = np.asarray(logp, np.float64), np.asarray(logp_old, np.float64)
    rewards, mask = np.asarray(rewards, np.float64), np.asarray(mask, np.float64)
    lead = rewards.shape[:-1]
    gain, ess = np.zeros(lead), np.zeros(lead)
    for idx in np.ndindex(*lead):
        n, t = mask[idx].shape
        w = np.zeros(n)
        for j in range(n):
            s = 0.0
            for k in range(t):
                if mask[idx][j, k] > 0:
                    s += logp[idx][j, k] - logp_old[idx][j, k]
            w[j] = np.exp(s)
        r = rewards[idx]
        new = (w * r).sum() / w.sum() if normalize else (w * r).mean()
        gain[idx] = new - r.mean()
        ess[idx] = w.sum() ** 2 / (w**2).sum()
    return gain, ess


def _snis_inputs(seed, lead=(3,), n=6, t=5, spread=0.4):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=lead + (n,))
    mask = (np.arange(t) < lengths[..., None]).astype(np.float32)
    logp_old = -rng.uniform(0.05, 3.0, size=lead + (n, t))
    logp = np.minimum(logp_old + spread * rng.normal(size=logp_old.shape), 0.0)
    logp_old = np.where(mask > 0, logp_old, np.nan).astype(np.float32)  # padding: NaN must not leak
    logp = np.where(mask > 0, logp, np.inf).astype(np.float32)
    rewards = rng.uniform(-1, 2, size=lead + (n,)).astype(np.float32)
    return logp, logp_old, rewards, mask


def test_snis_hand_case():
    """w = (2, 1), r = (1, 0): SNIS 2/3 - 1/2 = 1/6, plain IS (2 + 0)/2 - 1/2 = 1/2, ESS 9/5."""
    mask = np.array([[1, 1], [1, 0]], np.float32)
    logp_old = np.array([[-1.0, -2.0], [-0.5, 0.0]], np.float32)
    logp = logp_old + np.array([[np.log(2.0) / 2, np.log(2.0) / 2], [0.0, -7.0]], np.float32)  # pad ignored
    rewards = np.array([1.0, 0.0], np.float32)
    out = px.snis_gain(logp, logp_old, rewards, mask)
    np.testing.assert_allclose(
        [out.gain, out.reward_new, out.reward_old, out.ess], [1 / 6, 2 / 3, 1 / 2, 9 / 5], rtol=1e-6
    )
    np.testing.assert_allclose(out.log_weights, [np.log(2.0), 0.0], rtol=1e-6)
    plain = px.snis_gain(logp, logp_old, rewards, mask, normalize=False)
    np.testing.assert_allclose(plain.gain, 0.5, rtol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_snis_matches_float64_loops_with_nan_padding(normalize):
    logp, logp_old, rewards, mask = _snis_inputs(0, lead=(2, 3))
    out = px.snis_gain(jnp.asarray(np.nan_to_num(logp, posinf=0.0)), logp_old, rewards, mask, normalize=normalize)
    out_pad = jax.jit(px.snis_gain, static_argnames="normalize")(logp, logp_old, rewards, mask, normalize=normalize)
    gain, ess = _np_snis(np.nan_to_num(logp, posinf=0.0), np.nan_to_num(logp_old), rewards, mask, normalize)
    assert out.gain.shape == (2, 3)
    for o in (out, out_pad):  # NaN/inf on padding (checked only under jit, where values are not inspected)
        assert np.all(np.isfinite(o.gain))
        np.testing.assert_allclose(o.gain, gain, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(o.ess, ess, rtol=2e-5)
    assert np.all((ess >= 1) & (ess <= 6))


def test_snis_is_zero_at_theta_old_and_shift_invariant():
    logp, logp_old, rewards, mask = _snis_inputs(1)
    logp_old = np.nan_to_num(logp_old)
    logp = np.nan_to_num(logp, posinf=0.0)
    same = px.snis_gain(logp_old, logp_old, rewards, mask)
    np.testing.assert_array_equal(same.gain, 0.0)
    np.testing.assert_allclose(same.ess, 6.0, rtol=1e-6)
    a = px.snis_gain(logp, logp_old, rewards, mask)
    b = px.snis_gain(logp, logp_old, rewards + 5.0, mask)
    np.testing.assert_allclose(a.gain, b.gain, atol=1e-5)  # SNIS: shift invariant
    pa = px.snis_gain(logp, logp_old, rewards, mask, normalize=False)
    pb = px.snis_gain(logp, logp_old, rewards + 5.0, mask, normalize=False)
    assert np.max(np.abs(np.asarray(pa.gain) - np.asarray(pb.gain))) > 0.1  # plain IS is not


def _np_tabular(logits, n, rng, eos, target):
    """NumPy float64: n completions of a tabular policy (token t ~ softmax(logits[t, prev])), their per-token
    masks (EOS kept) and the exact E[r] = P(target seen) by enumerating the V^T sequences."""
    t_max, _, vocab = logits.shape
    logp_table = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tokens = np.zeros((n, t_max), np.int32)
    mask = np.zeros((n, t_max), np.float32)
    alive = np.ones(n, bool)
    prev = np.full(n, vocab)
    for t in range(t_max):
        p = np.exp(logp_table[t, prev])
        draw = (p.cumsum(-1) < rng.uniform(size=(n, 1))).sum(-1).clip(0, vocab - 1)
        tokens[:, t] = np.where(alive, draw, 0)
        mask[:, t] = alive
        alive &= draw != eos
        prev = draw
    exact = 0.0
    for seq in np.ndindex(*(vocab,) * t_max):
        lp, prev, hit = 0.0, vocab, False
        for t, v in enumerate(seq):
            lp += logp_table[t, prev, v]
            hit |= v == target
            prev = v
            if v == eos:
                break
        if v == eos and any(u != 0 for u in seq[t + 1 :]):
            continue  # each completion that ends early is counted once (padding 0 after EOS)
        exact += np.exp(lp) * hit
    return tokens, mask, exact


def test_snis_converges_to_exact_reward_gain():
    """A tabular policy written in NumPy (float64): N = 20000 held-out completions from pi_old; SNIS lies
    within 4 standard errors (delta method, estimated from the sample) of the exact Delta E (enumeration)."""
    rng = np.random.default_rng(0)
    eos, target = 1, 2
    old = 0.5 * rng.normal(size=(4, 6, 5))
    new = old + 0.3 * rng.normal(size=old.shape)
    tokens, mask, e_old = _np_tabular(old, 20000, rng, eos, target)
    _, _, e_new = _np_tabular(new, 1, rng, eos, target)
    reward = ((tokens == target) & (mask > 0)).any(-1).astype(np.float64)

    def logp(table):
        lt = table - np.log(np.exp(table).sum(-1, keepdims=True))
        prev = np.concatenate([np.full((len(tokens), 1), 5), tokens[:, :-1]], axis=1)
        return np.where(mask > 0, lt[np.arange(4), prev, tokens], 0.0)

    out = px.snis_gain(logp(new)[None], logp(old)[None], reward[None], mask[None])
    exact = e_new - e_old
    w = np.exp(np.asarray(out.log_weights, np.float64)[0])
    influence = w / w.mean() * (reward - float(out.reward_new[0])) - (reward - reward.mean())
    se = influence.std() / np.sqrt(len(reward))
    assert abs(exact) > 10 * se  # the update is large enough to be measured
    assert abs(float(out.gain[0]) - exact) < 4 * se, (float(out.gain[0]), exact, se)
    assert abs(float(out.reward_old[0]) - e_old) < 4 * reward.std() / np.sqrt(len(reward))  # the sampler is right


def test_snis_jit_vmap_no_recompile():
    f = jax.jit(px.snis_gain)
    ins = [tuple(np.nan_to_num(x, posinf=0.0) for x in _snis_inputs(s)) for s in (3, 4)]
    out = jax.vmap(lambda *a: f(*a))(*(np.stack(z) for z in zip(*ins, strict=True)))
    for k, i in enumerate(ins):
        np.testing.assert_allclose(out.gain[k], px.snis_gain(*i).gain, rtol=1e-6)
    g = jax.jit(chex.assert_max_traces(px.snis_gain, n=1))
    g(*ins[0])
    g(*ins[1])  # no second trace


def test_snis_bad_input():
    logp, logp_old, rewards, mask = (np.nan_to_num(x, posinf=0.0) for x in _snis_inputs(5))
    with pytest.raises(ValueError, match=r"logp must have shape \[..., N, T\] like mask"):
        px.snis_gain(logp[..., :-1], logp_old, rewards, mask)
    with pytest.raises(ValueError, match="rewards must have shape"):
        px.snis_gain(logp, logp_old, rewards[..., :-1], mask)
    with pytest.raises(ValueError, match="rank >= 2"):
        px.snis_gain(logp[0, 0], logp_old[0, 0], rewards[0, 0], mask[0, 0])
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        px.snis_gain(logp, logp_old, rewards, 2 * mask)
    bad = logp.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="logp has NaN"):
        px.snis_gain(bad, logp_old, rewards, mask)
    bad[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="log-probabilities"):
        px.snis_gain(bad, logp_old, rewards, mask)
    with pytest.raises(TypeError, match="logp_old must be a float"):
        px.snis_gain(logp, logp_old.astype(np.int32), rewards, mask)
    with pytest.raises(ValueError, match="normalize"):
        px.snis_gain(logp, logp_old, rewards, mask, normalize=1)
