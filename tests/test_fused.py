"""The fused loss (jgrpo.fused): equal to the autodiff path, and a hand-written gradient that is right.

``jgrpo.loss`` runs the fused path by default wherever ``jgrpo.fused.supports`` allows, so
the float64 reference and central-difference tests of every preset
(``test_presets_reference.py``) already check its value and d/dlogp. Here, against the
autodiff path (``fused=False``, the reference implementation) on the same inputs: the
value, every ``aux`` entry and the gradient with respect to every input (logp, logp_old,
mask, logp_ref, rewards), on each supported preset and option, on edge batches (empty
completions, all-equal groups, clips active on both sides, dual clip, clamps), at tie
points of every min/max/clip, in bfloat16 and float64, under jit and vmap, and through the
blocked forward pass; the per-token closed forms against ``jax.grad`` of the formulas they
replace; the dispatch rules; and the memory the fused program keeps (no [B, G, T]
temporaries, against the autodiff program's as a positive control).

Tolerance: 1e-6 relative (float32). The value is compared relative to the summands of J
(sum |alpha f| + beta sum |w R|, per prompt), because J itself cancels (centred advantages)
and a relative error of a near-zero sum measures nothing; a gradient relative to its largest
entry (with the value scale as a floor for the inputs whose reference gradient is pure
rounding, e.g. d/drewards of a clipped group).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from jgrpo import fused, methods, ratios, regularizers
from tests.conftest import ALL_PRESETS, make_batch
from tests.reference import reference_coefficients, reference_loss
from tests.test_presets_reference import spec_fields

TOL = 1e-6
get = methods.get
INPUTS = ("logp", "logp_old", "mask", "logp_ref", "rewards")


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """Tiny programs: XLA's optimisation passes cost more than they save here."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def run(spec, logp, batch, path, *, argnums=(0, 1, 2, 3, 4), jit=True):
    """(value, aux, grads) of jgrpo.loss on one path, differentiated w.r.t. the inputs ``argnums``."""

    def f(lp, lpo, m, lref, r):
        b = dataclasses.replace(batch, logp_old=lpo, mask=m, logp_ref=lref, rewards=r)
        return jgrpo.loss(spec, lp, b, fused=path)

    g = jax.value_and_grad(f, argnums=argnums, has_aux=True)
    g = jax.jit(g) if jit else g
    args = (logp, batch.logp_old, batch.mask, batch.logp_ref, batch.rewards)
    (value, aux), grads = g(*[jnp.asarray(a) for a in args])
    return value, aux, dict(zip([INPUTS[i] for i in argnums], grads, strict=True))


def summand_scales(spec, logp, batch) -> tuple[float, float]:
    """(sum |alpha f|, sum |w R|) per prompt: the magnitudes of what J sums, from the autodiff terms."""
    t = jgrpo.terms(spec, logp, batch)
    b = max(int(np.prod(np.shape(batch.mask)[:-2])), 1)
    policy = float(jnp.sum(jnp.abs(t.alpha * t.term))) / b
    return policy, float(jnp.sum(jnp.abs(t.reg_weight * t.reg_value))) / b


