"""Small policies that the analyses run on: an exact tabular policy and a tiny flax NNX transformer.

The log-probability protocol
----------------------------
Every policy in jgrpo is used through one pure function::

    logprob_fn(params, tokens, prompt) -> logp

* ``prompt``: ``[..., P]`` int, the prompt token ids (one prompt per group); None for a
  policy that ignores the prompt (the tabular ones), or a pytree of ``[..., ...]`` arrays
  such as ``jgrpo.models.Prompt(ids, mask)`` for left-padded prompts.
* ``tokens``: ``[..., G, T]`` int, the G completions of each prompt.
* ``logp``: ``[..., G, T]`` float32, ``log pi_theta(y_t | prompt, y_<t)`` of every
  completion token (padding positions included; mask them downstream).

Every analysis takes the policy this way and the prompt as a keyword next to the batch,
``prompt=`` (None by default): ``analysis.overshoot.simulate_group(spec, logprob_fn, params,
batch, opt, mu, prompt=prompt)``, ``grpo_loss_fn`` / ``group_ratio_fn``,
``analysis.reward_scale.trajectory_deviation`` / ``deviation_grid`` (the prompt moves with its
group when a batch is reordered), ``analysis.proxy.policy_snis_gain``, and
``analysis.prefix.decompose``. Build it from any Hugging Face ``model_fn`` with
``jgrpo.models.logprob_fn(model_fn)``, from the NNX transformer with ``jgrpo.nnx_logprob_fn(graphdef)``;
the tabular policies (``tabular_logprob``, ``tabular_prompt_logprob``, ``tree_logprob``) are
such functions already.

``params`` is an explicit pytree, so ``jax.grad`` of any function of ``logp`` with
respect to ``params`` is the exact policy gradient of that function. The optional
companion::

    logprob_and_entropy_fn(params, tokens, prompt) -> (logp, entropy)

also returns ``entropy`` ``[..., G, T]`` float32, the entropy
``H(pi_theta(. | prompt, y_<t))`` of the next-token distribution at each position
(the per-token entropy that GTPO reads).

Two completions that share a prefix get *identical* ``logp`` on the prefix
tokens: the context of token t is the prompt and y_<t only. This is what the
shared-prefix analysis (Prop. 1) relies on; both policies below satisfy it.

Policies
--------
* Tabular (``tabular_*``, :class:`TabularPolicy`): an exact, tiny autoregressive
  softmax policy, ``pi(y_t = v | x, y_<t) = softmax(logits[t, y_{t-1}])[v]`` with
  a ``[T, V+1, V]`` table (row ``V`` of the middle axis is the start context used
  at ``t = 0``). Its context is ``(t, y_{t-1})``: it is *Markov* (first order, time
  dependent) and ignores the prompt, so ``d log pi(y_t) / d logits`` has the closed
  form ``onehot(y_t) - pi`` on the single cell ``(t, y_{t-1})`` and zero elsewhere.
  Note that completions with *different* prefixes that reach the same token at the
  same position share that cell (their gradients land on the same parameters);
  the per-token log-probabilities of a shared prefix are nonetheless exact and
  identical across the completions that share it.
* Tabular variants (same conventions): :func:`tabular_sample` draws completions directly
  (O(T) per completion); ``tabular_prompt_*`` keep one ``[T, V+1, V]`` table per prompt id
  (context ``(prompt, t, y_{t-1})``); ``tree_*`` keep one row of logits per *whole prefix*
  (``[N, V]``, ``N = 1 + V + ... + V^{T-1}``, context ``y_<t``), so completions share the
  parameters of token t exactly when they share the prefix ``y_<t`` — the shared prefixes of
  Prop. 1 without the cell sharing of the ``(t, y_{t-1})`` table.
* Transformer (:class:`Transformer`, :class:`TransformerConfig`): a decoder-only,
  pre-LayerNorm transformer with learned position embeddings, causal self-attention
  and a GELU MLP. :func:`make_transformer` returns ``(graphdef, params)`` from
  ``nnx.split``; :func:`nnx_logprob_fn` and :func:`nnx_logits_fn` turn the graphdef
  into pure functions of ``params`` (``nnx.merge`` inside).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from jgrpo import _scores
from jgrpo._validate import check_ids, check_int_array, is_concrete, shape_str

__all__ = [
    "LogprobAndEntropyFn",
    "LogprobFn",
    "TabularPolicy",
    "Transformer",
    "TransformerConfig",
    "make_transformer",
    "nnx_logits_fn",
    "nnx_logprob_and_entropy_fn",
    "nnx_grouped_logits",
    "nnx_logprob_fn",
    "tabular_grad_logp",
    "tabular_init",
    "tabular_logits_fn",
    "tabular_logprob",
    "tabular_logprob_and_entropy",
    "TabularSamples",
    "tabular_prompt_init",
    "tabular_prompt_logprob",
    "tabular_prompt_logprob_and_entropy",
    "tabular_prompt_sample",
    "tabular_sample",
    "tree_contexts",
    "tree_init",
    "tree_logprob",
    "tree_logprob_and_entropy",
    "tree_num_contexts",
    "tree_sample",
]


class LogprobFn(Protocol):
    """``(params, tokens [..., G, T], prompt [..., P]) -> logp [..., G, T]`` float32."""

    def __call__(self, params: Any, tokens: jax.Array, prompt: jax.Array) -> jax.Array: ...


class LogprobAndEntropyFn(Protocol):
    """``(params, tokens [..., G, T], prompt [..., P]) -> (logp, entropy)``, both ``[..., G, T]`` float32."""

    def __call__(self, params: Any, tokens: jax.Array, prompt: jax.Array) -> tuple[jax.Array, jax.Array]: ...


# ----------------------------------------------------------------------------- helpers


# The input checks are jgrpo._validate's (one copy for jgrpo and analysis), under the names used below.
_shape_str = shape_str
_is_concrete = is_concrete
_check_int = check_int_array  # (name, x, *, min_rank, dims) -> shape; TypeError for non-integer ids
_check_range = check_ids  # (name, x, vocab): 0 <= x < vocab when concrete


# The one log-softmax-gather and entropy of jgrpo (jgrpo._scores), under the names used below.
_entropy = _scores.entropy
_log_softmax32 = _scores.log_softmax32
_token_logp_and_entropy = _scores.token_logp_and_entropy


# ----------------------------------------------------------------------------- tabular policy


def tabular_init(key: jax.Array, *, vocab: int, max_len: int, scale: float = 1.0) -> dict[str, jax.Array]:
    """Random parameters of a tabular policy.

    Args:
      key: a PRNG key.
      vocab: V >= 1, the vocabulary size.
      max_len: T >= 1, the longest completion the table covers.
      scale: standard deviation of the i.i.d. normal logits (0 gives the uniform policy).

    Returns:
      ``{"logits": [T, V+1, V]}`` float32; ``logits[t, c]`` are the next-token logits at
      completion position t after previous token c (``c = V``: the start context, t = 0).

    Raises:
      ValueError: vocab or max_len < 1, or a negative scale.
    """
    if int(vocab) < 1:
        raise ValueError(f"vocab must be >= 1, got {vocab}")
    if int(max_len) < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    logits = scale * jax.random.normal(key, (max_len, vocab + 1, vocab), jnp.float32)
    return {"logits": logits}


def _tabular_table(params: Any) -> jax.Array:
    if not isinstance(params, Mapping) or "logits" not in params:
        raise ValueError(f"params must be a dict {{'logits': [T, V+1, V]}}, got {type(params).__name__}")
    table = params["logits"]
    shape = tuple(np.shape(table))
    if len(shape) != 3 or shape[1] != shape[2] + 1:
        raise ValueError(f"params['logits'] must have shape [T, V+1, V], got {_shape_str(shape)}")
    return table


def _check_tabular(params: Any, tokens: Any) -> None:
    t_max, _, vocab = np.shape(_tabular_table(params))
    shape = _check_int("tokens", tokens, min_rank=1, dims="[..., T]")
    if shape[-1] > t_max:
        raise ValueError(
            f"tokens has T = {shape[-1]} tokens but the tabular policy covers max_len = {t_max} (shape {shape})"
        )
    _check_range("tokens", tokens, vocab)


def _tabular_prev(tokens: jax.Array, vocab: int) -> jax.Array:
    """The context index of each token ``[..., T]``: y_{t-1}, and V (the start context) at t = 0."""
    start = jnp.full(tokens.shape[:-1] + (1,), vocab, tokens.dtype)
    return jnp.concatenate([start, tokens[..., :-1]], axis=-1)


def _tabular_cells(table: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (prev [..., T] context index, log-softmaxed cell logits [..., T, V] in float32)."""
    prev = _tabular_prev(tokens, table.shape[-1])
    logits_v = table[jnp.arange(tokens.shape[-1]), prev]  # [..., T, V]
    return prev, jax.nn.log_softmax(logits_v.astype(jnp.float32), axis=-1)


