"""A loaded model as a jgrpo policy: the ``logprob_fn`` protocol and a KV-cache decoder for sampling.

``logprob_fn(model)(params, tokens [..., G, T], prompt [..., P]) -> logp [..., G, T]`` is
the protocol of :mod:`jgrpo.policies`: ``log_softmax`` in float32 at positions ``P-1 .. P+T-2``
of ``prompt + completion``. By default (``share_prompt=True``) the prompt runs once per group
and the G completions attend to its broadcast keys/values; ``share_prompt=False`` runs one
forward pass over ``prompt + completion`` per completion (G copies of the prompt). Prompts may be
left-padded: pass ``prompt_mask`` (1 on real prompt tokens), the same one the sampler got.

:func:`decoder` wraps a model for :func:`jgrpo.sampling.sample`: a prefill of the B
prompts, a cache repeated G times, and one token per step on top of the cache.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrpo import _scores as _score_lib
from jgrpo.models import transformer as tf
from jgrpo.models.config import ModelConfig

__all__ = [
    "Decoder",
    "Prompt",
    "NNXDecoder",
    "TabularDecoder",
    "decoder",
    "logprob_and_entropy_fn",
    "logprob_fn",
    "nnx_decoder",
    "tabular_decoder",
]


class Prompt(NamedTuple):
    """Left-padded prompts as one pytree: ``ids`` ``[..., P]`` int and ``mask`` ``[..., P]`` 0/1 (1 on real tokens).

    The ``prompt`` argument of the policy protocol may be a ``Prompt`` for the functions of
    :func:`logprob_fn` / :func:`logprob_and_entropy_fn`, so that the analyses (which pass
    ``prompt=`` through, move it with its group and vmap over it as a pytree) see padded
    prompts exactly as the sampler did::

        logprob = jgrpo.models.logprob_fn(model_fn)
        overshoot.simulate_group(spec, logprob, params, batch, opt, 8, prompt=Prompt(prompt, prompt_mask))
    """

    ids: Any
    mask: Any


def _config_of(model: Any) -> ModelConfig | None:
    if isinstance(model, ModelConfig):
        return model
    return getattr(model, "config", None) if isinstance(getattr(model, "config", None), ModelConfig) else None


def _check(tokens: Any, prompt: Any, prompt_mask: Any) -> None:
    tshape, pshape = tuple(np.shape(tokens)), tuple(np.shape(prompt))
    if len(tshape) < 2:
        raise ValueError(f"tokens must have shape [..., G, T] (rank >= 2), got {tshape}")
    if len(pshape) < 1 or pshape[:-1] != tshape[:-2]:
        raise ValueError(
            f"prompt must have shape [..., P] with the leading dims of tokens {tshape}, i.e. "
            f"{tshape[:-2] + (pshape[-1] if pshape else 'P',)}; got {pshape}"
        )
    if pshape[-1] < 1:
        raise ValueError("prompt must have at least one token (P >= 1) to predict the first completion token")
    for name, x in (("tokens", tokens), ("prompt", prompt)):
        if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
            raise TypeError(f"{name} must be an integer array of token ids, got dtype {jnp.result_type(x)}")
    if prompt_mask is not None and tuple(np.shape(prompt_mask)) != pshape:
        raise ValueError(f"prompt_mask must have the shape of prompt {pshape}, got {tuple(np.shape(prompt_mask))}")


def _scores(
    model: Any, params: Any, tokens: jax.Array, prompt: jax.Array, prompt_mask: Any, temperature: Any, share: bool
):
    tshape, p = tokens.shape, prompt.shape[-1]
    lead, (g, t) = tshape[:-2], tshape[-2:]
    targets = tokens.reshape(-1, t).astype(jnp.int32)
    config = _config_of(model)
    if config is not None and share:
        # The prompt once per group (its K/V broadcast over the G completions), then the completions
        # tokens[:T-1] (the last token predicts nothing that is scored): the hidden state at prompt
        # position P-1 predicts token 0, completion position j predicts token j+1.
        prompt_b = prompt.reshape(-1, p).astype(jnp.int32)
        mask_b = None if prompt_mask is None else jnp.asarray(prompt_mask).reshape(-1, p).astype(jnp.int32)
        comp = tokens.reshape((-1, g, t)).astype(jnp.int32)[..., : t - 1]
        h_prompt, h_comp = tf.grouped_hidden_states(config, params, prompt_b, comp, mask_b)
        first = jnp.broadcast_to(h_prompt[:, None, -1:], (h_prompt.shape[0], g, 1, h_prompt.shape[-1]))
        hidden = jnp.concatenate([first, h_comp], axis=2).reshape(-1, t, h_prompt.shape[-1])
        logp, ent = _chunked_scores(config, params, hidden, targets, temperature)
        return logp.reshape(tshape), ent.reshape(tshape)
    prompt_g = jnp.broadcast_to(prompt[..., None, :], lead + (g, p)).astype(jnp.int32)
    ids = jnp.concatenate([prompt_g, tokens.astype(jnp.int32)], axis=-1).reshape(-1, p + t)
    if prompt_mask is None:
        mask = None
    else:
        pm = jnp.broadcast_to(jnp.asarray(prompt_mask)[..., None, :], lead + (g, p)).astype(jnp.int32)
        mask = jnp.concatenate([pm, jnp.ones(lead + (g, t), jnp.int32)], axis=-1).reshape(-1, p + t)
    if config is None:
        logits = (model(params, ids) if mask is None else model(params, ids, mask))[:, p - 1 : p + t - 1]
        logp, ent = _token_scores(logits, targets, temperature)
        return logp.reshape(tshape), ent.reshape(tshape)
    hidden = tf.hidden_states(config, params, ids, mask)[:, p - 1 : p + t - 1]
    logp, ent = _chunked_scores(config, params, hidden, targets, temperature)
    return logp.reshape(tshape), ent.reshape(tshape)


def _chunked_scores(config: ModelConfig, params: Any, hidden: jax.Array, targets: jax.Array, temperature: Any):
    """``(logp, entropy)`` ``[N, T]`` of ``targets [N, T]`` from the hidden states ``[N, T, D]`` that predict them.

    Logits only where they are read ([N, T, V], not [N, P+T, V]), in chunks of the T axis, each
    rematerialised: the [N, T, V] float32 logits never exist at once (V = 151936 for Qwen).
    """
    t = targets.shape[-1]
    chunk = min(t, _CHUNK)
    n_chunks = -(-t // chunk)
    pad = n_chunks * chunk - t
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets_p = jnp.pad(targets, ((0, 0), (0, pad)))

    @jax.checkpoint
    def score(h, y):
        return _token_scores(tf.logits_from_hidden(config, params, h), y, temperature)

    h_c = hidden.reshape(hidden.shape[0], n_chunks, chunk, -1).swapaxes(0, 1)
    y_c = targets_p.reshape(-1, n_chunks, chunk).swapaxes(0, 1)
    logp, ent = jax.lax.map(lambda xs: score(*xs), (h_c, y_c))  # [C, N, chunk]
    return (x.swapaxes(0, 1).reshape(-1, n_chunks * chunk)[:, :t] for x in (logp, ent))


_CHUNK = 256


_token_scores = _score_lib.token_scores  # (logits [N, T, V], targets [N, T], temperature) -> (logp, entropy) float32


@functools.cache
def logprob_and_entropy_fn(
    model: Any, *, temperature: float = 1.0, share_prompt: bool = True
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``(params, tokens [..., G, T], prompt [..., P], prompt_mask=None) -> (logp, entropy)`` ``[..., G, T]`` float32.

    ``prompt`` may also be a :class:`Prompt` ``(ids, mask)`` (left-padded prompts in one pytree).

    Args:
      model: a ``model_fn`` of :func:`jgrpo.models.from_pretrained` (or its
        :class:`ModelConfig`), or any causal ``model_fn(params, ids [N, L], mask=None) -> logits``.
      temperature: the policy is ``softmax(logits / temperature)`` (static; 1 = the model).
      share_prompt: for a :class:`ModelConfig` model, run each prompt once per group and attend the
        G completions to its broadcast keys/values (:func:`jgrpo.models.transformer.grouped_hidden_states`):
        ``B (P + G T)`` token rows instead of ``B G (P + T)``, the same values and gradients up to
        float rounding. False: the ``prompt + completion`` sequences, G copies of the prompt (the
        reference path). Ignored for an opaque ``model_fn`` (it only sees whole sequences).

    ``logp[..., i, t] = log pi(tokens[..., i, t] | prompt, tokens[..., i, :t])``; ``entropy`` is
    the entropy of that next-token distribution. Cached per (model, temperature, share_prompt).
    """

    def fn(params: Any, tokens: Any, prompt: Any, prompt_mask: Any = None) -> tuple[jax.Array, jax.Array]:
        if isinstance(prompt, Prompt):
            if prompt_mask is not None:
                raise ValueError("pass the prompt mask either in a Prompt or as prompt_mask, not both")
            prompt, prompt_mask = prompt.ids, prompt.mask
        _check(tokens, prompt, prompt_mask)
        return _scores(model, params, jnp.asarray(tokens), jnp.asarray(prompt), prompt_mask, temperature, share_prompt)

    return fn