def assert_paths_agree(spec, logp, batch, *, argnums=(0, 1, 2, 3, 4), jit=True, tol=TOL):
    """Fused vs autodiff: value (relative to the summands), every aux entry, every requested gradient."""
    assert fused.supports(spec, batch) is None, fused.supports(spec, batch)
    v0, a0, g0 = run(spec, logp, batch, False, argnums=argnums, jit=jit)
    v1, a1, g1 = run(spec, logp, batch, True, argnums=argnums, jit=jit)
    policy_scale, reg_scale = summand_scales(spec, logp, batch)
    scale = policy_scale + spec.beta * reg_scale + 1e-30
    own = {"objective": scale, "policy": policy_scale + 1e-30, "regularizer": reg_scale + 1e-30}
    assert abs(float(v0) - float(v1)) <= tol * scale, (float(v0), float(v1), scale)
    assert set(a0) == set(a1)
    for k in a0:
        x, y = np.asarray(a0[k], np.float64), np.asarray(a1[k], np.float64)
        assert x.shape == y.shape and a0[k].dtype == a1[k].dtype, k
        if k in own:
            np.testing.assert_allclose(y, x, rtol=0, atol=tol * own[k], err_msg=k)
        else:
            np.testing.assert_allclose(
                y, x, rtol=tol, atol=tol * max(float(np.max(np.abs(x), initial=0)), 1e-30), err_msg=k
            )
    for k in g0:
        x, y = np.asarray(g0[k], np.float64), np.asarray(g1[k], np.float64)
        assert g0[k].dtype == g1[k].dtype and x.shape == y.shape, k
        floor = 0.0 if k == "logp" else scale
        atol = tol * max(float(np.max(np.abs(x))), floor, 1e-30)
        np.testing.assert_allclose(y, x, rtol=0, atol=atol, err_msg=f"d/d{k}")
    return a0, g0


# ----------------------------------------------------------------------------- which methods the fused path takes


FUSED_PRESETS = [(n, f) for n, f in ALL_PRESETS if fused.supports(get(n, flavor=f), make_batch()[0]) is None]


def test_the_fused_path_covers_the_clipped_ratio_presets():
    covered = {n for n, _ in FUSED_PRESETS}
    assert {"grpo", "grpo_v32", "gspo", "dapo", "cppo", "dr_grpo", "bnpo", "rloo", "gcpo"} <= covered
    for name in ("gtpo", "gpg", "cispo", "gmpo", "sapo"):
        assert name not in covered
        assert isinstance(fused.supports(get(name), make_batch()[0]), str)
    batch = make_batch()[0]
    assert "vary along a completion" in fused.supports(get("grpo", prefix_debias=True), batch)
    assert "top_entropy_quantile" in fused.supports(get("grpo", flavor="trl", top_entropy_quantile=0.5), batch)
    assert "entropy bonus" in fused.supports(get("grpo", flavor="trl", entropy_coef=0.01), batch)


def test_dispatch_and_its_errors():
    batch, logp = make_batch(seed=1)
    spec = get("grpo")
    jaxpr_default = str(jax.make_jaxpr(lambda lp: jgrpo.loss(spec, lp, batch)[0])(logp))
    jaxpr_autodiff = str(jax.make_jaxpr(lambda lp: jgrpo.loss(spec, lp, batch, fused=False)[0])(logp))
    assert "custom_vjp" in jaxpr_default and "custom_vjp" not in jaxpr_autodiff
    with pytest.raises(ValueError, match="fused=True: the fused loss does not apply to method 'gpg': objective 'logp'"):
        jgrpo.loss(get("gpg"), logp, batch, fused=True)
    with pytest.raises(TypeError, match="fused must be None, True or False; got 'yes'"):
        jgrpo.loss(spec, logp, batch, fused="yes")
    # an unsupported method silently takes the autodiff path by default
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda lp: jgrpo.loss(get("cispo"), lp, batch)[0])(logp))


# ----------------------------------------------------------------------------- equal to autodiff


@pytest.mark.parametrize("name, flavor", [("grpo", "paper"), ("gspo", "verl"), ("grpo_v32", "trl")])
def test_presets_match_autodiff_in_every_input(name, flavor):
    """Value, aux and the gradient w.r.t. logp, logp_old, mask, logp_ref and rewards (KL on)."""
    batch, logp = make_batch(seed=1, b=3, g=4, t=7, spread=0.5)
    assert_paths_agree(get(name, flavor=flavor), logp, batch)


@pytest.mark.slow
@pytest.mark.parametrize("name, flavor", FUSED_PRESETS, ids=[f"{n}-{f}" for n, f in FUSED_PRESETS])
@pytest.mark.parametrize("beta", [None, 0.0])
def test_every_fused_preset_matches_autodiff(name, flavor, beta):
    batch, logp = make_batch(seed=1, b=3, g=4, t=7, spread=0.5)
    spec = get(name, flavor=flavor, **({} if beta is None else {"beta": beta}))
    assert_paths_agree(spec, logp, batch)