@jax.jit
def _tabular_core(table: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logp, entropy)`` ``[..., T]``: one log-sum-exp per cell of the table, then one scalar per token.

    The table is read as ``[T_max (V+1), V]`` rows (one per cell, a free reshape); each row's
    log-sum-exp is computed once and each token reads two scalars,
    ``logp_t = table[t, y_{t-1}, y_t] - logsumexp(table[t, y_{t-1}])``; the entropies likewise, one per
    cell. The values are those of the per-token form ``log_softmax(table[t, y_{t-1}])[y_t]``
    (:func:`_tabular_core_gather`, float32 rounding); the gradient is a scalar per token into the table
    and the log-sum-exp's into its rows, instead of a ``[..., T, V]`` gather whose transpose scatters
    ``V``-wide rows, and no log-softmaxed ``[T_max, V+1, V]`` table is formed and differentiated: under
    ``vmap`` over parameter sets (an inner-loop sweep) the only table-sized work per step is the
    log-sum-exp and its gradient.
    """
    t_max, n_ctx, vocab = table.shape
    rows = table.astype(jnp.float32).reshape(t_max * n_ctx, vocab)  # row c + n_ctx t is cell (t, c)
    lse = jax.nn.logsumexp(rows, axis=-1)  # [T_max (V+1)]
    cell = jnp.arange(tokens.shape[-1]) * n_ctx + _tabular_prev(tokens, vocab)  # [..., T]
    logp = rows.reshape(-1)[cell * vocab + tokens] - lse[cell]
    return logp, _entropy(rows - lse[:, None])[cell]


@jax.jit
def _tabular_core_dense(table: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The dense formulation of :func:`_tabular_core` (issue 10 until the per-cell log-sum-exp): the
    log-softmax of the whole ``[T_max, V+1, V]`` table, then one entry per token. Same values; kept as
    a reference for the tests and the benchmark."""
    lsm = jax.nn.log_softmax(table.astype(jnp.float32), axis=-1)  # [T_max, V+1, V]
    pos = jnp.arange(tokens.shape[-1])
    prev = _tabular_prev(tokens, table.shape[-1])
    return lsm[pos, prev, tokens], _entropy(lsm)[pos, prev]


