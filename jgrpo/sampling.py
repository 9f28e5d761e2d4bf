"""Jitted autoregressive sampling of a group of G completions per prompt.

The sampler works with any causal ``logits_fn(params, ids [N, L]) -> logits [N, L, V]``
(e.g. ``jgrpo.policies.nnx_logits_fn(graphdef)`` or ``tabular_logits_fn(P)``) whose
logits at position j depend on ``ids[:, :j+1]`` only.

Implementation: one ``jax.lax.scan`` over the T completion positions with a
fixed-size ``[B*G, P+T]`` token buffer. There is **no KV cache**: each step
recomputes the full forward pass over the whole buffer and reads the logits at
position ``P+t-1`` (positions not yet written hold ``pad_id`` and, by causality,
do not affect it). This costs O(T) forward passes of length P+T — fine for the
small models jgrpo analyses, wasteful for large ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrpo.batch import GroupBatch

__all__ = ["Samples", "sample"]


class Samples(NamedTuple):
    """G sampled completions of each of B prompts (a pytree).

    Attributes:
      tokens: ``[B, G, T]`` int32 token ids; ``pad_id`` after the EOS token.
      mask: ``[B, G, T]`` float32, 1 on completion tokens up to *and including* the
        first EOS, 0 after it.
      logp_old: ``[B, G, T]`` float32, ``log pi(y_t | x, y_<t)`` of each sampled token
        under the policy itself (temperature 1) — the ``logp_old`` of
        :class:`jgrpo.GroupBatch`; 0 where ``mask`` is 0.
      logp_sample: ``[B, G, T]`` float32, log-probability of each sampled token under
        the distribution actually sampled from (``softmax(logits / temperature)``);
        0 where ``mask`` is 0 and under greedy decoding (temperature 0).
      entropy: ``[B, G, T]`` float32, entropy of the policy's (temperature 1)
        next-token distribution at each position; 0 where ``mask`` is 0.
    """

    tokens: jax.Array
    mask: jax.Array
    logp_old: jax.Array
    logp_sample: jax.Array
    entropy: jax.Array

    def to_batch(self, rewards: Any, *, logp_ref: Any = None) -> GroupBatch:
        """A :class:`jgrpo.GroupBatch` with these tokens, mask, logp_old and entropy.

        Args:
          rewards: ``[B, G]`` scalar reward per completion.
          logp_ref: optional ``[B, G, T]`` reference-policy log-probabilities.
        """
        return GroupBatch(
            mask=self.mask,
            logp_old=self.logp_old,
            rewards=rewards,
            logp_ref=logp_ref,
            tokens=self.tokens,
            entropy=self.entropy,
        )


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_static_int(name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def sample(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    prompt: Any,
    key: jax.Array,
    *,
    group_size: int,
    max_len: int,
    temperature: float | jax.Array = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Samples:
    """Samples ``group_size`` completions of ``max_len`` tokens for each prompt.

    Token t of completion i of prompt b is drawn from
    ``softmax(logits_fn(params, [x_b, y_<t])[P+t-1] / temperature)``; the completion
    ends at the first ``eos_id`` (kept, with mask 1) and is padded with ``pad_id``
    (mask 0) after it.

    Args:
      logits_fn: causal ``(params, ids [N, L]) -> logits [N, L, V]``; a static
        argument of the jitted sampler, so pass the same function object each time
        (``nnx_logits_fn`` / ``tabular_logits_fn`` are cached for this).
      params: the policy's parameter pytree.
      prompt: ``[B, P]`` int prompt ids, ``P >= 1``.
      key: a PRNG key; the result is a deterministic function of it.
      group_size: G >= 1 completions per prompt.
      max_len: T >= 1 completion tokens.
      temperature: sampling temperature >= 0 (a traced scalar: sweeping it does not
        recompile). 0 means greedy (argmax) decoding.
      eos_id: the end-of-sequence id, or None for fixed-length completions.
      pad_id: id written after EOS.

    Returns:
      :class:`Samples` with ``tokens``, ``mask``, ``logp_old`` (policy log-prob at
      temperature 1), ``logp_sample`` (at the sampling temperature) and ``entropy``,
      all ``[B, G, T]``.

    Raises:
      ValueError: prompt not of rank 2 or with P = 0, group_size / max_len < 1,
        a negative or non-finite concrete temperature, concrete prompt ids outside
        ``[0, V)``, or (at trace time) eos_id / pad_id outside ``[0, V)``.
      TypeError: a non-integer prompt.
    """
    g = _check_static_int("group_size", group_size, low=1)
    t = _check_static_int("max_len", max_len, low=1)
    pad = _check_static_int("pad_id", pad_id, low=0)
    eos = None if eos_id is None else _check_static_int("eos_id", eos_id, low=0)
    pshape = tuple(np.shape(prompt))
    if len(pshape) != 2:
        raise ValueError(f"prompt must have shape [B, P] (rank 2), got shape {_shape_str(pshape)}")
    if pshape[1] < 1:
        raise ValueError(f"prompt must have at least one token (P >= 1), got shape {_shape_str(pshape)}")
    if not jnp.issubdtype(jnp.result_type(prompt), jnp.integer):
        raise TypeError(f"prompt must be an integer array of token ids, got dtype {jnp.result_type(prompt)}")
    if _is_concrete(prompt) and np.size(prompt):
        # Concrete prompt (not under an outer jit): range-check it against the model's V,
        # found by abstract evaluation (no compilation, no FLOPs).
        ids = jax.ShapeDtypeStruct((1, pshape[1] + t), jnp.int32)
        vocab = jax.eval_shape(logits_fn, params, ids).shape[-1]
        lo, hi = int(np.min(prompt)), int(np.max(prompt))
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"prompt must hold token ids in [0, {vocab}) (vocab = {vocab}), got values in [{lo}, {hi}]"
            )
    if np.ndim(temperature) != 0:
        raise ValueError(f"temperature must be a scalar, got shape {_shape_str(tuple(np.shape(temperature)))}")
    if _is_concrete(temperature):
        tv = float(temperature)
        if not (np.isfinite(tv) and tv >= 0):
            raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {tv}")
    return _sample(
        logits_fn,
        params,
        jnp.asarray(prompt, jnp.int32),
        key,
        jnp.asarray(temperature, jnp.float32),
        group_size=g,
        max_len=t,
        eos_id=eos,
        pad_id=pad,
    )


@functools.partial(jax.jit, static_argnames=("logits_fn", "group_size", "max_len", "eos_id", "pad_id"))
def _sample(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    prompt_BP: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    *,
    group_size: int,
    max_len: int,
    eos_id: int | None,
    pad_id: int,
) -> Samples:
    b, p = prompt_BP.shape
    g, t_len = group_size, max_len
    n = b * g
    buf_NL = jnp.concatenate(
        [jnp.repeat(prompt_BP, g, axis=0), jnp.full((n, t_len), pad_id, jnp.int32)], axis=1
    )  # [B*G, P+T], row b*G + i is completion i of prompt b
    out = jax.eval_shape(logits_fn, params, buf_NL)
    if len(out.shape) != 3 or out.shape[:2] != buf_NL.shape:
        raise ValueError(
            f"logits_fn must map ids [N, L] = {_shape_str(buf_NL.shape)} to logits [N, L, V], "
            f"got shape {_shape_str(out.shape)}"
        )
    vocab = out.shape[-1]
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and value >= vocab:
            raise ValueError(f"{name} must be in [0, V) = [0, {vocab}), got {value}")
    greedy = temperature <= 0
    safe_temp = jnp.where(greedy, 1.0, temperature)

    def step(carry, xs):
        buf, alive = carry
        pos, key_t = xs
        logits_NV = jax.lax.dynamic_index_in_dim(logits_fn(params, buf), p + pos - 1, axis=1, keepdims=False)
        logits_NV = logits_NV.astype(jnp.float32)
        logp_NV = jax.nn.log_softmax(logits_NV, axis=-1)
        logp_temp_NV = jax.nn.log_softmax(logits_NV / safe_temp, axis=-1)
        drawn = jax.random.categorical(key_t, logp_temp_NV, axis=-1)
        tok = jnp.where(greedy, jnp.argmax(logits_NV, axis=-1), drawn).astype(jnp.int32)
        logp_tok = jnp.take_along_axis(logp_NV, tok[:, None], axis=-1)[:, 0]
        logp_s = jnp.where(greedy, 0.0, jnp.take_along_axis(logp_temp_NV, tok[:, None], axis=-1)[:, 0])
        p_NV = jnp.exp(logp_NV)
        ent = -jnp.sum(jnp.where(p_NV > 0, p_NV * logp_NV, 0.0), axis=-1)
        tok = jnp.where(alive, tok, pad_id)
        buf = jax.lax.dynamic_update_slice_in_dim(buf, tok[:, None], p + pos, axis=1)
        zero = jnp.zeros_like(logp_tok)
        ys = (
            tok,
            alive.astype(jnp.float32),
            jnp.where(alive, logp_tok, zero),
            jnp.where(alive, logp_s, zero),
            jnp.where(alive, ent, zero),
        )
        if eos_id is not None:
            alive = alive & (tok != eos_id)
        return (buf, alive), ys

    keys = jax.random.split(key, t_len)
    alive0 = jnp.ones((n,), bool)
    _, ys = jax.lax.scan(step, (buf_NL, alive0), (jnp.arange(t_len), keys))
    # ys: each [T, N] -> [B, G, T]
    tokens, mask, logp_old, logp_sample, entropy = (y.T.reshape(b, g, t_len) for y in ys)
    return Samples(tokens=tokens, mask=mask, logp_old=logp_old, logp_sample=logp_sample, entropy=entropy)