OPTIONS = {
    "dual clip + cap + k1": dict(name="grpo", dual_clip=2.0, ratio_cap=1.3, kl="k1"),
    "k2": dict(name="grpo", kl="k2"),
    "abs": dict(name="grpo", kl="abs"),
    "k3 unclamped, value clamp": dict(name="grpo", kl_log_ratio_clamp=None, kl_value_clamp=0.05),
    "trl sequence-level ratio + kl_importance": dict(name="grpo", flavor="trl", ratio_level="sequence", beta=0.1),
    "gspo + kl_importance": dict(name="gspo", flavor="trl", beta=0.05),
    "gcpo once + kl": dict(name="gcpo", sequence_terms="once", beta=0.1),
    "cppo standardised": dict(name="cppo", prune_on="standardised"),
    "batch std": dict(name="grpo", scale="batch_std"),
    "gpg factors on grpo": dict(name="grpo", gpg_rescale="groups", f_norm="batch_std"),
    "seq-mean-token-sum-norm, batch scope": dict(name="dapo", agg="seq-mean-token-sum-norm", scope="batch"),
    "token-sum": dict(name="dapo", agg="token-sum"),
    "small clamps": dict(name="grpo", log_ratio_min=-0.3, log_ratio_max=0.2),
    "gspo small clamps": dict(name="gspo", log_ratio_min=-0.05, log_ratio_max=0.05),
    "v32 sequence level": dict(name="grpo_v32", flavor="trl", ratio_level="sequence"),
}
FAST_OPTIONS = ("dual clip + cap + k1", "trl sequence-level ratio + kl_importance", "gcpo once + kl", "small clamps")


def _option_spec(case):
    kw = dict(OPTIONS[case])
    return get(kw.pop("name"), **kw)


@pytest.mark.parametrize("case", FAST_OPTIONS)
def test_options_match_autodiff(case):
    batch, logp = make_batch(seed=2, b=3, g=4, t=9, spread=0.5)
    assert_paths_agree(_option_spec(case), logp, batch, argnums=(0, 2))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OPTIONS))
def test_every_option_matches_autodiff(case):
    batch, logp = make_batch(seed=2, b=3, g=4, t=9, spread=0.5)
    assert_paths_agree(_option_spec(case), logp, batch)


@pytest.mark.slow  # make test-all; make test keeps every preset and option against autodiff
def test_edge_batches_empty_completions_equal_groups_and_clips_on_both_sides():
    batch, logp = make_batch(seed=3, b=3, g=5, t=6, equal_group=True, spread=0.6)
    spec = get("grpo", dual_clip=1.4)
    aux, _ = assert_paths_agree(spec, logp, batch, argnums=(0,))
    # the case is what it claims: an empty completion, an all-equal group, clips above and below, dual clip active
    assert (np.asarray(batch.mask).sum(-1) == 0).any()
    assert np.all(np.asarray(aux["advantages"])[-1] == 0)
    assert float(aux["clip_frac_high"]) > 0 and float(aux["clip_frac_low"]) > 0
    t = jgrpo.terms(spec, logp, batch)
    dual_active = (np.asarray(t.term) == 1.4 * np.asarray(t.advantages)[..., None]) & (np.asarray(batch.mask) > 0)
    assert dual_active.any()
    for name in ("gspo", "gcpo", "dapo"):
        assert_paths_agree(get(name), logp, batch, argnums=(0,))


def test_clamps_active_huge_log_ratios():
    batch, logp = make_batch(seed=5, spread=30.0)
    logp = logp.copy()
    logp[..., ::2] -= 100.0  # log-ratios below every preset's clamp (paper: -80, verl: -20) on every other token
    for spec in (get("grpo"), get("gspo"), get("grpo", flavor="verl")):
        aux, _ = assert_paths_agree(spec, logp, batch, argnums=(0, 2))
        assert float(aux["clamp_frac"]) > 0  # log-ratio or KL clamps are active somewhere