@jax.jit
def _tabular_core_gather(table: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The per-token formulation of :func:`_tabular_core` (before issue 10): gather each token's cell
    ``[..., T, V]``, log-softmax it, pick the token. Same values; kept as the reference that tests and
    the benchmark compare the dense formulation with (its gradient scatters ``V``-wide rows)."""
    _, logp_v = _tabular_cells(table, tokens)
    return _token_logp_and_entropy(logp_v, tokens)


@functools.partial(jax.jit, static_argnames="dense")
def _tabular_grad_core(table: jax.Array, tokens: jax.Array, *, dense: bool) -> jax.Array:
    t_max, n_ctx, vocab = table.shape
    prev, logp_v = _tabular_cells(table, tokens)
    row = jax.nn.one_hot(tokens, vocab, dtype=jnp.float32) - jnp.exp(logp_v)  # [..., T, V]
    if not dense:
        return row
    pos = jax.nn.one_hot(jnp.arange(tokens.shape[-1]), t_max, dtype=jnp.float32)  # [T, T_max]
    ctx = jax.nn.one_hot(prev, n_ctx, dtype=jnp.float32)  # [..., T, V+1]
    full = pos[..., :, :, None, None] * ctx[..., :, None, :, None] * row[..., :, None, None, :]
    return full.astype(table.dtype)


def tabular_logprob_and_entropy(
    params: Any, tokens: ArrayLike, prompt: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probabilities and next-token entropies of the tabular policy.

    ``logp[..., t] = log softmax(logits[t, y_{t-1}])[y_t]`` with ``y_{-1}`` the start context.

    Args:
      params: ``{"logits": [T_max, V+1, V]}``.
      tokens: ``[..., T]`` int completions (e.g. ``[B, G, T]``), ``T <= T_max``.
      prompt: ignored (the tabular policy does not condition on the prompt); accepted
        for the ``logprob_fn`` protocol.

    Returns:
      ``(logp, entropy)``, both ``[..., T]`` float32.

    Raises:
      ValueError: bad params shape, tokens of rank 0, T > T_max, or (when concrete)
        token ids outside ``[0, V)``.
      TypeError: non-integer tokens.
    """
    del prompt
    _check_tabular(params, tokens)
    return _tabular_core(params["logits"], jnp.asarray(tokens))


def tabular_logprob(params: Any, tokens: ArrayLike, prompt: ArrayLike | None = None) -> jax.Array:
    """Per-token log-probabilities ``[..., T]`` float32 of the tabular policy (see
    :func:`tabular_logprob_and_entropy`)."""
    return tabular_logprob_and_entropy(params, tokens, prompt)[0]


def tabular_grad_logp(params: Any, tokens: Any, *, dense: bool = False) -> Any:
    """Closed-form gradient of each token's log-probability with respect to the logits table.

    ``d log pi(y_t) / d logits[t', c, v] = 1{t' = t, c = y_{t-1}} (1{v = y_t} - pi(v | t, y_{t-1}))``.

    Args:
      params: ``{"logits": [T_max, V+1, V]}``.
      tokens: ``[..., T]`` int completions.
      dense: if False (default), return only the non-zero row ``onehot(y_t) - pi`` of
        each token, ``[..., T, V]``. If True, return it scattered into the full table
        shape: ``{"logits": [..., T, T_max, V+1, V]}``, exactly the layout of
        ``jax.jacrev(lambda p: tabular_logprob(p, tokens))(params)``.

    Returns:
      ``[..., T, V]`` float32 (``dense=False``) or a params-shaped dict with leading
      ``[..., T]`` (``dense=True``).
    """
    _check_tabular(params, tokens)
    out = _tabular_grad_core(params["logits"], jnp.asarray(tokens), dense=dense)
    return {"logits": out} if dense else out


@functools.cache
def tabular_logits_fn(prompt_len: int) -> Callable[[Any, jax.Array], jax.Array]:
    """The tabular policy as a ``logits_fn(params, ids [N, L]) -> logits [N, L, V]`` for sampling.

    ``ids`` are sequences ``prompt + completion`` with a prompt of ``prompt_len`` tokens;
    position ``j`` predicts completion token ``t = j + 1 - prompt_len`` from the cell
    ``(t, ids[j])`` (start context at t = 0). Positions before ``prompt_len - 1``
    predict prompt tokens and get zero logits. The function is cached per
    ``prompt_len``, so passing it to :func:`jgrpo.sampling.sample` twice does not
    recompile.
    """
    if int(prompt_len) < 1:
        raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")

    def logits_fn(params: Any, ids: jax.Array) -> jax.Array:
        table = _tabular_table(params)
        t_max, _, vocab = table.shape
        length = ids.shape[-1]
        t = jnp.arange(length) + 1 - prompt_len  # [L]
        ctx = jnp.where(t == 0, vocab, ids)  # [N, L]
        logits = table[jnp.clip(t, 0, t_max - 1), ctx]  # [N, L, V]
        return jnp.where((t >= 0)[:, None], logits, 0.0).astype(jnp.float32)

    return logits_fn


@dataclasses.dataclass(frozen=True, kw_only=True)
class TabularPolicy:
    """A tabular softmax policy of fixed size (a hashable convenience wrapper).

    Attributes:
      vocab: V, the vocabulary size.
      max_len: T_max, the longest completion.

    The methods forward to the module-level ``tabular_*`` functions and check that
    ``params`` has this policy's shape ``[T_max, V+1, V]``.
    """

    vocab: int
    max_len: int

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, int) or self.vocab < 1:
            raise ValueError(f"TabularPolicy.vocab must be an int >= 1, got {self.vocab!r}")
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise ValueError(f"TabularPolicy.max_len must be an int >= 1, got {self.max_len!r}")

    def _check(self, params: Any) -> None:
        shape = tuple(np.shape(_tabular_table(params)))
        want = (self.max_len, self.vocab + 1, self.vocab)
        if shape != want:
            raise ValueError(f"params['logits'] must have shape [T, V+1, V] = {_shape_str(want)}, got {shape}")

    def init(self, key: jax.Array, *, scale: float = 1.0) -> dict[str, jax.Array]:
        return tabular_init(key, vocab=self.vocab, max_len=self.max_len, scale=scale)

    def logprob(self, params: Any, tokens: Any, prompt: Any = None) -> jax.Array:
        self._check(params)
        return tabular_logprob(params, tokens, prompt)

    def logprob_and_entropy(self, params: Any, tokens: Any, prompt: Any = None) -> tuple[jax.Array, jax.Array]:
        self._check(params)
        return tabular_logprob_and_entropy(params, tokens, prompt)

    def grad_logp(self, params: Any, tokens: Any, *, dense: bool = False) -> Any:
        self._check(params)
        return tabular_grad_logp(params, tokens, dense=dense)

    def logits_fn(self, prompt_len: int) -> Callable[[Any, jax.Array], jax.Array]:
        return tabular_logits_fn(prompt_len)


# ----------------------------------------------------------------------------- tabular: sampling, prompts, prefix trees
#
# Three additions around the tabular policy above:
#
# * :func:`tabular_sample`: draws completions of the ``(t, y_{t-1})`` policy directly
#   (one ``lax.scan`` over the T positions, O(T) per completion), with the same
#   conventions as :func:`jgrpo.sampling.sample` (the EOS token is part of the
#   completion, ``pad_id`` after it).
# * Prompt-conditioned tables (``tabular_prompt_*``): ``[K, T, V+1, V]``, one table per
#   prompt id ``k``; the context of token t is ``(prompt, t, y_{t-1})``.
# * Prefix trees (``tree_*``): one row of logits per *whole prefix*, ``[N, V]`` with
#   ``N = 1 + V + ... + V^{T-1}``; the context of token t is ``y_<t`` itself. Two
#   completions share a parameter row at position t exactly when they share the
#   prefix ``y_<t``, so the shared prefixes of Prop. 1 are exact (in the
#   ``(t, y_{t-1})`` table, completions with different prefixes that reach the same
#   token at the same position share a cell).


class TabularSamples(NamedTuple):
    """Completions drawn from a tabular policy.

    Attributes:
      tokens: ``[..., T]`` int32 token ids; ``pad_id`` after the first EOS.
      mask: ``[..., T]`` float32, 1 on completion tokens up to and including the first EOS.
    """

    tokens: jax.Array
    mask: jax.Array


def _check_sample_args(max_len: int, table_len: int, eos_id: Any, pad_id: int, vocab: int) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or not 1 <= max_len <= table_len:
        raise ValueError(f"max_len must be an int in [1, {table_len}] (the table's T), got {max_len!r}")
    if eos_id is not None and not 0 <= int(eos_id) < vocab:
        raise ValueError(f"eos_id must be None or lie in [0, V = {vocab}), got {eos_id!r}")
    if not 0 <= int(pad_id) < vocab:
        raise ValueError(f"pad_id must lie in [0, V = {vocab}), got {pad_id!r}")