@functools.cache
def logprob_fn(model: Any, *, temperature: float = 1.0, share_prompt: bool = True) -> Callable[..., jax.Array]:
    """``logprob_fn(params, tokens [..., G, T], prompt [..., P], prompt_mask=None) -> logp [..., G, T]`` float32.

    The :class:`jgrpo.policies.LogprobFn` protocol for a loaded model (see
    :func:`logprob_and_entropy_fn`; ``share_prompt=True`` runs each prompt once per group)::

        model_fn, params = jgrpo.models.from_pretrained(path)
        logp = jgrpo.models.logprob_fn(model_fn)(params, tokens, prompt)
    """
    both = logprob_and_entropy_fn(model, temperature=temperature, share_prompt=share_prompt)

    def fn(params: Any, tokens: Any, prompt: Any, prompt_mask: Any = None) -> jax.Array:
        return both(params, tokens, prompt, prompt_mask)[0]

    return fn


# ----------------------------------------------------------------------------- decoders for sampling


@dataclasses.dataclass(frozen=True)
class Decoder:
    """Incremental decoding of a :class:`ModelConfig` model with a KV cache (hashable: a static argument).

    ``prefill(params, prompt [B, P], prompt_mask [B, P], max_len, group_size)`` runs the B
    prompts once and returns the next-token logits ``[B*G, V]`` float32 (row ``b*G + i``)
    and the state (the :class:`jgrpo.models.KVCache` repeated G times, with room for
    ``max_len`` more tokens); ``step(params, tokens [B*G], state)`` -> (logits, state).
    """

    config: ModelConfig

    def prefill(self, params: Any, prompt: jax.Array, prompt_mask: jax.Array, max_len: int, group_size: int):
        cache = tf.init_cache(self.config, prompt.shape[0], prompt.shape[1] + max_len)
        logits, cache = tf.decode(self.config, params, prompt, cache, prompt_mask)
        g = group_size
        cache = tf.KVCache(
            k=jnp.repeat(cache.k, g, axis=1),
            v=jnp.repeat(cache.v, g, axis=1),
            valid=jnp.repeat(cache.valid, g, axis=0),
            pos=jnp.repeat(cache.pos, g, axis=0),
            index=cache.index,
        )
        return jnp.repeat(logits[:, -1], g, axis=0), cache

    def step(self, params: Any, tokens: jax.Array, state: tf.KVCache):
        logits, state = tf.decode(self.config, params, tokens[:, None], state)
        return logits[:, 0], state