def test_ties_at_every_kink_match_autodiff():
    """Points where a min/max/clip is tied: JAX gives each side 1/2, and so must the closed forms."""
    batch, _ = make_batch(seed=4, spread=0.0)
    on_policy = jnp.asarray(batch.logp_old)  # ratio 1 everywhere: tied with 1 +- eps when eps = 0
    assert_paths_agree(get("grpo", eps_low=0.0, eps_high=0.0), on_policy, batch, argnums=(0,))
    assert_paths_agree(get("gspo", eps_low=0.0, eps_high=0.0), on_policy, batch, argnums=(0,))
    # log-ratios exactly at the clamp bounds, and logp_ref - logp exactly at the KL clamp
    lo = np.float32(-3.0)
    mask = np.ones((1, 4, 3), np.float32)
    logp_old = np.full(mask.shape, lo)
    x = np.array([[0.5, -0.25, 0.0], [0.25, 0.5, -0.25], [0.0, 0.0, 0.5], [-0.25, 0.25, 0.0]], np.float32)
    logp = logp_old + x[None]
    assert np.all((logp - logp_old) == x[None])  # exact in float32
    tie = jgrpo.GroupBatch(
        mask=mask, logp_old=logp_old, rewards=np.array([[1.0, 0.0, 1.0, 0.0]], np.float32), logp_ref=logp - 0.25
    )
    spec = get("grpo", log_ratio_min=-0.25, log_ratio_max=0.5, kl_log_ratio_clamp=0.25, ratio_cap=float(np.exp(0.25)))
    assert_paths_agree(spec, logp, tie, argnums=(0, 3))


@pytest.mark.slow  # make test-all; make test keeps every preset and option against autodiff
def test_dtypes_bfloat16_and_float64():
    batch, logp = make_batch(seed=6)
    _, grads = assert_paths_agree(get("grpo"), jnp.asarray(logp, jnp.bfloat16), batch, argnums=(0,))
    assert grads["logp"].dtype == jnp.bfloat16
    with jax.enable_x64(True):
        b64, lp64 = make_batch(seed=6, dtype=np.float64)
        _, grads = assert_paths_agree(get("gspo", beta=0.1), lp64, b64, argnums=(0, 3), tol=1e-12)
        assert grads["logp"].dtype == jnp.float64


@pytest.mark.slow  # the default (fused) path under vmap is also checked by test_loss's vmap test in make test
def test_jit_vmap_and_leading_dims():
    batch, logp = make_batch(seed=7, b=4, g=3, t=5)
    spec = get("dapo", flavor="verl")
    assert_paths_agree(spec, logp, batch, argnums=(0,), jit=False)  # eager once (the default is jit)
    # vmap over the prompts: each prompt's loss as its own [G, T] batch
    f = jax.vmap(lambda lp, m, lpo, r: jgrpo.loss(get("grpo", beta=0.0), lp, jgrpo.GroupBatch(m, lpo, r))[0])
    per = f(jnp.asarray(logp), batch.mask, batch.logp_old, batch.rewards)
    for k in range(4):
        one = jgrpo.GroupBatch(batch.mask[k], batch.logp_old[k], batch.rewards[k])
        np.testing.assert_allclose(per[k], jgrpo.loss(get("grpo", beta=0.0), logp[k], one, fused=False)[0], atol=1e-7)
    g = jax.vmap(jax.grad(lambda lp, m, lpo, r: jgrpo.loss(get("grpo", beta=0.0), lp, jgrpo.GroupBatch(m, lpo, r))[0]))
    grads = g(jnp.asarray(logp), batch.mask, batch.logp_old, batch.rewards)
    g0 = jax.grad(
        lambda lp: jgrpo.loss(
            get("grpo", beta=0.0), lp, jgrpo.GroupBatch(batch.mask[1], batch.logp_old[1], batch.rewards[1]), fused=False
        )[0]
    )
    np.testing.assert_allclose(grads[1], g0(jnp.asarray(logp[1])), atol=1e-6 * float(jnp.max(jnp.abs(grads[1]))))
    # rank 2 ([G, T], no prompt dim) and rank 4 ([B1, B2, G, T])
    r2 = jgrpo.GroupBatch(batch.mask[0], batch.logp_old[0], batch.rewards[0], logp_ref=batch.logp_ref[0])
    assert_paths_agree(get("grpo"), logp[0], r2, argnums=(0,))
    r4 = jax.tree.map(lambda a: np.asarray(a).reshape((2, 2) + np.shape(a)[1:]), batch)
    assert_paths_agree(get("bnpo"), logp.reshape((2, 2) + logp.shape[1:]), r4, argnums=(0,))


