"""jgrpo.train.make_train_step with jgrpo.optim's extra-args transforms (new_batch, clip_fraction, ratio_fn)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrpo
from jgrpo import optim
from jgrpo import policies as P
from jgrpo import train as jtrain

B, G, T, V = 2, 4, 3, 3


def _setup():
    rng = np.random.default_rng(0)
    params = P.tabular_init(jax.random.key(0), vocab=V, max_len=T)
    tokens = rng.integers(0, V, size=(B, G, T)).astype(np.int32)
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], np.float32)
    batch = jgrpo.GroupBatch(
        mask=np.ones((B, G, T), np.float32), logp_old=np.asarray(P.tabular_logprob(params, tokens)), rewards=rewards,
        tokens=tokens,
    )  # fmt: skip
    return params, batch, np.zeros((B, 1), np.int32)


def test_new_batch_reaches_the_optimizer():
    """adam_with_reset restarts its moments when the step says new_batch: a second step with new_batch=True is a
    fresh Adam's first step; with new_batch=False it carries the moments (another update)."""
    params, batch, prompt = _setup()
    spec = jgrpo.methods.get("grpo", beta=0.0)
    opt = optim.adam_with_reset(0.1)
    step = jtrain.make_train_step(P.tabular_logprob, spec, opt, donate=False)
    p1, s1, _ = step(params, opt.init(params), batch, prompt, new_batch=True)
    reset, _, _ = step(p1, s1, batch, prompt, new_batch=True)
    carried, _, _ = step(p1, s1, batch, prompt, new_batch=False)
    fresh = optax.adam(0.1)
    want, _, _ = jtrain.make_train_step(P.tabular_logprob, spec, fresh, donate=False)(p1, fresh.init(p1), batch, prompt)
    np.testing.assert_allclose(np.asarray(reset["logits"]), np.asarray(want["logits"]), rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(np.asarray(carried["logits"]) - np.asarray(want["logits"]))) > 1e-4


def test_ratio_fn_reaches_the_trust_region_guard():
    """trust_region_guard needs the ratio_fn extra arg (it raises without one); a huge SGD step that pushes ratios
    out of the clip range is scaled back so that the clip violation does not grow."""
    params, batch, prompt = _setup()
    spec = jgrpo.methods.get("grpo", beta=0.0)
    guarded = optax.chain(optax.sgd(100.0), optim.trust_region_guard(eps_low=spec.eps_low, eps_high=spec.eps_high))
    step = jtrain.make_train_step(P.tabular_logprob, spec, guarded, donate=False)
    new, state, metrics = step(params, guarded.init(params), batch, prompt)
    assert float(state[1].scale) < 1.0 and np.isfinite(float(metrics["loss"]))
    ratio = jnp.exp(P.tabular_logprob(new, batch.tokens) - batch.logp_old)
    excess = optim.violation(ratio, jgrpo.advantages(spec, batch)[..., None], batch.mask, eps_low=0.2, eps_high=0.2)
    assert float(excess) <= 1e-6
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        jtrain.make_train_step(P.tabular_logprob, spec, lambda g: g)
