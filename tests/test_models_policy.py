"""jgrpo.models.logprob_fn: the chunked, rematerialised scorer equals the plain one (values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo.models as M
from jgrpo.models import policy
from tests.model_utils import random_params

CFG = M.ModelConfig.tiny("llama", vocab_size=40, hidden_size=32, intermediate_size=64, head_dim=8, num_layers=1)


def test_chunked_scores_equal_full_logits(monkeypatch):
    monkeypatch.setattr(policy, "_CHUNK", 4)  # T = 10: chunks of 4, 4 and a padded 2
    params = random_params(CFG, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 40, size=(2, 3, 10)).astype(np.int32)
    prompt = rng.integers(0, 40, size=(2, 4)).astype(np.int32)
    prompt_mask = np.ones((2, 4), np.int32)
    prompt_mask[0, 0] = 0
    fn = M.model_fn(CFG)
    chunked = policy.logprob_and_entropy_fn.__wrapped__(fn, temperature=0.7)
    plain = policy.logprob_and_entropy_fn.__wrapped__(lambda p, ids, m=None: fn(p, ids, m), temperature=0.7)

    def run(f):
        def objective(p):
            logp, ent = f(p, tokens, prompt, prompt_mask)
            return jnp.sum(logp * np.linspace(-1, 1, 10)), (logp, ent)

        return jax.jit(jax.value_and_grad(objective, has_aux=True))(params)

    (_, a), ga = run(chunked)
    (_, b), gb = run(plain)
    for x, y in zip(a, b, strict=True):
        assert x.shape == (2, 3, 10)
        np.testing.assert_allclose(x, y, atol=2e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(y))))
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ga)) > 0