def decoder(model: Any) -> Decoder:
    """The KV-cache :class:`Decoder` of a ``model_fn`` from :func:`jgrpo.models.from_pretrained` (or its config)."""
    config = _config_of(model)
    if config is None:
        raise TypeError(f"decoder needs a jgrpo.models model_fn or ModelConfig, got {type(model).__name__}")
    return Decoder(config)


@dataclasses.dataclass(frozen=True)
class TabularDecoder:
    """The tabular policy of :mod:`jgrpo.policies` as a decoder: its context is (position, previous token).

    The "cache" is the previous token and the completion position; a step reads one row
    of the ``[T, V+1, V]`` table. The prompt is ignored, as by the policy.
    """

    def prefill(self, params: Any, prompt: jax.Array, prompt_mask: jax.Array, max_len: int, group_size: int):
        table = params["logits"]
        if max_len > table.shape[0]:
            raise ValueError(f"max_len = {max_len} exceeds the tabular policy's T = {table.shape[0]}")
        n, vocab = prompt.shape[0] * group_size, table.shape[-1]
        state = (jnp.ones((n,), jnp.int32), jnp.ones((), jnp.int32))  # (prev token, next position)
        return jnp.broadcast_to(table[0, vocab], (n, vocab)).astype(jnp.float32), state

    def step(self, params: Any, tokens: jax.Array, state: Any):
        table = params["logits"]
        _, t = state
        row = table[jnp.minimum(t, table.shape[0] - 1), tokens]
        return row.astype(jnp.float32), (tokens, t + 1)