@pytest.mark.slow  # make test-all; make test keeps every preset and option against autodiff
def test_blocked_forward_pass_with_a_remainder(monkeypatch):
    """Rows in blocks (a lax.map) plus a remainder block: the same numbers as one block and as autodiff."""
    batch, logp = make_batch(seed=8, b=5, g=3, t=6)  # 15 rows; blocks of 2 rows: 7 blocks + 1 row
    spec = get("grpo_v32")
    one_block = run(spec, logp, batch, True, argnums=(0,))
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 12)
    assert fused._block_rows(15, 6) == 2
    jaxpr = str(jax.make_jaxpr(lambda lp: jgrpo.loss(spec, lp, batch)[0])(logp))
    assert "scan" in jaxpr or "while" in jaxpr
    blocked = run(spec, logp, batch, True, argnums=(0,))
    np.testing.assert_allclose(blocked[0], one_block[0], rtol=1e-6)
    np.testing.assert_allclose(blocked[2]["logp"], one_block[2]["logp"], rtol=0, atol=1e-7)
    assert_paths_agree(spec, logp, batch, argnums=(0,))
    assert_paths_agree(get("gspo"), logp, batch, argnums=(0,))


@pytest.mark.slow  # make test-all: test_presets_reference checks the fused path against the float64 reference
def test_against_the_float64_reference():
    """The fused path against the independent float64 NumPy loops (tests/reference.py), value and d/dlogp."""
    batch, logp = make_batch(seed=9, b=2, g=4, t=5, dtype=np.float64)
    args = [np.asarray(a, np.float64) for a in (logp, batch.mask, batch.logp_old, batch.rewards)]
    for spec in (get("grpo"), get("gspo"), get("dapo", flavor="verl"), get("grpo_v32")):
        fields = spec_fields(spec)
        ref_loss = reference_loss(fields, *args, logp_ref=np.asarray(batch.logp_ref, np.float64))
        ref_grad = reference_coefficients(fields, *args, logp_ref=np.asarray(batch.logp_ref, np.float64))
        with jax.enable_x64(True):
            b64 = jax.tree.map(
                lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a,
                batch,
            )
            value, grad = jax.value_and_grad(lambda lp, s=spec, b=b64: jgrpo.loss(s, lp, b, fused=True)[0])(
                jnp.asarray(args[0])
            )
        np.testing.assert_allclose(float(value), ref_loss, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- the closed forms


def test_ppo_term_closed_form_matches_jax_grad_including_ties():
    """f(s, A), df/ds, df/dA of _ppo_term against jax.grad of ratios.ppo_clip_term, on a grid with every tie."""
    spec = get("grpo", eps_low=0.2, eps_high=0.28, ratio_cap=1.5, dual_clip=3.0)
    s = np.array([0.0, 0.5, 0.8, 0.9, 1.0, 1.28, 1.3, 1.5, 2.0, 3.0, 4.0], np.float32)
    a = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0], np.float32)
    ss, aa = (jnp.asarray(v) for v in np.meshgrid(s, a, indexing="ij"))
    lo, hi = np.float32(1.0 - 0.2), np.float32(1.0 + 0.28)
    ss = ss.at[2].set(lo).at[5].set(hi)  # exactly the float32 bounds the clip compares with
    term, ds, da = fused._ppo_term(spec, ss, aa)
    ref = lambda s_, a_: ratios.ppo_clip_term(spec, s_, a_)  # noqa: E731
    np.testing.assert_array_equal(term, ref(ss, aa))
    np.testing.assert_allclose(ds, jax.vmap(jax.vmap(jax.grad(ref, 0)))(ss, aa), rtol=0, atol=1e-7)
    np.testing.assert_allclose(da, jax.vmap(jax.vmap(jax.grad(ref, 1)))(ss, aa), rtol=0, atol=1e-7)
    # the grid does hit ties: the clip bounds, the cap and the dual-clip floor (s = 3 with A < 0)
    assert np.any(ss == lo) and np.any(ss == hi) and np.any(ss == 1.5) and np.any((ss == 3.0) & (aa < 0))


