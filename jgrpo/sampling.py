"""Jitted autoregressive sampling of a group of G completions per prompt, with a KV cache where the policy has one.

Two kinds of policy:

* a **decoder** (an object with ``prefill`` and ``step``, e.g. ``jgrpo.models.decoder(model_fn)``
  for a Hugging Face checkpoint, or ``jgrpo.models.tabular_decoder()``): the B prompts are
  run once (prefill, left-padded prompts allowed via ``prompt_mask``), the state (the KV
  cache) is repeated G times, and each of the T steps runs one token per completion on top
  of it: O(P + T) work per completion instead of O(T (P + T));
* any causal ``logits_fn(params, ids [N, L]) -> logits [N, L, V]`` (e.g.
  ``jgrpo.policies.nnx_logits_fn(graphdef)`` or ``tabular_logits_fn(P)``) whose logits at
  position j depend on ``ids[:, :j+1]`` only: one ``lax.scan`` over the T positions with a
  fixed ``[B*G, P+T]`` token buffer and **no cache**: each step recomputes the full forward
  pass and reads position ``P+t-1`` (positions not yet written hold ``pad_id`` and, by
  causality, do not affect it). Fine for the small models of the experiments.

Both run one jitted ``lax.scan`` over T and draw token t of every completion from
``softmax(logits / temperature)``, optionally truncated to its top-p nucleus.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrpo import _scores
from jgrpo._validate import check_static_int, is_concrete, shape_str
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
        the distribution actually sampled from (``softmax(logits / temperature)``,
        restricted to the top-p nucleus and renormalised when ``top_p < 1``);
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


# The small input checks are jgrpo._validate's (one copy for jgrpo and analysis).
_shape_str = shape_str
_is_concrete = is_concrete
_check_static_int = check_static_int


def _is_decoder(policy: Any) -> bool:
    return callable(getattr(policy, "prefill", None)) and callable(getattr(policy, "step", None))


def _check_scalar(name: str, value: Any, ok: Callable[[float], bool], what: str) -> None:
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {_shape_str(tuple(np.shape(value)))}")
    if _is_concrete(value):
        v = float(value)
        if not (np.isfinite(v) and ok(v)):
            raise ValueError(f"{name} must be {what}, got {v}")


def sample(
    logits_fn: Any,
    params: Any,
    prompt: Any,
    key: jax.Array,
    *,
    group_size: int,
    max_len: int,
    temperature: float | jax.Array = 1.0,
    top_p: float | jax.Array = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_mask: Any = None,
) -> Samples:
    """Samples ``group_size`` completions of ``max_len`` tokens for each prompt.

    Token t of completion i of prompt b is drawn from
    ``softmax(logits(x_b, y_<t) / temperature)``, restricted to its top-p nucleus (the
    most likely tokens whose cumulative probability reaches ``top_p``; ties at the
    threshold are kept); the completion ends at the first ``eos_id`` (kept, with mask 1)
    and is padded with ``pad_id`` (mask 0) after it.

    Args:
      logits_fn: the policy: a decoder (``prefill``/``step``, KV cache: see the module
        docstring; e.g. :func:`jgrpo.models.decoder`) or a causal ``(params, ids [N, L]) ->
        logits [N, L, V]``. A static argument of the jitted sampler, so pass the same
        object each time (``nnx_logits_fn`` / ``tabular_logits_fn`` / ``decoder`` are
        cached or hashable for this).
      params: the policy's parameter pytree.
      prompt: ``[B, P]`` int prompt ids, ``P >= 1``.
      key: a PRNG key; the result is a deterministic function of it.
      group_size: G >= 1 completions per prompt.
      max_len: T >= 1 completion tokens.
      temperature: sampling temperature >= 0 (a traced scalar: sweeping it does not
        recompile). 0 means greedy (argmax) decoding.
      top_p: nucleus mass in (0, 1] (traced); 1 (default) samples from the whole distribution.
      eos_id: the end-of-sequence id, or None for fixed-length completions.
      pad_id: id written after EOS.
      prompt_mask: optional ``[B, P]`` 0/1, 1 on real prompt tokens: prompts left-padded to
        a common length P (each prompt's last token must be real). Decoders only.

    Returns:
      :class:`Samples` with ``tokens``, ``mask``, ``logp_old`` (policy log-prob at
      temperature 1), ``logp_sample`` (of the distribution sampled from) and ``entropy``,
      all ``[B, G, T]``.

    Raises:
      ValueError: prompt not of rank 2 or with P = 0, group_size / max_len < 1,
        a negative or non-finite concrete temperature, a concrete top_p outside (0, 1],
        concrete prompt ids outside ``[0, V)``, a prompt_mask of another shape or with a
        padded last position, a prompt_mask with a plain logits_fn, or (at trace time)
        eos_id / pad_id outside ``[0, V)``.
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
    decoder = _is_decoder(logits_fn)
    if prompt_mask is not None:
        if not decoder:
            raise ValueError(
                "prompt_mask needs a decoder policy (e.g. jgrpo.models.decoder(model_fn)), not a logits_fn"
            )
        if tuple(np.shape(prompt_mask)) != pshape:
            raise ValueError(
                f"prompt_mask must have the prompt's shape {_shape_str(pshape)}, "
                f"got {_shape_str(np.shape(prompt_mask))}"
            )
        if _is_concrete(prompt_mask) and not np.all(np.asarray(prompt_mask)[:, -1]):
            raise ValueError("prompt_mask must be 1 at each prompt's last position (prompts are left-padded)")
    if _is_concrete(prompt) and np.size(prompt):
        # Concrete prompt (not under an outer jit): range-check it against the model's V,
        # found by abstract evaluation (no compilation, no FLOPs).
        vocab = _vocab(logits_fn, params, pshape[1], t)
        lo, hi = int(np.min(prompt)), int(np.max(prompt))
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"prompt must hold token ids in [0, {vocab}) (vocab = {vocab}), got values in [{lo}, {hi}]"
            )
    _check_scalar("temperature", temperature, lambda v: v >= 0, "finite and >= 0 (0 = greedy)")
    _check_scalar("top_p", top_p, lambda v: 0 < v <= 1, "in (0, 1]")
    args = (jnp.asarray(prompt, jnp.int32), key, jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32))
    kw = dict(group_size=g, max_len=t, eos_id=eos, pad_id=pad)
    if decoder:
        mask = jnp.ones(pshape, jnp.int32) if prompt_mask is None else jnp.asarray(prompt_mask, jnp.int32)
        return _sample_cached(logits_fn, params, *args, mask, **kw)
    return _sample(logits_fn, params, *args, **kw)