def tabular_decoder() -> TabularDecoder:
    """The :class:`TabularDecoder` (same results as ``jgrpo.policies.tabular_logits_fn(P)``, O(1) per token)."""
    return TabularDecoder()


@dataclasses.dataclass(frozen=True)
class NNXDecoder:
    """KV-cache decoding of :class:`jgrpo.policies.Transformer` (the tiny NNX policy of the experiments).

    Runs the module's own layers (``tok_embed``, ``pos_embed``, each block's ``ln1``, ``qkv``,
    ``proj``, ``ln2``, ``fc1``, ``fc2``, then ``ln_f`` and ``head``) one position at a time on
    cached keys and values; the same computation as ``Transformer.__call__`` (tests compare
    the sampled log-probs with ``nnx_logprob_and_entropy_fn`` to 1e-5). Positions are slot
    indices (learned absolute embeddings), so prompts must not be left-padded: pass no
    ``prompt_mask`` (all ones).
    """

    graphdef: Any

    def _run(self, params: Any, ids: jax.Array, state: tuple[jax.Array, jax.Array, jax.Array]):
        from flax import nnx

        model = nnx.merge(self.graphdef, params)
        k_all, v_all, index = state
        n, lq = ids.shape
        dt = jnp.dtype(model.config.dtype)
        pos = index + jnp.arange(lq)
        x = model.tok_embed(ids) + model.pos_embed[...][pos].astype(dt)
        slots = jnp.arange(k_all.shape[2])
        mask = slots[None, :] <= pos[:, None]  # [Lq, S]
        new_k, new_v = [], []
        for i, block in enumerate(model.blocks):
            h, d = block.n_heads, x.shape[-1]
            qkv = block.qkv(block.ln1(x).astype(x.dtype)).reshape(n, lq, 3, h, d // h)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            ks = jax.lax.dynamic_update_slice_in_dim(k_all[i], k.astype(k_all.dtype), index, axis=1)
            vs = jax.lax.dynamic_update_slice_in_dim(v_all[i], v.astype(v_all.dtype), index, axis=1)
            new_k.append(ks)
            new_v.append(vs)
            scores = jnp.einsum("nqhk,nshk->nhqs", q, ks).astype(jnp.float32) / np.sqrt(d // h)
            scores = jnp.where(mask[None, None], scores, jnp.finfo(jnp.float32).min)
            attn = jax.nn.softmax(scores, axis=-1).astype(vs.dtype)
            x = x + block.proj(jnp.einsum("nhqs,nshk->nqhk", attn, vs).reshape(n, lq, d))
            x = x + block.fc2(jax.nn.gelu(block.fc1(block.ln2(x).astype(x.dtype))))
        logits = model.head(model.ln_f(x).astype(x.dtype)).astype(jnp.float32)
        return logits, (jnp.stack(new_k), jnp.stack(new_v), index + lq)

    def prefill(self, params: Any, prompt: jax.Array, prompt_mask: jax.Array, max_len: int, group_size: int):
        from flax import nnx

        model = nnx.merge(self.graphdef, params)
        cfg = model.config
        b, p = prompt.shape
        if p + max_len > cfg.max_len:
            raise ValueError(f"P + T = {p} + {max_len} exceeds TransformerConfig.max_len = {cfg.max_len}")
        shape = (cfg.n_layers, b, p + max_len, cfg.n_heads, cfg.d_model // cfg.n_heads)
        dt = jnp.dtype(cfg.dtype)
        state = (jnp.zeros(shape, dt), jnp.zeros(shape, dt), jnp.zeros((), jnp.int32))
        logits, (k, v, index) = self._run(params, prompt, state)
        state = (jnp.repeat(k, group_size, axis=1), jnp.repeat(v, group_size, axis=1), index)
        return jnp.repeat(logits[:, -1], group_size, axis=0), state

    def step(self, params: Any, tokens: jax.Array, state: Any):
        logits, state = self._run(params, tokens[:, None], state)
        return logits[:, 0], state


def nnx_decoder(graphdef: Any) -> NNXDecoder:
    """The KV-cache :class:`NNXDecoder` of a ``jgrpo.policies.make_transformer`` graphdef."""
    return NNXDecoder(graphdef)