def test_clip_slope_and_min_pair_match_jax_grad_at_bounds_ties_and_nonfinite():
    """The interval form of the clip slope and the shared-tie min derivatives equal jax.grad exactly.

    On both bounds (slope 1/2), inside (1), outside (0), at +-inf and NaN (0), for bounds given as
    Python floats (the fast path) and as arrays (the product of tie-aware derivatives).
    """
    x = jnp.asarray([-jnp.inf, -30.0, -20.0, -19.5, 0.0, 19.5, 20.0, 30.0, jnp.inf, jnp.nan], jnp.float32)
    ref = jax.vmap(jax.grad(lambda v: jnp.clip(v, -20.0, 20.0)))(x)
    for lo, hi in ((-20.0, 20.0), (jnp.float32(-20.0), jnp.float32(20.0))):
        value, slope = fused._clip_and_slope(x, lo, hi)
        np.testing.assert_array_equal(value, jnp.clip(x, -20.0, 20.0))
        np.testing.assert_array_equal(slope, ref)
    assert float(slope[2]) == 0.5 and float(slope[6]) == 0.5 and float(slope[4]) == 1.0
    p = jnp.asarray([1.0, 2.0, 2.0, 3.0, jnp.nan, jnp.inf], jnp.float32)
    q = jnp.asarray([2.0, 2.0, 1.0, jnp.nan, 1.0, jnp.inf], jnp.float32)
    wp, wq = fused._wmin_pair(p, q)
    np.testing.assert_array_equal(wp, jax.vmap(jax.grad(jnp.minimum, 0))(p, q))
    np.testing.assert_array_equal(wq, jax.vmap(jax.grad(jnp.minimum, 1))(p, q))
    np.testing.assert_array_equal(wp, fused._wmin(p, q))
    np.testing.assert_array_equal(wq, fused._wmin(q, p))


