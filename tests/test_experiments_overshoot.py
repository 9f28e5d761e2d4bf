"""The overshoot experiment: its helpers, and one end-to-end run at the tiny 'test' size."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import overshoot as ex
from experiments.common import Context


def _quadratic_grads(params, t):
    return jax.tree.map(lambda p: p - jnp.sin(t + jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)


def test_switched_chain_with_flags_off_is_optax_adam():
    cfg = ex.Config(learning_rate=0.03, adam_eps=1e-8)
    spec = ex.jgrpo.methods.get("grpo", beta=0.0)
    m = ex._members([(3, 0.8, "adam")], cfg.learning_rate)
    m = jax.tree.map(lambda x: x[0], m)
    opt = ex._optimizer(m, cfg, spec)
    ref = optax.adam(cfg.learning_rate, b1=0.8, b2=cfg.beta2, eps=cfg.adam_eps)
    params = {"w": jnp.zeros((3,)), "b": jnp.ones(())}
    ratio_fn = lambda p: (jnp.ones((2, 3)), jnp.array([[1.0], [-1.0]]), jnp.ones((2, 3)))
    extra_fn = ex._extra_args(m, ratio_fn)

    @jax.jit
    def steps(p, p_ref):
        s, s_ref, us = opt.init(p), ref.init(p_ref), []
        for t in range(5):
            extra = extra_fn(jnp.int32(t), None, {"clip_fraction": jnp.float32(0.5)})
            u, s = opt.update(_quadratic_grads(p, t), s, p, **extra)
            u_ref, s_ref = ref.update(_quadratic_grads(p_ref, t), s_ref, p_ref)
            p, p_ref = optax.apply_updates(p, u), optax.apply_updates(p_ref, u_ref)
            us.append((u["w"], u_ref["w"]))
        return p, p_ref, us

    p, p_ref, us = steps(params, params)
    for t, (u, u_ref) in enumerate(us):
        if t < 3:
            np.testing.assert_allclose(u, u_ref, rtol=1e-6, atol=1e-8)
        else:  # steps >= mu are no-ops: zero update, state frozen
            np.testing.assert_array_equal(u, 0.0)
    p_mu = jax.tree.map(np.asarray, p)
    assert not np.allclose(p_mu["w"], p_ref["w"])  # the reference went on for 2 more steps


def test_gate_flag_changes_the_update():
    cfg = ex.Config(learning_rate=0.03)
    spec = ex.jgrpo.methods.get("grpo", beta=0.0)
    m = jax.tree.map(lambda x: x[0], ex._members([(4, 0.9, "gated")], cfg.learning_rate))
    opt = ex._optimizer(m, cfg, spec)
    params = jnp.zeros((2,))
    ratio_fn = lambda p: (jnp.ones((1, 2)), jnp.ones((1, 1)), jnp.ones((1, 2)))
    extra = ex._extra_args(m, ratio_fn)

    @jax.jit
    def two_steps(params):
        s = opt.init(params)
        _, s = opt.update(jnp.ones(2), s, params, **extra(jnp.int32(0), None, {"clip_fraction": jnp.float32(0.0)}))
        # every token clipped and zero gradient: the gated momentum gives no step
        u, _ = opt.update(jnp.zeros(2), s, params, **extra(jnp.int32(1), None, {"clip_fraction": jnp.float32(1.0)}))
        return u

    np.testing.assert_array_equal(two_steps(params), 0.0)


def test_post_clip_travel_hand_case():
    # one A > 0 token: z = 0, 0.1, 0.25 (crosses log 1.2 = 0.182 at t* = 2), 0.3, 0.33; mu = 4
    z = np.array([0.0, 0.1, 0.25, 0.3, 0.33], np.float32)
    log_ratio = np.zeros((1, 5, 1, 2, 1), np.float32)
    log_ratio[0, :, 0, 0, 0] = z
    log_ratio[0, :, 0, 1, 0] = -0.5 * z  # A < 0 token moving down: z = 0.5 z, never beyond -log 0.8 = 0.223
    adv_sign = np.array([[[1.0, -1.0]]], np.float32)
    out = ex._post_clip(log_ratio, adv_sign, 4, eps_low=0.2, eps_high=0.2, beta1=0.9, beta2=0.95)
    assert out["tokens"] == 1
    assert out["measured"] == pytest.approx((0.33 - 0.25) / (0.25 - 0.1), rel=1e-5)
    r = 0.9 / math.sqrt(0.95)
    assert out["predicted"] == pytest.approx(r + r**2, rel=1e-5)
    none = ex._post_clip(log_ratio, adv_sign, 2, eps_low=0.2, eps_high=0.2, beta1=0.9, beta2=0.95)
    assert none["tokens"] == 0 and math.isnan(none["measured"])  # crosses at t* = mu: no step after


def test_config_validation():
    with pytest.raises(ValueError, match="model"):
        ex.Config(model="huge")
    with pytest.raises(ValueError, match="transform_mus"):
        ex.Config(mus=(1, 2), transform_mus=(4,))
    with pytest.raises(ValueError, match="scale"):
        ex._config("big")
    assert ex._config("paper").model == "small"


def test_run_at_test_size_writes_files_and_measures_every_claim(tmp_path):
    ctx = Context(scale="test", out=tmp_path)
    cfg = ex._config("test")
    outcome = ex._run(ctx, cfg)
    for name in ("result.json", "table.md", "overshoot.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["experiment"] == "overshoot"
    assert len(result["closed_form"]["closed"]) == cfg.closed_T
    assert result["closed_form"]["max_abs_err"] < 1e-5
    n_adam = len(cfg.mus) * len(cfg.beta1s)
    assert len(result["escape"]["adam"]["escape_frac"]) == n_adam
    for name in ex.TRANSFORMS[1:]:
        assert len(result["escape"][name]["escape_frac"]) == len(cfg.transform_mus)
    # the guard keeps every ratio inside the trust region (it starts inside)
    assert max(result["escape"]["guard"]["escape_frac"]) == 0.0
    assert len(outcome.claims) == 7 + 3 * len(cfg.transform_mus)
    for c in outcome.claims:
        claim, measured, ok = c.claim, c.measured, c.reproduced
        assert claim and measured and isinstance(ok, bool)
    assert (
        outcome.claims[0].reproduced and outcome.claims[1].reproduced and outcome.claims[2].reproduced
    )  # the closed-form claims
    assert "| claim | kind | criterion | measured | verdict |" in (tmp_path / "table.md").read_text()