def _sample_scan(next_logits: Callable, state0: Any, key: jax.Array, shape: tuple[int, ...], max_len: int, eos, pad):
    """Shared ancestral sampler: ``next_logits(state, t) -> [*shape, V]``, state updated by ``(state, t, y)``."""
    logits_fn, update = next_logits

    def step(carry, t):
        state, alive, k = carry
        k, sub = jax.random.split(k)
        y = jax.random.categorical(sub, logits_fn(state, t).astype(jnp.float32), axis=-1).astype(jnp.int32)
        tok = jnp.where(alive, y, pad)
        m = alive.astype(jnp.float32)
        if eos is not None:
            alive = alive & (y != eos)
        return (update(state, t, y), alive, k), (tok, m)

    alive0 = jnp.ones(shape, bool)
    _, (tok, m) = jax.lax.scan(step, (state0, alive0, key), jnp.arange(max_len))
    return TabularSamples(tokens=jnp.moveaxis(tok, 0, -1), mask=jnp.moveaxis(m, 0, -1))


@functools.partial(jax.jit, static_argnames=("shape", "max_len", "eos_id", "pad_id"))
def _tabular_sample_core(table, key, *, shape, max_len, eos_id, pad_id):
    vocab = table.shape[-1]

    def logits(prev, t):
        return table[t, prev]

    def update(prev, t, y):
        return y

    return _sample_scan((logits, update), jnp.full(shape, vocab, jnp.int32), key, shape, max_len, eos_id, pad_id)


def tabular_sample(
    params: Any, key: jax.Array, shape: tuple[int, ...], *, max_len: int, eos_id: int | None = None, pad_id: int = 0
) -> TabularSamples:
    """Draws completions ``[*shape, max_len]`` of the tabular policy (temperature 1).

    Token t is drawn from ``softmax(logits[t, y_{t-1}])`` (start context V at t = 0);
    a completion ends at its first ``eos_id`` (kept, mask 1) and is padded with
    ``pad_id`` (mask 0) after it. The distribution is that of
    ``jgrpo.sample(tabular_logits_fn(P), ...)`` and of ``analysis.tabular``.

    Args:
      params: ``{"logits": [T, V+1, V]}``.
      key: a PRNG key.
      shape: leading shape of the draws, e.g. ``(B, G)``.
      max_len: completion length, ``1 <= max_len <= T``.
      eos_id: the EOS token, or None (fixed-length completions).
      pad_id: the id written after EOS.

    Returns:
      :class:`TabularSamples` with ``tokens`` and ``mask`` ``[*shape, max_len]``.

    Raises:
      ValueError: bad params shape, ``max_len`` outside ``[1, T]``, ids outside ``[0, V)``.
    """
    table = _tabular_table(params)
    t_max, _, vocab = np.shape(table)
    _check_sample_args(max_len, t_max, eos_id, pad_id, vocab)
    return _tabular_sample_core(
        table, key, shape=tuple(int(s) for s in shape), max_len=int(max_len), eos_id=eos_id, pad_id=int(pad_id)
    )


def tabular_prompt_init(
    key: jax.Array, *, prompts: int, vocab: int, max_len: int, scale: float = 1.0
) -> dict[str, jax.Array]:
    """Random parameters of a prompt-conditioned tabular policy: ``{"logits": [K, T, V+1, V]}``.

    Prompt id ``k`` selects the table ``logits[k]``, a tabular policy of its own
    (see :func:`tabular_init`).

    Raises:
      ValueError: prompts, vocab or max_len < 1, or a negative scale.
    """
    if int(prompts) < 1:
        raise ValueError(f"prompts must be >= 1, got {prompts}")
    keys = jax.random.split(key, int(prompts))
    return {"logits": jax.vmap(lambda k: tabular_init(k, vocab=vocab, max_len=max_len, scale=scale)["logits"])(keys)}


def _prompt_tables(params: Any, prompt: Any) -> tuple[jax.Array, jax.Array]:
    if not isinstance(params, Mapping) or "logits" not in params:
        raise ValueError(f"params must be a dict {{'logits': [K, T, V+1, V]}}, got {type(params).__name__}")
    table = params["logits"]
    shape = tuple(np.shape(table))
    if len(shape) != 4 or shape[2] != shape[3] + 1:
        raise ValueError(f"params['logits'] must have shape [K, T, V+1, V] (one table per prompt), got {shape}")
    _check_int("prompt", prompt, min_rank=0, dims="[...]")
    _check_range("prompt", prompt, shape[0])
    return table, jnp.asarray(prompt)


