"""Exact expectations under the tabular policy: reward, length, any function of a completion's end.

The tabular policy of ``jgrpo.policies`` draws token t from ``softmax(logits[t, y_{t-1}])``
(start context V at t = 0); ``jgrpo.sample`` stops a completion at the EOS token
(which is part of the completion) or at ``length`` tokens. Everything a verifiable
reward reads of a completion is, for the tasks here, the end state of a finite
automaton run over its tokens, together with the completion's length. Carrying
the automaton state along the forward recursion over (position, previous token)
gives the exact joint distribution

    P[s, L] = P(the completion ends after L tokens with the automaton in state s),

and with it every expectation E[f(s, L)]: the expected reward, the expected length,
the expected length of incorrect completions, ... as differentiable functions of
the logits table (``jax.grad`` gives their exact policy gradients). This is the
noise-free "progress" against which the experiments test surrogate objectives.

Cost: O(T · (V+1) · S · V) per evaluation (dense einsum, no enumeration of V^T
sequences).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jgrpo._validate import check_static_int

__all__ = [
    "Automaton",
    "automaton",
    "contains",
    "expectation",
    "expected_length",
    "terminal_distribution",
]


class Automaton(NamedTuple):
    """A deterministic finite automaton over the vocabulary; state 0 is the start state.

    Attributes:
      transition: ``[S, V]`` int32, the state after reading token v in state s.
    """

    transition: jax.Array

    @property
    def num_states(self) -> int:
        return int(np.shape(self.transition)[0])

    @property
    def vocab(self) -> int:
        return int(np.shape(self.transition)[1])


def automaton(transition: ArrayLike) -> Automaton:
    """Validates a transition table ``[S, V]`` (ints in [0, S)) and wraps it as an :class:`Automaton`.

    Raises:
      ValueError: wrong rank, or a target state outside [0, S).
    """
    t = np.asarray(transition)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"transition must have shape [S, V] with S, V >= 1, got {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"transition must hold integer states, got dtype {t.dtype}")
    if t.min() < 0 or t.max() >= t.shape[0]:
        raise ValueError(f"transition states must lie in [0, S = {t.shape[0]}), got range [{t.min()}, {t.max()}]")
    return Automaton(transition=jnp.asarray(t, jnp.int32))


def contains(vocab: int, token: int) -> Automaton:
    """Two states: 0 = ``token`` not seen yet, 1 = seen (absorbing)."""
    if not 0 <= token < vocab:
        raise ValueError(f"token must lie in [0, vocab = {vocab}), got {token}")
    t = np.zeros((2, vocab), np.int32)
    t[0, token] = 1
    t[1, :] = 1
    return automaton(t)


def _check(params, auto: Automaton, eos: int, length: int):
    table = params["logits"] if isinstance(params, dict) else params
    shape = np.shape(table)
    if len(shape) != 3 or shape[1] != shape[2] + 1:
        raise ValueError(f"params['logits'] must have shape [T, V+1, V], got {shape}")
    t_max, _, vocab = shape
    if auto.vocab != vocab:
        raise ValueError(f"the automaton reads V = {auto.vocab} tokens but the policy has V = {vocab}")
    check_static_int("length", length, low=1, high=t_max)
    if eos is not None and not 0 <= eos < vocab:
        raise ValueError(f"eos must be None or lie in [0, V = {vocab}), got {eos!r}")
    return table


def terminal_distribution(params: Any, auto: Automaton, *, eos: int | None, length: int) -> jax.Array:
    """Exact P[s, L]: the completion has L tokens (EOS included) and ends in automaton state s.

    Matches ``jgrpo.sample(tabular_logits_fn(P), params, ..., max_len=length, eos_id=eos)``:
    a completion ends at its first EOS (L = its position + 1) or after ``length`` tokens.
    The automaton reads every token of the completion, EOS included.

    Args:
      params: ``{"logits": [T, V+1, V]}`` (or the table itself), ``T >= length``.
      auto: the :class:`Automaton`.
      eos: the EOS token id, or None (every completion has ``length`` tokens).
      length: the longest completion (static int).

    Returns:
      ``[S, length + 1]`` float32 (float64 for a float64 table); column 0 is 0; the
      entries sum to 1. Differentiable in ``params``.
    """
    table = _check(params, auto, eos, length)
    dtype = jnp.result_type(table.dtype, jnp.float32)
    vocab = table.shape[-1]
    S = auto.num_states
    probs = jax.nn.softmax(jnp.asarray(table[:length], dtype), axis=-1)  # [T, V+1, V]
    move = jax.nn.one_hot(auto.transition, S, dtype=dtype)  # [S, V, S']
    not_eos = jnp.ones((vocab,), dtype) if eos is None else jnp.ones((vocab,), dtype).at[eos].set(0.0)

    def step(alive, p_t):  # alive [V+1, S]: running prefixes by (previous token, state)
        to = jnp.einsum("cs,cv,svz->vz", alive, p_t, move)  # [V, S'] mass after emitting v
        ended = jnp.zeros((S,), dtype) if eos is None else to[eos]
        nxt = to * not_eos[:, None]
        return jnp.concatenate([nxt, jnp.zeros((1, S), dtype)], axis=0), ended

    alive0 = jnp.zeros((vocab + 1, S), dtype).at[vocab, 0].set(1.0)
    alive, ended = jax.lax.scan(step, alive0, probs)  # ended [T, S]
    out = jnp.concatenate([jnp.zeros((1, S), dtype), ended], axis=0).T  # [S, T+1]
    return out.at[:, length].add(jnp.sum(alive, axis=0))


def expectation(params: Any, auto: Automaton, value: ArrayLike, *, eos: int | None, length: int) -> jax.Array:
    """E[value[s, L]] under the tabular policy (see :func:`terminal_distribution`).

    Args:
      value: ``[S, length + 1]`` (broadcastable), the value of a completion that ends in
        state s after L tokens (e.g. its reward, its length, 1{incorrect}·L).

    Returns:
      The exact expectation, a scalar differentiable in ``params``.
    """
    p = terminal_distribution(params, auto, eos=eos, length=length)
    return jnp.sum(p * jnp.asarray(value, p.dtype))


def expected_length(params: Any, *, eos: int | None, length: int) -> jax.Array:
    """E[|o|], the expected number of completion tokens (EOS included).

    The uniform policy over V = 2 tokens stops at EOS with probability 1/2 per token:

    >>> import jax.numpy as jnp
    >>> float(expected_length({"logits": jnp.zeros((4, 3, 2))}, eos=0, length=4))  # 1 + 1/2 + 1/4 + 1/8
    1.875
    """
    table = params["logits"] if isinstance(params, dict) else params
    auto = automaton(np.zeros((1, np.shape(table)[-1]), np.int32))
    return expectation(params, auto, jnp.arange(length + 1)[None, :], eos=eos, length=length)
