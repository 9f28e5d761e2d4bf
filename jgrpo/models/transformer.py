"""The Llama-family decoder (Llama 3, Qwen2/Qwen2.5, Qwen3) as pure functions of a parameter pytree.

Semantics follow transformers' ``modeling_llama.py``, ``modeling_qwen2.py`` and
``modeling_qwen3.py`` (v5): pre-norm blocks ``x + attn(rms(x))`` then
``x + mlp(rms(x))``; RMSNorm ``w * (x / sqrt(mean(x^2) + eps))`` computed in float32 and
cast back before the weight; grouped-query attention with scale ``head_dim^-1/2`` and a
float32 softmax; rotary embeddings in the "rotate half" layout with float32 angles
``position * inv_freq`` (:func:`jgrpo.models.config.rope_inv_freq`); Qwen2's q/k/v biases;
Qwen3's per-head RMSNorm of queries and keys before RoPE; a SwiGLU MLP
``down(silu(gate(x)) * up(x))``; a final RMSNorm and the output projection (the input
embedding when tied).

Parameters (``[L, ...]`` = stacked over the L layers, so the layers run as one
``lax.scan`` and compile once whatever the depth)::

    embed       [V, D]
    layers      attn_norm [L, D]; wq [L, D, Hq*hd]; wk, wv [L, D, Hkv*hd]; wo [L, Hq*hd, D];
                bq, bk, bv (qkv_bias); bo (o_bias); q_norm, k_norm [L, hd] (qk_norm);
                mlp_norm [L, D]; w_gate, w_up [L, D, F]; w_down [L, F, D]; b_gate, b_up, b_down (mlp_bias)
    final_norm  [D]
    lm_head     [D, V] (absent when tied)

Weights are stored ``[in, out]`` (transformers stores ``nn.Linear`` weights ``[out, in]``;
the loader transposes). Positions come from the attention mask: ``cumsum(mask) - 1``
(0 on left padding), as transformers' ``generate`` computes them, so left-padded prompts
get positions 0, 1, ... from their first real token, and a right-padded or unpadded
sequence gets ``0..L-1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jgrpo.models.config import ModelConfig, rope_inv_freq

__all__ = [
    "KVCache",
    "decode",
    "forward",
    "grouped_hidden_states",
    "hidden_states",
    "init_cache",
    "init_params",
    "logits_from_hidden",
    "model_fn",
    "param_shapes",
]

_NEG = float(np.finfo(np.float32).min)


class KVCache(NamedTuple):
    """Keys and values of every layer for incremental decoding.

    Attributes:
      k, v: ``[L, N, S, Hkv, hd]`` (compute dtype), slot s of row n.
      valid: ``[N, S]`` bool, slot s holds a real (non-padding) token.
      pos: ``[N]`` int32, the position id the next token of row n gets.
      index: scalar int32, the next slot to write (the same for every row).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    pos: jax.Array
    index: jax.Array


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """The parameter pytree's shapes (tuples), as :func:`init_params` and the loader build it."""
    n, d, f, v, hd = config.num_layers, config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    q, kv = config.num_heads * hd, config.num_kv_heads * hd
    layers = {
        "attn_norm": (n, d),
        "wq": (n, d, q),
        "wk": (n, d, kv),
        "wv": (n, d, kv),
        "wo": (n, q, d),
        "mlp_norm": (n, d),
        "w_gate": (n, d, f),
        "w_up": (n, d, f),
        "w_down": (n, f, d),
    }
    if config.qkv_bias:
        layers.update(bq=(n, q), bk=(n, kv), bv=(n, kv))
    if config.o_bias:
        layers["bo"] = (n, d)
    if config.qk_norm:
        layers.update(q_norm=(n, hd), k_norm=(n, hd))
    if config.mlp_bias:
        layers.update(b_gate=(n, f), b_up=(n, f), b_down=(n, d))
    shapes = {"embed": (v, d), "layers": layers, "final_norm": (d,)}
    if not config.tie_embeddings:
        shapes["lm_head"] = (d, v)
    return shapes


