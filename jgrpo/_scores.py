"""The one log-softmax-gather and entropy of jgrpo (policies, models, sampling and the training loop use these).

Everything is computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def log_softmax32(logits_V: jax.Array, temperature: Any = None) -> jax.Array:
    """``log softmax(logits / temperature)`` over the last axis, in float32 (temperature None = 1)."""
    x = logits_V.astype(jnp.float32)
    if temperature is not None:
        x = x / temperature
    return jax.nn.log_softmax(x, axis=-1)


def entropy(logp_V: jax.Array) -> jax.Array:
    """Entropy ``[...]`` of the distributions ``[..., V]`` given as log-probabilities; 0 log 0 = 0."""
    p = jnp.exp(logp_V)
    return -jnp.sum(jnp.where(p > 0, p * logp_V, 0.0), axis=-1)


def gather(logp_V: jax.Array, tokens: jax.Array) -> jax.Array:
    """``logp_V[..., tokens]``: the log-probability ``[...]`` of each token id ``[...]``."""
    return jnp.take_along_axis(logp_V, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_logp_and_entropy(logp_V: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log pi(y), H(pi(.)))`` ``[...]`` from next-token log-probabilities ``[..., V]`` and token ids ``[...]``."""
    return gather(logp_V, tokens), entropy(logp_V)


def token_scores(logits_V: jax.Array, tokens: jax.Array, temperature: Any = None) -> tuple[jax.Array, jax.Array]:
    """``(logp, entropy)`` ``[...]`` float32 of ``tokens`` under ``softmax(logits [..., V] / temperature)``."""
    return token_logp_and_entropy(log_softmax32(logits_V, temperature), tokens)