def tabular_prompt_logprob_and_entropy(
    params: Any, tokens: ArrayLike, prompt: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probabilities and entropies of a prompt-conditioned tabular policy.

    ``logp[..., g, t] = log softmax(logits[prompt[...], t, y_{t-1}])[y_t]``.

    Args:
      params: ``{"logits": [K, T_max, V+1, V]}``.
      tokens: ``[..., G, T]`` int completions.
      prompt: ``[...]`` int prompt ids in ``[0, K)`` (one per group), or ``[..., 1]``.

    Returns:
      ``(logp, entropy)``, both ``[..., G, T]`` float32.

    Raises:
      ValueError: bad params shape, prompt dims not matching the tokens' leading dims,
        T > T_max, or (when concrete) ids out of range.
    """
    table, prompt = _prompt_tables(params, prompt)
    tshape = _check_int("tokens", tokens, min_rank=2, dims="[..., G, T]")
    lead = tshape[:-2]
    if prompt.shape == lead + (1,):
        prompt = prompt[..., 0]
    if prompt.shape != lead:
        raise ValueError(
            f"prompt must have shape [...] = {_shape_str(lead)} (the leading dims of tokens "
            f"{_shape_str(tshape)}), got {_shape_str(prompt.shape)}"
        )
    _, t_max, _, vocab = np.shape(table)
    if tshape[-1] > t_max:
        raise ValueError(f"tokens has T = {tshape[-1]} tokens but the tables cover max_len = {t_max}")
    _check_range("tokens", tokens, vocab)
    tokens = jnp.asarray(tokens)
    flat_p, flat_t = prompt.reshape(-1), tokens.reshape((-1,) + tshape[-2:])
    logp, ent = jax.vmap(_tabular_core)(table[flat_p], flat_t)
    return logp.reshape(tshape), ent.reshape(tshape)


def tabular_prompt_logprob(params: Any, tokens: ArrayLike, prompt: ArrayLike) -> jax.Array:
    """``[..., G, T]`` log-probabilities of a prompt-conditioned tabular policy (see
    :func:`tabular_prompt_logprob_and_entropy`)."""
    return tabular_prompt_logprob_and_entropy(params, tokens, prompt)[0]


def tabular_prompt_sample(
    params: Any,
    prompt: Any,
    key: jax.Array,
    *,
    group_size: int,
    max_len: int,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> TabularSamples:
    """Draws ``group_size`` completions per prompt: ``[B, G, max_len]`` for ``prompt`` ``[B]``.

    Each prompt's completions come from its own table (:func:`tabular_sample`), with
    independent keys.
    """
    table, prompt = _prompt_tables(params, prompt)
    if prompt.ndim != 1:
        raise ValueError(f"prompt must have shape [B], got {_shape_str(prompt.shape)}")
    _, t_max, _, vocab = np.shape(table)
    _check_sample_args(max_len, t_max, eos_id, pad_id, vocab)
    keys = jax.random.split(key, prompt.shape[0])
    core = functools.partial(
        _tabular_sample_core, shape=(int(group_size),), max_len=int(max_len), eos_id=eos_id, pad_id=int(pad_id)
    )
    return jax.vmap(core)(table[prompt], keys)


def tree_num_contexts(vocab: int, max_len: int) -> int:
    """N = 1 + V + ... + V^{T-1}, the number of prefixes of length < T (rows of a prefix-tree table)."""
    if int(vocab) < 1 or int(max_len) < 1:
        raise ValueError(f"vocab and max_len must be >= 1, got {vocab}, {max_len}")
    v, t = int(vocab), int(max_len)
    return t if v == 1 else (v**t - 1) // (v - 1)


_TREE_MAX_CONTEXTS = 2**24


def tree_init(key: jax.Array, *, vocab: int, max_len: int, scale: float = 1.0) -> dict[str, jax.Array]:
    """Random parameters of a prefix-tree policy: ``{"logits": [N, V]}``, i.i.d. normal.

    Row ``c`` holds the next-token logits after the prefix whose index is ``c``
    (:func:`tree_contexts`); row 0 is the empty prefix.

    Raises:
      ValueError: vocab or max_len < 1, a negative scale, or more than 2^24 rows.
    """
    n = tree_num_contexts(vocab, max_len)
    if n > _TREE_MAX_CONTEXTS:
        raise ValueError(f"a prefix tree with vocab = {vocab}, max_len = {max_len} has {n} > 2^24 rows")
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    return {"logits": scale * jax.random.normal(key, (n, int(vocab)), jnp.float32)}


def _tree_table(params: Any) -> jax.Array:
    if not isinstance(params, Mapping) or "logits" not in params:
        raise ValueError(f"params must be a dict {{'logits': [N, V]}}, got {type(params).__name__}")
    table = params["logits"]
    if len(np.shape(table)) != 2:
        raise ValueError(f"params['logits'] of a prefix tree must have shape [N, V], got {np.shape(table)}")
    return table


def _tree_max_len(n: int, vocab: int) -> int:
    t = 1
    while tree_num_contexts(vocab, t) < n:
        t += 1
    if tree_num_contexts(vocab, t) != n:
        raise ValueError(f"params['logits'] has {n} rows, not 1 + V + ... + V^(T-1) for V = {vocab} and any T")
    return t


def tree_contexts(tokens: ArrayLike, vocab: int) -> jax.Array:
    """``[..., T]`` row index of each token's context (its prefix ``y_<t``) in a prefix-tree table.

    ``c_t = (1 + V + ... + V^{t-1}) + sum_{k<t} y_k V^{t-1-k}``: prefixes of length t
    occupy rows ``[offset_t, offset_t + V^t)`` in base-V order.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    t = tokens.shape[-1]
    v = int(vocab)
    offsets = jnp.asarray([tree_num_contexts(v, k) if k else 0 for k in range(t)], jnp.int32)

    def step(h, y):
        return h * v + y, h

    lead = tokens.shape[:-1]
    _, h = jax.lax.scan(step, jnp.zeros(lead, jnp.int32), jnp.moveaxis(tokens, -1, 0))
    return jnp.moveaxis(h, 0, -1) + offsets


@jax.jit
def _tree_core(table: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    ctx = tree_contexts(tokens, table.shape[-1])
    return _token_logp_and_entropy(_log_softmax32(table[ctx]), tokens)


def tree_logprob_and_entropy(
    params: Any, tokens: ArrayLike, prompt: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probabilities and next-token entropies of a prefix-tree policy.

    ``logp[..., t] = log softmax(logits[tree_contexts(y)[t]])[y_t]``: the context of
    token t is the whole prefix ``y_<t``.

    Args:
      params: ``{"logits": [N, V]}`` with ``N = 1 + V + ... + V^{T_max-1}``.
      tokens: ``[..., T]`` int completions, ``T <= T_max``.
      prompt: ignored (accepted for the ``logprob_fn`` protocol).

    Returns:
      ``(logp, entropy)``, both ``[..., T]`` float32.

    Raises:
      ValueError: bad params shape, T > T_max, (when concrete) token ids outside ``[0, V)``.
    """
    del prompt
    table = _tree_table(params)
    n, vocab = np.shape(table)
    t_max = _tree_max_len(n, vocab)
    shape = _check_int("tokens", tokens, min_rank=1, dims="[..., T]")
    if shape[-1] > t_max:
        raise ValueError(f"tokens has T = {shape[-1]} tokens but the prefix tree covers max_len = {t_max}")
    _check_range("tokens", tokens, vocab)
    return _tree_core(table, jnp.asarray(tokens))


def tree_logprob(params: Any, tokens: ArrayLike, prompt: ArrayLike | None = None) -> jax.Array:
    """``[..., T]`` log-probabilities of a prefix-tree policy (see :func:`tree_logprob_and_entropy`)."""
    return tree_logprob_and_entropy(params, tokens, prompt)[0]


@functools.partial(jax.jit, static_argnames=("shape", "max_len", "eos_id", "pad_id"))
def _tree_sample_core(table, key, *, shape, max_len, eos_id, pad_id):
    vocab = table.shape[-1]

    def logits(h, t):
        offset = jnp.asarray([tree_num_contexts(vocab, k) if k else 0 for k in range(max_len)], jnp.int32)[t]
        return table[offset + h]

    def update(h, t, y):
        return h * vocab + y

    return _sample_scan((logits, update), jnp.zeros(shape, jnp.int32), key, shape, max_len, eos_id, pad_id)


def tree_sample(
    params: Any, key: jax.Array, shape: tuple[int, ...], *, max_len: int, eos_id: int | None = None, pad_id: int = 0
) -> TabularSamples:
    """Draws completions ``[*shape, max_len]`` of a prefix-tree policy (conventions of :func:`tabular_sample`)."""
    table = _tree_table(params)
    n, vocab = np.shape(table)
    _check_sample_args(max_len, _tree_max_len(n, vocab), eos_id, pad_id, vocab)
    return _tree_sample_core(
        table, key, shape=tuple(int(s) for s in shape), max_len=int(max_len), eos_id=eos_id, pad_id=int(pad_id)
    )


# ----------------------------------------------------------------------------- transformer


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Static configuration of :class:`Transformer` (frozen, hashable, keyword-only).

    Attributes:
      vocab: V, vocabulary size.
      d_model: residual width; divisible by ``n_heads``.
      n_heads: attention heads.
      n_layers: transformer blocks.
      d_ff: MLP hidden width.
      max_len: longest sequence (prompt + completion) the position table covers.
      dtype: compute dtype (e.g. ``"float32"``, ``"bfloat16"``); attention softmax,
        LayerNorm statistics and the returned log-probabilities are float32.
      param_dtype: parameter dtype.

    Named presets: :meth:`tiny` (tests), :meth:`small` (experiments).
    """

    vocab: int
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 2
    d_ff: int = 64
    max_len: int = 32
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab", "d_model", "n_heads", "n_layers", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig.d_model must be divisible by n_heads, got d_model = {self.d_model}, "
                f"n_heads = {self.n_heads}"
            )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            try:
                dt = jnp.dtype(value)
            except TypeError as e:
                raise ValueError(f"TransformerConfig.{name} must be a float dtype, got {value!r}") from e
            if not jnp.issubdtype(dt, jnp.floating):
                raise ValueError(f"TransformerConfig.{name} must be a float dtype, got {value!r}")
            object.__setattr__(self, name, dt.name)  # canonical, hashable string

    @classmethod
    def tiny(cls, *, vocab: int = 16, max_len: int = 16, **overrides: Any) -> TransformerConfig:
        """d_model 16, 2 heads, 2 layers, d_ff 32: fast on CPU, for tests."""
        kw = dict(vocab=vocab, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=max_len)
        return cls(**{**kw, **overrides})

    @classmethod
    def small(cls, *, vocab: int = 64, max_len: int = 64, **overrides: Any) -> TransformerConfig:
        """d_model 128, 4 heads, 4 layers, d_ff 512: for experiments."""
        kw = dict(vocab=vocab, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=max_len)
        return cls(**{**kw, **overrides})


# The one initialisation of the transformer (used by its constructor and by make_transformer): kernels
# ~ N(0, 1/fan_in), embeddings ~ N(0, 0.02^2), LayerNorm scale 1, biases 0, every random leaf a slice of one
# normal draw (compiling one threefry call is an order of magnitude faster on CPU than one per parameter).
# The submodules are built with zero placeholders that _initial_params then overwrites.
_PLACEHOLDER = nnx.initializers.zeros_init()


def _init_rule(path: tuple, shape: tuple[int, ...]) -> tuple[str, float | None]:
    """(kind, std) of a parameter from the last dict key of its path: its distribution."""
    name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    if name == "scale":
        return "one", None
    if name == "bias":
        return "zero", None
    if name in ("embedding", "pos_embed"):
        return "normal", 0.02
    if name == "kernel":
        return "normal", 1.0 / np.sqrt(shape[0])  # fan_in of an [in, out] kernel
    raise NotImplementedError(f"no init rule for parameter {name!r}")  # pragma: no cover - a new kind needs one


def _initial_params(state: Any, key: jax.Array) -> Any:
    """The initial values of ``state``'s leaves (arrays or shapes) from ``key``: one normal draw, sliced per leaf."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    rules = [_init_rule(path, leaf.shape) for path, leaf in flat]
    total = sum(int(np.prod(leaf.shape)) for (_, leaf), (kind, _) in zip(flat, rules, strict=True) if kind == "normal")
    z = jax.random.normal(key, (total,), jnp.float32)
    out, offset = [], 0
    for (_, leaf), (kind, std) in zip(flat, rules, strict=True):
        if kind == "normal":
            size = int(np.prod(leaf.shape))
            out.append((std * z[offset : offset + size]).reshape(leaf.shape).astype(leaf.dtype))
            offset += size
        else:
            out.append(jnp.full(leaf.shape, 1.0 if kind == "one" else 0.0, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


class _Block(nnx.Module):
    """Pre-LN block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        d, dt, pdt = config.d_model, jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        self.n_heads = config.n_heads
        self.ln1 = nnx.LayerNorm(d, dtype=jnp.float32, param_dtype=pdt, rngs=rngs)
        lin = functools.partial(nnx.Linear, dtype=dt, param_dtype=pdt, kernel_init=_PLACEHOLDER, rngs=rngs)
        # No bias on q, k, v: softmax is shift-invariant, so a key bias has an exactly zero gradient
        # that float rounding turns into noise which Adam (eps -> 0) amplifies into +-lr steps.
        self.qkv = lin(d, 3 * d, use_bias=False)
        self.proj = lin(d, d)
        self.ln2 = nnx.LayerNorm(d, dtype=jnp.float32, param_dtype=pdt, rngs=rngs)
        self.fc1 = lin(d, config.d_ff)
        self.fc2 = lin(config.d_ff, d)

    def __call__(self, x_NLD: jax.Array) -> jax.Array:
        n, length, d = x_NLD.shape
        h = self.n_heads
        qkv = self.qkv(self.ln1(x_NLD).astype(x_NLD.dtype)).reshape(n, length, 3, h, d // h)
        q_NLHK, k_NLHK, v_NLHK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # Causal softmax(q k^T / sqrt(K)) v with float32 logits and softmax; masked logits are a large negative
        # number whose exp() is exactly 0, so later positions contribute exactly nothing (value and gradient).
        out_NLHK = jax.nn.dot_product_attention(q_NLHK, k_NLHK, v_NLHK, is_causal=True, implementation="xla")
        x_NLD = x_NLD + self.proj(out_NLHK.reshape(n, length, d))
        y = self.fc2(jax.nn.gelu(self.fc1(self.ln2(x_NLD).astype(x_NLD.dtype))))
        return x_NLD + y


class Transformer(nnx.Module):
    """A small decoder-only transformer: ``ids [N, L] -> logits [N, L, V]``.

    Token + learned position embeddings, ``n_layers`` pre-LayerNorm blocks (causal
    multi-head self-attention, GELU MLP), a final LayerNorm and an untied output
    projection. The logits at position j depend on ``ids[:, :j+1]`` only.

    ``__call__(ids) == decode(embed(ids))``; the split exposes the input embeddings so
    that tests can differentiate with respect to them (nanodo's causality test).

    Initialisation: kernels N(0, 1/fan_in), embeddings N(0, 0.02²), LayerNorm scale 1,
    biases 0, all drawn from the one key ``rngs.params()`` (its first draw); :func:`make_transformer`
    runs the same initialisation (jitted, cached per config), so
    ``Transformer(config, rngs=nnx.Rngs(params=k))`` has the parameters of
    ``make_transformer(nnx.Rngs(params=k).params(), config)``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        key = rngs.params()  # the first draw: the submodules below consume rngs for their placeholders
        self.config = config
        d, dt, pdt = config.d_model, jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        self.tok_embed = nnx.Embed(config.vocab, d, dtype=dt, param_dtype=pdt, embedding_init=_PLACEHOLDER, rngs=rngs)
        self.pos_embed = nnx.Param(jnp.zeros((config.max_len, d), pdt))
        self.blocks = nnx.List([_Block(config, rngs=rngs) for _ in range(config.n_layers)])
        self.ln_f = nnx.LayerNorm(d, dtype=jnp.float32, param_dtype=pdt, rngs=rngs)
        self.head = nnx.Linear(
            d, config.vocab, use_bias=False, dtype=dt, param_dtype=pdt, kernel_init=_PLACEHOLDER, rngs=rngs
        )
        nnx.update(self, _initial_params(nnx.state(self), key))

    def embed(self, ids_NL: jax.Array) -> jax.Array:
        """``ids [N, L]`` int -> input embeddings ``[N, L, d_model]`` (token + position)."""
        if ids_NL.ndim != 2:
            raise ValueError(f"ids must have shape [N, L] (rank 2), got shape {_shape_str(ids_NL.shape)}")
        length = ids_NL.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"ids has L = {length} positions but TransformerConfig.max_len = {self.config.max_len}")
        dt = jnp.dtype(self.config.dtype)
        return self.tok_embed(ids_NL) + self.pos_embed[...][:length].astype(dt)

    def decode(self, x_NLD: jax.Array) -> jax.Array:
        """Input embeddings ``[N, L, d_model]`` -> logits ``[N, L, V]`` (compute dtype)."""
        for block in self.blocks:
            x_NLD = block(x_NLD)
        return self.head(self.ln_f(x_NLD).astype(x_NLD.dtype))

    def __call__(self, ids_NL: jax.Array) -> jax.Array:
        return self.decode(self.embed(ids_NL))


def make_transformer(key: jax.Array, config: TransformerConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Initialises a :class:`Transformer` and splits it into ``(graphdef, params)``.

    ``params`` is an ``nnx.State`` pytree (differentiable, optax-compatible);
    ``nnx.merge(graphdef, params)`` rebuilds the module. The initialisation is the
    module's own (one normal draw from ``key``, see :class:`Transformer`), jitted and
    cached per config.

    >>> import jax, jax.numpy as jnp
    >>> graphdef, params = make_transformer(jax.random.key(0), TransformerConfig.tiny(vocab=8))
    >>> ids = jnp.zeros((1, 5), jnp.int32)
    >>> jax.eval_shape(lambda p: nnx.merge(graphdef, p)(ids), params).shape  # ids [N, L] -> logits [N, L, V]
    (1, 5, 8)
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    graphdef, init = _transformer_init(config)
    return graphdef, init(key)


@functools.cache
def _transformer_init(config: TransformerConfig) -> tuple[nnx.GraphDef, Callable[[jax.Array], nnx.State]]:
    """(graphdef, jitted key -> params) per config: :func:`_initial_params` on the module's abstract state."""
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(params=0))))
    return graphdef, jax.jit(functools.partial(_initial_params, shapes))