def _vocab(policy: Any, params: Any, p: int, t: int) -> int:
    if _is_decoder(policy):
        prompt = jax.ShapeDtypeStruct((1, p), jnp.int32)
        out = jax.eval_shape(lambda pr, x: policy.prefill(pr, x, jnp.ones(x.shape, jnp.int32), t, 1)[0], params, prompt)
    else:
        out = jax.eval_shape(policy, params, jax.ShapeDtypeStruct((1, p + t), jnp.int32))
    return out.shape[-1]


def _draw(logits_NV: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array):
    """One token per row: ``(token, logp_old, logp_sample, entropy)``, all ``[N]`` (see :class:`Samples`)."""
    logits_NV = logits_NV.astype(jnp.float32)
    greedy = temperature <= 0
    logp_NV = _scores.log_softmax32(logits_NV)
    scaled = logits_NV / jnp.where(greedy, 1.0, temperature)
    # Nucleus: keep the tokens whose exclusive cumulative probability (sorted descending) is < top_p.
    sorted_desc = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(jnp.where(before < top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    keep = (scaled >= threshold) | (top_p >= 1)
    logp_temp_NV = jax.nn.log_softmax(jnp.where(keep, scaled, -jnp.inf), axis=-1)
    drawn = jax.random.categorical(key, logp_temp_NV, axis=-1)
    tok = jnp.where(greedy, jnp.argmax(logits_NV, axis=-1), drawn).astype(jnp.int32)
    logp_tok, ent = _scores.token_logp_and_entropy(logp_NV, tok)
    logp_s = jnp.where(greedy, 0.0, _scores.gather(logp_temp_NV, tok))
    return tok, logp_tok, logp_s, ent


def _record(tok, logp_tok, logp_s, ent, alive, eos_id, pad_id):
    tok = jnp.where(alive, tok, pad_id)
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
    return tok, alive, ys


def _samples(ys, b: int, g: int, t_len: int) -> Samples:
    # ys: each [T, N] -> [B, G, T]
    tokens, mask, logp_old, logp_sample, entropy = (y.T.reshape(b, g, t_len) for y in ys)
    return Samples(tokens=tokens, mask=mask, logp_old=logp_old, logp_sample=logp_sample, entropy=entropy)


def _check_ids(vocab: int, eos_id: int | None, pad_id: int) -> None:
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and value >= vocab:
            raise ValueError(f"{name} must be in [0, V) = [0, {vocab}), got {value}")


@functools.partial(jax.jit, static_argnames=("decoder", "group_size", "max_len", "eos_id", "pad_id"))
def _sample_cached(
    decoder: Any,
    params: Any,
    prompt_BP: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    prompt_mask: jax.Array,
    *,
    group_size: int,
    max_len: int,
    eos_id: int | None,
    pad_id: int,
) -> Samples:
    b = prompt_BP.shape[0]
    n = b * group_size
    logits, state = decoder.prefill(params, prompt_BP, prompt_mask, max_len, group_size)  # [B*G, V]
    if logits.shape[0] != n or logits.ndim != 2:
        raise ValueError(f"decoder.prefill must return logits [B*G, V] = [{n}, V], got {logits.shape}")
    _check_ids(logits.shape[-1], eos_id, pad_id)

    def body(carry, key_t):
        logits, state, alive = carry
        tok, alive, ys = _record(*_draw(logits, key_t, temperature, top_p), alive, eos_id, pad_id)
        logits, state = decoder.step(params, tok, state)
        return (logits, state, alive), ys

    keys = jax.random.split(key, max_len)
    _, ys = jax.lax.scan(body, (logits, state, jnp.ones((n,), bool)), keys)
    return _samples(ys, b, group_size, max_len)


@functools.partial(jax.jit, static_argnames=("logits_fn", "group_size", "max_len", "eos_id", "pad_id"))
def _sample(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    prompt_BP: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
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
    _check_ids(out.shape[-1], eos_id, pad_id)

    def step(carry, xs):
        buf, alive = carry
        pos, key_t = xs
        logits_NV = jax.lax.dynamic_index_in_dim(logits_fn(params, buf), p + pos - 1, axis=1, keepdims=False)
        tok, alive, ys = _record(*_draw(logits_NV, key_t, temperature, top_p), alive, eos_id, pad_id)
        buf = jax.lax.dynamic_update_slice_in_dim(buf, tok[:, None], p + pos, axis=1)
        return (buf, alive), ys

    keys = jax.random.split(key, t_len)
    alive0 = jnp.ones((n,), bool)
    _, ys = jax.lax.scan(step, (buf_NL, alive0), (jnp.arange(t_len), keys))
    return _samples(ys, b, g, t_len)