def init_params(config: ModelConfig, key: jax.Array, *, std: float = 0.02) -> dict[str, Any]:
    """Random parameters (normal(0, std) weights and biases, unit norms) in ``config.dtype``.

    What a checkpoint "built from its config with random weights" is (transformers'
    ``initializer_range`` is 0.02), e.g. for benchmarks without downloadable weights.
    """
    return _init(config, float(std))(key)


@functools.cache
def _init(config: ModelConfig, std: float) -> Callable[[jax.Array], dict[str, Any]]:
    return jax.jit(functools.partial(_init_impl, config, std))


def _init_impl(config: ModelConfig, std: float, key: jax.Array) -> dict[str, Any]:
    shapes = param_shapes(config)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]]
    keys = jax.random.split(key, len(leaves))
    dtype = jnp.dtype(config.dtype)
    out = []
    for k, shape, path in zip(keys, leaves, paths, strict=True):
        if "norm" in path:
            out.append(jnp.ones(shape, dtype))
        else:
            out.append((std * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(s, int) for s in x)


# ----------------------------------------------------------------------------- pieces


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm: ``weight * (x / sqrt(mean(x^2) + eps))``, the normalisation in float32 (as transformers)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


def _rope_tables(config: ModelConfig, positions: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` ``[N, L, hd]`` of the positions ``[N, L]``: float32 angles, cast to ``dtype``."""
    inv = jnp.asarray(rope_inv_freq(config))
    angles = positions.astype(jnp.float32)[..., None] * inv  # [N, L, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x [..., L, H, hd]`` rotated: ``x cos + rotate_half(x) sin`` with ``rotate_half = [-x2, x1]``.

    ``cos, sin``: ``[..., L, hd]``, broadcast over the heads (and over any leading axis of size 1).
    """
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[..., None, :] + rotated * sin[..., None, :]


def _linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x, w)
    return y if b is None else y + b


def _layer(config: ModelConfig, p: dict[str, jax.Array], x: jax.Array, cos, sin, k_all, v_all, index, mask):
    """One decoder block on ``x [N, Lq, D]``; writes this block's new keys/values at slot ``index``.

    ``k_all, v_all``: ``[N, S, Hkv, hd]`` cached keys/values, or None (no cache: S = Lq);
    ``mask`` ``[N, Lq, S]`` bool. Returns ``(x, k_all, v_all)`` (None, None without a cache).
    """
    n, lq, _ = x.shape
    hq, hkv, hd = config.num_heads, config.num_kv_heads, config.head_dim
    q, k, v = _qkv(config, p, x, cos, sin)
    if k_all is not None:
        k_all = jax.lax.dynamic_update_slice_in_dim(k_all, k.astype(k_all.dtype), index, axis=1)
        v_all = jax.lax.dynamic_update_slice_in_dim(v_all, v.astype(v_all.dtype), index, axis=1)
        k, v = k_all, v_all
    q = q.reshape(n, lq, hkv, hq // hkv, hd)
    scores = jnp.einsum("nqgrd,nsgd->ngrqs", q, k, preferred_element_type=jnp.float32) * (hd**-0.5)
    scores = jnp.where(mask[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("ngrqs,nsgd->nqgrd", probs, v).reshape(n, lq, hq * hd)
    return _out_and_mlp(config, p, x, out), k_all, v_all


def _qkv(config: ModelConfig, p: dict[str, jax.Array], x: jax.Array, cos, sin):
    """Queries ``[..., Lq, Hq, hd]``, keys and values ``[..., Lq, Hkv, hd]`` of ``x [..., Lq, D]`` (RoPE applied)."""
    lead = x.shape[:-1]
    hq, hkv, hd, eps = config.num_heads, config.num_kv_heads, config.head_dim, config.rms_norm_eps
    h = _rms_norm(x, p["attn_norm"], eps)
    q = _linear(h, p["wq"], p.get("bq")).reshape(lead + (hq, hd))
    k = _linear(h, p["wk"], p.get("bk")).reshape(lead + (hkv, hd))
    v = _linear(h, p["wv"], p.get("bv")).reshape(lead + (hkv, hd))
    if config.qk_norm:
        q = _rms_norm(q, p["q_norm"], eps)
        k = _rms_norm(k, p["k_norm"], eps)
    return _apply_rope(q, cos, sin), _apply_rope(k, cos, sin), v


def _out_and_mlp(config: ModelConfig, p: dict[str, jax.Array], x: jax.Array, attn: jax.Array) -> jax.Array:
    """The rest of a block after attention: ``x + o(attn)``, then ``x + mlp(rms(x))`` (``x``, ``attn`` ``[..., *]``)."""
    eps = config.rms_norm_eps
    x = x + _linear(attn, p["wo"], p.get("bo"))
    h = _rms_norm(x, p["mlp_norm"], eps)
    gate = _linear(h, p["w_gate"], p.get("b_gate"))
    up = _linear(h, p["w_up"], p.get("b_up"))
    return x + _linear(jax.nn.silu(gate) * up, p["w_down"], p.get("b_down"))


def _run_layers(config: ModelConfig, params, x, positions, mask, k_cache=None, v_cache=None, index=0, unroll=1):
    """All layers as one ``lax.scan`` (rematerialised per layer when ``config.remat``; ``unroll`` as ``lax.scan``'s)."""
    cos, sin = _rope_tables(config, positions, x.dtype)

    def body(x, xs):
        p, k_all, v_all = xs
        x, k_all, v_all = _layer(config, p, x, cos, sin, k_all, v_all, index, mask)
        return x, (k_all, v_all)

    if config.remat:
        body = jax.checkpoint(body)
    x, (k_cache, v_cache) = jax.lax.scan(body, x, (params["layers"], k_cache, v_cache), unroll=unroll)
    return _rms_norm(x, params["final_norm"], config.rms_norm_eps), k_cache, v_cache


def _positions(attention_mask: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def hidden_states(
    config: ModelConfig,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    unroll: int | bool = 1,
) -> jax.Array:
    """Final (normed) hidden states ``[N, L, D]`` of ``input_ids [N, L]`` (no cache).

    Query ``i`` attends to key ``j <= i`` with ``attention_mask[j] = 1``; positions are
    ``cumsum(attention_mask) - 1`` (``0..L-1`` without a mask).

    ``unroll``: passed to the layers' ``lax.scan`` (1, the default: one loop body). For FLOP counting:
    XLA's cost analysis counts a while loop's body once, so only ``unroll=True`` (every layer laid out)
    makes ``cost_analysis()`` hold all L layers. The values are the same either way.
    """
    n, length = input_ids.shape
    dtype = jnp.dtype(config.dtype)
    if attention_mask is None:
        attention_mask = jnp.ones((n, length), jnp.int32)
    valid = attention_mask.astype(bool)
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask = causal[None] & valid[:, None, :]
    x = params["embed"][input_ids].astype(dtype)
    h, _, _ = _run_layers(config, params, x, _positions(attention_mask), mask, unroll=unroll)
    return h


def grouped_hidden_states(
    config: ModelConfig,
    params: Any,
    prompt: jax.Array,
    completions: jax.Array,
    prompt_mask: jax.Array | None = None,
    *,
    unroll: int | bool = 1,
) -> tuple[jax.Array, jax.Array]:
    """Final hidden states of G completions per prompt, the prompt run once per group: ``(h_prompt, h_comp)``.

    Equals :func:`hidden_states` of the ``B*G`` sequences ``prompt[b] + completions[b, i]`` (attention mask
    ``prompt_mask`` then ones) up to float rounding, with the prompt computed once per group instead of G
    times: each layer runs the prompt rows ``[B, P]`` (causal, over the valid prompt keys), then the
    completion rows ``[B, G, Tc]`` with attention over ``concat(prompt K/V of their group, own K/V)`` at
    positions ``sum(prompt_mask[b]) + 0 .. Tc-1``. The prompt K/V are read through a broadcast over G
    (never copied G times), so their gradient sums over the group. The token work falls from
    ``B G (P + Tc)`` to ``B (P + G Tc)`` rows.

    Args:
      config: the model.
      params: its parameters.
      prompt: ``[B, P]`` int token ids (left-padded where ``prompt_mask`` is 0).
      completions: ``[B, G, Tc]`` int token ids (Tc >= 0).
      prompt_mask: ``[B, P]`` 0/1, or None (all real).
      unroll: passed to the layers' ``lax.scan``, as in :func:`hidden_states` (``True`` for FLOP counting:
        XLA's cost analysis then holds every layer, not one loop body). The values are the same either way.

    Returns:
      ``h_prompt [B, P, D]`` and ``h_comp [B, G, Tc, D]`` (compute dtype, after the final norm).
    """
    b, p = prompt.shape
    g, tc = completions.shape[1:]
    dtype = jnp.dtype(config.dtype)
    hq, hkv, hd = config.num_heads, config.num_kv_heads, config.head_dim
    if prompt_mask is None:
        prompt_mask = jnp.ones((b, p), jnp.int32)
    valid = prompt_mask.astype(bool)  # [B, P]
    mask_p = jnp.tril(jnp.ones((p, p), bool))[None] & valid[:, None, :]  # [B, P, P]
    causal_c = jnp.tril(jnp.ones((tc, tc), bool))  # [Tc, Tc]
    # Prompt rows and completion rows are packed into one [R, D] array (R = B P + B G Tc) for the
    # projections and the MLP; only attention tells them apart.
    rp = b * p
    offset = jnp.sum(prompt_mask.astype(jnp.int32), axis=-1)  # [B]: the first completion position
    pos_c = jnp.broadcast_to(offset[:, None, None] + jnp.arange(tc, dtype=jnp.int32), (b, g, tc))
    positions = jnp.concatenate([_positions(prompt_mask).reshape(-1), pos_c.reshape(-1)])
    cos, sin = _rope_tables(config, positions[None], dtype)
    cos, sin = cos[0], sin[0]  # [R, hd]
    scale = hd**-0.5

    def body(x, lp):
        q, k, v = _qkv(config, lp, x, cos, sin)  # [R, H, hd]
        qp, kp, vp = (y[:rp].reshape(b, p, *y.shape[1:]) for y in (q, k, v))
        qc, kc, vc = (y[rp:].reshape(b, g, tc, *y.shape[1:]) for y in (q, k, v))
        qp = qp.reshape(b, p, hkv, hq // hkv, hd)
        s = jnp.einsum("nqgrd,nsgd->ngrqs", qp, kp, preferred_element_type=jnp.float32) * scale
        probs = jax.nn.softmax(jnp.where(mask_p[:, None, None], s, _NEG), axis=-1).astype(vp.dtype)
        out_p = jnp.einsum("ngrqs,nsgd->nqgrd", probs, vp).reshape(rp, hq * hd)
        qc = qc.reshape(b, g, tc, hkv, hq // hkv, hd)
        s_p = jnp.einsum("bmqhrd,bshd->bmhrqs", qc, kp, preferred_element_type=jnp.float32) * scale
        s_c = jnp.einsum("bmqhrd,bmshd->bmhrqs", qc, kc, preferred_element_type=jnp.float32) * scale
        s_p = jnp.where(valid[:, None, None, None, None, :], s_p, _NEG)
        s_c = jnp.where(causal_c, s_c, _NEG)
        probs = jax.nn.softmax(jnp.concatenate([s_p, s_c], axis=-1), axis=-1).astype(vc.dtype)
        out_c = jnp.einsum("bmhrqs,bshd->bmqhrd", probs[..., :p], vp)
        out_c = out_c + jnp.einsum("bmhrqs,bmshd->bmqhrd", probs[..., p:], vc)
        out = jnp.concatenate([out_p, out_c.reshape(b * g * tc, hq * hd)])
        return _out_and_mlp(config, lp, x, out), None

    if config.remat:
        body = jax.checkpoint(body)
    ids = jnp.concatenate([prompt.reshape(-1), completions.reshape(-1)])
    x, _ = jax.lax.scan(body, params["embed"][ids].astype(dtype), params["layers"], unroll=unroll)
    h = _rms_norm(x, params["final_norm"], config.rms_norm_eps)
    d = h.shape[-1]
    return h[:rp].reshape(b, p, d), h[rp:].reshape(b, g, tc, d)


def logits_from_hidden(config: ModelConfig, params: Any, hidden: jax.Array) -> jax.Array:
    """Output logits ``[..., V]`` float32 of hidden states ``[..., D]`` (float32 accumulation)."""
    head = params["embed"].T if config.tie_embeddings else params["lm_head"]
    return jnp.einsum("...d,dv->...v", hidden, head, preferred_element_type=jnp.float32)


def forward(config: ModelConfig, params: Any, input_ids: jax.Array, attention_mask: jax.Array | None = None):
    """Logits ``[N, L, V]`` float32 of ``input_ids [N, L]`` (see :func:`hidden_states`)."""
    return logits_from_hidden(config, params, hidden_states(config, params, input_ids, attention_mask))


@functools.cache
def model_fn(config: ModelConfig) -> Callable[..., jax.Array]:
    """``model_fn(params, input_ids [N, L], attention_mask=None) -> logits [N, L, V]`` float32 of ``config``.

    Cached per config, so the same function object comes back (jitted callers that take it
    as a static argument do not recompile).
    """

    def fn(params: Any, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        return forward(config, params, input_ids, attention_mask)

    fn.config = config  # type: ignore[attr-defined]
    return fn


# ----------------------------------------------------------------------------- incremental decoding


def init_cache(config: ModelConfig, batch: int, length: int) -> KVCache:
    """An empty :class:`KVCache` of ``length`` slots for ``batch`` rows."""
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, length), bool),
        pos=jnp.zeros((batch,), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def decode(
    config: ModelConfig, params: Any, input_ids: jax.Array, cache: KVCache, attention_mask: jax.Array | None = None
) -> tuple[jax.Array, KVCache]:
    """Runs ``input_ids [N, Lq]`` at slots ``cache.index ..`` on top of the cache: ``(logits [N, Lq, V], cache)``.

    A prefill passes the (left-padded) prompt with its mask; each decoding step passes one
    token (mask 1). Query ``i`` attends to valid slots ``<= cache.index + i``; positions
    continue from ``cache.pos`` over the masked-in tokens. The logits equal
    :func:`forward`'s on the concatenated sequence up to float rounding.
    """
    n, lq = input_ids.shape
    dtype = jnp.dtype(config.dtype)
    if attention_mask is None:
        attention_mask = jnp.ones((n, lq), jnp.int32)
    m = attention_mask.astype(jnp.int32)
    positions = cache.pos[:, None] + _positions(m)
    valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, m.astype(bool), cache.index, axis=1)
    slots = jnp.arange(valid.shape[1])
    causal = slots[None, :] <= cache.index + jnp.arange(lq)[:, None]  # [Lq, S]
    mask = causal[None] & valid[:, None, :]
    x = params["embed"][input_ids].astype(dtype)
    h, k, v = _run_layers(config, params, x, positions, mask, cache.k, cache.v, cache.index)
    new = KVCache(k=k, v=v, valid=valid, pos=cache.pos + jnp.sum(m, axis=1), index=cache.index + lq)
    return logits_from_hidden(config, params, h), new