@functools.cache
def nnx_logits_fn(graphdef: nnx.GraphDef) -> Callable[[Any, jax.Array], jax.Array]:
    """``logits_fn(params, ids [N, L]) -> logits [N, L, V]`` of a split NNX model.

    Cached per graphdef (graphdefs are hashable), so the same function object is
    returned for the same architecture and jitted callers do not recompile.
    """

    def logits_fn(params: Any, ids: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(ids)

    return logits_fn


def _seq_logprob(
    graphdef: nnx.GraphDef, params: Any, tokens: Any, prompt: Any, share: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Checks the inputs, then returns (logp [..., G, T], entropy [..., G, T]) from the jitted core."""
    tshape = _check_int("tokens", tokens, min_rank=2, dims="[..., G, T]")
    pshape = _check_int("prompt", prompt, min_rank=1, dims="[..., P]")
    lead, t, p = tshape[:-2], tshape[-1], pshape[-1]
    if pshape[:-1] != lead:
        raise ValueError(
            f"prompt must have shape [..., P] with the leading dims of tokens [..., G, T] = {_shape_str(tshape)}, "
            f"i.e. {_shape_str(lead + (p,))}; got {_shape_str(pshape)}"
        )
    if p < 1:
        raise ValueError(
            "prompt must have at least one token (P >= 1) to predict the first completion token, got P = 0"
        )
    # Reads the static config (no computation). Any NNX module mapping ids [N, L] to
    # logits [N, L, V] works; the length / id-range checks need a TransformerConfig-like
    # ``config`` attribute with ``max_len`` and ``vocab``.
    config = getattr(nnx.merge(graphdef, params), "config", None)
    max_len, vocab = getattr(config, "max_len", None), getattr(config, "vocab", None)
    if max_len is not None and p + t > max_len:
        raise ValueError(
            f"prompt + completion length P + T = {p} + {t} = {p + t} exceeds TransformerConfig.max_len = {max_len}"
        )
    if vocab is not None:
        _check_range("tokens", tokens, vocab)
        _check_range("prompt", prompt, vocab)
    return _seq_logprob_core(graphdef, params, tokens, prompt, share)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _seq_logprob_core(
    graphdef: nnx.GraphDef, params: Any, tokens: Any, prompt: Any, share: bool = False
) -> tuple[jax.Array, jax.Array]:
    tshape, p = tokens.shape, prompt.shape[-1]
    lead, (g, t) = tshape[:-2], tshape[-2:]
    model = nnx.merge(graphdef, params)
    if share and isinstance(model, Transformer):
        logits = nnx_grouped_logits(model, tokens, prompt)
        return _token_logp_and_entropy(_log_softmax32(logits), tokens)
    dtype = jnp.promote_types(tokens.dtype, prompt.dtype)
    prompt_GP = jnp.broadcast_to(prompt[..., None, :], lead + (g, p)).astype(dtype)
    ids = jnp.concatenate([prompt_GP, tokens.astype(dtype)], axis=-1).reshape(-1, p + t)  # [N, P+T]
    logits_NTV = model(ids)[:, p - 1 : p + t - 1]
    return _token_logp_and_entropy(_log_softmax32(logits_NTV).reshape(tshape + logits_NTV.shape[-1:]), tokens)


def nnx_grouped_logits(model: Transformer, tokens: jax.Array, prompt: jax.Array) -> jax.Array:
    """Logits ``[..., G, T, V]`` that predict ``tokens [..., G, T]`` after ``prompt [..., P]``, the prompt run once.

    The same values as ``model(prompt + completion)[..., P-1 : P+T-1, :]`` of each of the G sequences up to
    float rounding, computed with the prompt once per group: every block runs the prompt rows (causal
    self-attention) and the completion rows ``tokens[..., :T-1]`` at positions ``P ..`` with attention over
    ``concat(prompt keys/values of their group, own keys/values)``; projections and MLPs run on the
    packed rows. ``B (P + G (T-1))`` rows instead of ``B G (P + T)``; the prompt's keys and values are read
    through a broadcast over G, so their gradient sums over the group.
    """
    tshape, p = tokens.shape, prompt.shape[-1]
    lead, (g, t) = tshape[:-2], tshape[-2:]
    b = int(np.prod(lead, dtype=np.int64))
    tc = t - 1
    cfg = model.config
    d, h = cfg.d_model, cfg.n_heads
    hd = d // h
    dt = jnp.dtype(cfg.dtype)
    prompt_b = prompt.reshape(b, p).astype(jnp.int32)
    comp = tokens.reshape(b, g, t)[..., :tc].astype(jnp.int32)
    pos = model.pos_embed[...].astype(dt)
    rp = b * p
    x = jnp.concatenate(
        [
            (model.tok_embed(prompt_b) + pos[:p]).reshape(rp, d),
            (model.tok_embed(comp) + pos[p : p + tc]).reshape(b * g * tc, d),
        ]
    )
    neg = jnp.finfo(jnp.float32).min
    causal_p = jnp.tril(jnp.ones((p, p), bool))
    causal_c = jnp.tril(jnp.ones((tc, tc), bool))
    for block in model.blocks:
        qkv = block.qkv(block.ln1(x).astype(x.dtype)).reshape(-1, 3, h, hd)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        qp, kp, vp = (y[:rp].reshape(b, p, h, hd) for y in (q, k, v))
        qc, kc, vc = (y[rp:].reshape(b, g, tc, h, hd) for y in (q, k, v))
        scale = 1.0 / np.sqrt(hd)
        s = jnp.einsum("bqhk,bshk->bhqs", qp, kp, preferred_element_type=jnp.float32) * scale
        probs = jax.nn.softmax(jnp.where(causal_p, s, neg), axis=-1).astype(vp.dtype)
        out_p = jnp.einsum("bhqs,bshk->bqhk", probs, vp).reshape(rp, d)
        s_p = jnp.einsum("bgqhk,bshk->bghqs", qc, kp, preferred_element_type=jnp.float32) * scale
        s_c = jnp.einsum("bgqhk,bgshk->bghqs", qc, kc, preferred_element_type=jnp.float32) * scale
        probs = jax.nn.softmax(jnp.concatenate([s_p, jnp.where(causal_c, s_c, neg)], axis=-1), axis=-1)
        probs = probs.astype(vc.dtype)
        out_c = jnp.einsum("bghqs,bshk->bgqhk", probs[..., :p], vp)
        out_c = out_c + jnp.einsum("bghqs,bgshk->bgqhk", probs[..., p:], vc)
        x = x + block.proj(jnp.concatenate([out_p, out_c.reshape(b * g * tc, d)]))
        x = x + block.fc2(jax.nn.gelu(block.fc1(block.ln2(x).astype(x.dtype))))
    hp = x[:rp].reshape(b, p, d)[:, -1:]  # the last prompt position predicts token 0
    hc = x[rp:].reshape(b, g, tc, d)
    hidden = jnp.concatenate([jnp.broadcast_to(hp[:, None], (b, g, 1, d)), hc], axis=2)
    logits = model.head(model.ln_f(hidden).astype(hidden.dtype))
    return logits.reshape(tshape + logits.shape[-1:])


@functools.cache
def nnx_logprob_and_entropy_fn(graphdef: nnx.GraphDef, *, share_prompt: bool = False) -> LogprobAndEntropyFn:
    """``(params, tokens [..., G, T], prompt [..., P]) -> (logp, entropy)`` of a split NNX LM.

    Builds the sequences ``prompt + completion`` ``[..., G, P+T]``, runs the model on
    them flattened to ``[N, P+T]``, takes ``log_softmax`` (float32) of the logits at
    positions ``P-1 .. P+T-2`` and gathers the completion token ids. The model is any
    causal NNX module ``ids [N, L] -> logits [N, L, V]``; a ``config`` attribute with
    ``max_len`` and ``vocab`` (as :class:`Transformer` has) enables the length and
    id-range checks. Cached per graphdef; the computation is jitted (graphdef static).

    ``share_prompt=True`` (for :class:`Transformer`): the prompt runs once per group and the
    completions attend to its broadcast keys/values (:func:`nnx_grouped_logits`), the same values and
    gradients up to float rounding with ``B (P + G T)`` rows instead of ``B G (P + T)``. The default
    stays False here (the experiments' programs and compile times unchanged); :func:`jgrpo.train.train`
    uses the shared path.

    Returns:
      ``logp`` and ``entropy`` (of the next-token distribution), both ``[..., G, T]``
      float32.

    Raises:
      ValueError: tokens of rank < 2, prompt leading dims differing from tokens',
        P = 0, P + T > max_len, or (when concrete) ids outside ``[0, V)``.
      TypeError: non-integer tokens or prompt.
    """

    def logprob_and_entropy_fn(params: Any, tokens: Any, prompt: Any) -> tuple[jax.Array, jax.Array]:
        return _seq_logprob(graphdef, params, tokens, prompt, share_prompt)

    return logprob_and_entropy_fn


@functools.cache
def nnx_logprob_fn(graphdef: nnx.GraphDef, *, share_prompt: bool = False) -> LogprobFn:
    """``logprob_fn(params, tokens [..., G, T], prompt [..., P]) -> logp [..., G, T]`` float32 of a split NNX LM.

    See :func:`nnx_logprob_and_entropy_fn` for the construction and errors. Use::

        graphdef, params = make_transformer(key, config)
        logprob_fn = nnx_logprob_fn(graphdef)
        grads = jax.grad(lambda p: objective(logprob_fn(p, tokens, prompt)))(params)
    """

    def logprob_fn(params: Any, tokens: Any, prompt: Any) -> jax.Array:
        return _seq_logprob(graphdef, params, tokens, prompt, share_prompt)[0]

    return logprob_fn