@pytest.mark.parametrize("kl", ["k1", "k2", "k3", "abs"])
def test_kl_closed_form_matches_jax_grad(kl):
    spec = get("grpo", flavor="verl", kl=kl)  # verl: k3 with log-ratio clamp 20 and value clamp 10
    x = jnp.asarray([-25.0, -20.0, -3.0, -0.5, 0.0, 0.5, 2.0, 2.4, 20.0, 25.0], jnp.float32)
    value, slope = fused._kl(spec, x)
    mask = jnp.ones_like(x)
    ref = lambda v: regularizers.kl_estimate(spec, jnp.zeros_like(v), v, mask)  # noqa: E731 - logp_ref - logp = v
    np.testing.assert_allclose(value, ref(x), rtol=1e-6)
    np.testing.assert_allclose(slope, jax.vmap(jax.grad(lambda v: ref(v[None])[0]))(x), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- what the fused program keeps


def test_fused_program_keeps_no_token_sized_temporaries():
    """XLA's memory analysis of jit(value_and_grad(loss)): fused < 1/4 of one [B, G, T] float32 array of
    temporaries; the autodiff program (positive control: the analysis sees temporaries) >= 1 array."""
    from experiments.bench.sections.loss import batch_of, loss_data

    logp, batch = batch_of(loss_data(4, 8, 2048))
    one_array = 4 * logp.size
    temps = {}
    for path in (True, False):
        f = jax.jit(
            jax.value_and_grad(lambda lp, b, path=path: jgrpo.loss(get("grpo", beta=0.0), lp, b, fused=path)[0])
        )
        temps[path] = f.lower(logp, batch).compile().memory_analysis().temp_size_in_bytes / one_array
    assert temps[True] < 0.25 and temps[False] >= 1.0, temps


@pytest.mark.slow  # make test-all; make test keeps every preset and option against autodiff
def test_forward_mode_needs_the_autodiff_path():
    batch, logp = make_batch(seed=10)
    spec = get("grpo")
    f = lambda lp, path: jgrpo.loss(spec, lp, batch, fused=path)[0]  # noqa: E731
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda lp: f(lp, None), (jnp.asarray(logp),), (jnp.ones_like(logp),))
    _, tangent = jax.jvp(lambda lp: f(lp, False), (jnp.asarray(logp),), (jnp.ones_like(logp),))
    grad = jax.grad(lambda lp: f(lp, None))(jnp.asarray(logp))
    np.testing.assert_allclose(tangent, jnp.sum(grad), rtol=1e-5)


def test_fused_loss_inside_a_parameter_gradient_like_prefix_coefficients():
    """analysis.prefix's pattern: grad w.r.t. θ of Σ stop_gradient(∂J/∂logp) · logp(θ), fused = autodiff.

    Tracing the fused loss's gradient under an outer JVP once crashed (JAX's JVP of a variadic lax.reduce on
    symbolic-zero tangents; the bench's decomposition section hit it). True second derivatives (no
    stop_gradient): test_second_derivatives_match_autodiff.
    """
    batch, logp0 = make_batch(seed=5, b=2, g=4, t=6)
    w = jnp.asarray(np.random.default_rng(0).normal(size=logp0.shape), jnp.float32)

    def outer(theta, fused):
        spec = jgrpo.methods.get("gspo")
        logp = -jnp.abs(jnp.asarray(logp0) + theta * w)
        coef = jax.lax.stop_gradient(jax.grad(lambda lp: -jgrpo.loss(spec, lp, batch, fused=fused)[0])(logp))
        return jnp.sum(coef * logp)

    got = jax.jit(jax.grad(outer), static_argnums=1)(jnp.float32(0.1), True)
    want = jax.jit(jax.grad(outer), static_argnums=1)(jnp.float32(0.1), False)
    assert abs(float(want)) > 1e-3
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- second derivatives


def sequence_ratio_with_gradient(spec) -> bool:
    """A sequence-level ratio differentiated through its mean (TRL's sequence level, GCPO, a sequence-level KL
    importance weight): the mixed logp-mask second derivatives of these differ (jgrpo.fused._row_stats_bwd)."""
    sequence = spec.objective == methods.Objective.SEQUENCE or (
        spec.objective == methods.Objective.PPO_CLIP and spec.ratio_level == methods.RatioLevel.SEQUENCE
    )
    importance = spec.beta > 0 and spec.regularizer == methods.Regularizer.KL_IMPORTANCE
    return sequence or (importance and not fused._plan(spec, True).kl_importance)


def second_derivatives(spec, logp, batch, v, path):
    """d/d(logp, logp_old, mask, logp_ref, rewards) of <d loss / d logp, v>: an HVP and the mixed derivatives."""

    def inner(lp, lpo, m, ref, r):
        b = dataclasses.replace(batch, logp_old=lpo, mask=m, logp_ref=ref, rewards=r)
        return jnp.sum(jax.grad(lambda x: jgrpo.loss(spec, x, b, fused=path)[0])(lp) * v)

    args = (logp, batch.logp_old, batch.mask, batch.logp_ref, batch.rewards)
    return jax.jit(jax.grad(inner, argnums=(0, 1, 2, 3, 4)))(*[jnp.asarray(a) for a in args])


