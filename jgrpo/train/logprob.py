"""Log-probabilities and entropies of the temperature-τ policy from a causal ``logits_fn``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jgrpo import _scores

__all__ = ["grouped_policy_logprob", "policy_logprob"]


def policy_logprob(
    logits_fn: Callable[[Any, jax.Array], jax.Array], params: Any, tokens: jax.Array, prompt: jax.Array, temperature
) -> tuple[jax.Array, jax.Array]:
    """log π_θ and entropy ``[B, G, T]`` of the temperature-τ policy softmax(logits / τ).

    Args:
      logits_fn: causal ``(params, ids [N, L]) -> logits [N, L, V]``.
      params: the policy parameters.
      tokens: ``[B, G, T]`` int completions.
      prompt: ``[B, P]`` int prompts.
      temperature: τ > 0 (scalar, may be traced).

    Returns:
      ``(logp, entropy)``, both ``[B, G, T]`` float32. With τ = 1 these equal
      :func:`jgrpo.policies.nnx_logprob_and_entropy_fn`'s.
    """
    b, g, t = tokens.shape
    p = prompt.shape[-1]
    prompt_BGP = jnp.broadcast_to(prompt[:, None, :], (b, g, p)).astype(jnp.int32)
    ids = jnp.concatenate([prompt_BGP, tokens.astype(jnp.int32)], axis=-1).reshape(b * g, p + t)
    logits_NTV = logits_fn(params, ids)[:, p - 1 : p + t - 1]
    logp, entropy = _scores.token_scores(logits_NTV, tokens.reshape(b * g, t), temperature)
    return logp.reshape(b, g, t), entropy.reshape(b, g, t)


def grouped_policy_logprob(
    graphdef: Any, params: Any, tokens: jax.Array, prompt: jax.Array, temperature
) -> tuple[jax.Array, jax.Array]:
    """:func:`policy_logprob` of a :class:`jgrpo.policies.Transformer` with the prompt run once per group.

    The logits come from :func:`jgrpo.policies.nnx_grouped_logits` (each prompt once, its keys/values
    broadcast over the G completions): the same ``(logp, entropy)`` ``[B, G, T]`` float32 as
    ``policy_logprob(nnx_logits_fn(graphdef), ...)`` up to float rounding, with ``B (P + G T)`` token rows
    instead of ``B G (P + T)``. What :func:`jgrpo.train.train` scores with.
    """
    from flax import nnx

    from jgrpo.policies import nnx_grouped_logits

    logits = nnx_grouped_logits(nnx.merge(graphdef, params), tokens, prompt)
    return _scores.token_scores(logits, tokens, temperature)