def assert_second_derivatives_agree(spec, tol=1e-6):
    """Fused vs autodiff second derivatives, each relative to the autodiff one's largest entry (nonzero)."""
    batch, logp = make_batch(seed=1, b=3, g=4, t=7, spread=0.5)
    v = jnp.asarray(np.random.default_rng(0).normal(size=np.shape(logp)), jnp.float32)
    want = second_derivatives(spec, logp, batch, v, False)
    got = second_derivatives(spec, logp, batch, v, True)
    assert float(jnp.max(jnp.abs(want[0]))) > 1e-6, "the Hessian-vector product must not vanish here"
    for name, x, y in zip(INPUTS, want, got, strict=True):
        if name == "mask" and sequence_ratio_with_gradient(spec):
            continue
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(y, x, rtol=0, atol=tol * max(float(np.max(np.abs(x))), 1e-30), err_msg=name)


# make test: GSPO (whose Hessian was wrong) and a sequence-level ratio; the token-ratio family is checked
# against central differences below; test-all runs every preset and option.
SECOND_ORDER_FAST = [("gspo-verl", get("gspo", flavor="verl"))] + [
    (c, _option_spec(c)) for c in ("gspo + kl_importance", "gcpo once + kl")
]


@pytest.mark.parametrize("spec", [s for _, s in SECOND_ORDER_FAST], ids=[c for c, _ in SECOND_ORDER_FAST])
def test_second_derivatives_match_autodiff(spec):
    """jax.grad of the fused gradient = autodiff's: w.r.t. logp (an HVP) and mixed with every input.

    GSPO-token's gradient sg[s_i / pi] pi once came from a linear probe, whose Hessian (a rank-one
    coupling of a completion's tokens) was not the autodiff path's diagonal one: relative error 1.0.
    """
    assert_second_derivatives_agree(spec)


@pytest.mark.slow
@pytest.mark.parametrize(
    "label",
    # "gspo small clamps" clamps every sequence ratio: its Hessian is 0 on both paths, nothing to compare.
    [f"{n}-{f}" for n, f in FUSED_PRESETS] + [c for c in OPTIONS if c != "gspo small clamps"],
)
def test_every_fused_method_has_the_autodiff_second_derivatives(label):
    if label in OPTIONS:
        spec = _option_spec(label)
    else:
        name, flavor = label.rsplit("-", 1)
        spec = get(name, flavor=flavor)
    assert_second_derivatives_agree(spec)


def test_fused_hessian_vector_product_matches_central_differences_of_the_gradient():
    """float64: the fused HVP against (grad(logp + h v) - grad(logp - h v)) / 2h, for token-ratio methods.

    Not for GSPO: its surrogate holds sg[s_i], so autodiff's second derivative (which the fused path
    matches, above) is not the derivative of the gradient field, which moves with s_i.
    """
    with jax.enable_x64(True):
        batch, logp = make_batch(seed=3, b=2, g=4, t=6, spread=0.4)
        batch = jax.tree.map(
            lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, batch
        )
        lp = jnp.asarray(logp, jnp.float64)
        v = jnp.asarray(np.random.default_rng(1).normal(size=lp.shape))
        for spec in (get("grpo"), get("dapo"), _option_spec("dual clip + cap + k1")):
            grad = jax.jit(jax.grad(lambda x, spec=spec: jgrpo.loss(spec, x, batch, fused=True)[0]))
            hvp = jax.grad(lambda x, grad=grad: jnp.sum(grad(x) * v))(lp)
            h = 1e-5
            fd = (grad(lp + h * v) - grad(lp - h * v)) / (2 * h)
            assert float(jnp.max(jnp.abs(fd))) > 1e-3
            np.testing.assert_allclose(np.asarray(hvp), np.asarray(fd), rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(fd))))
