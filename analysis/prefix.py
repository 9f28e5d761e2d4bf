"""Prop. 1: shared-prefix gradient attribution, exact through the real model.

For completions of a group that share a prefix, the gradient of J on the
prefix tokens is (Prop. 1 of arXiv 2601.05002)

    sum_t grad log pi(y_t | x, y_<t) * W_agg(t),    W_agg(t) = sum_{i in node(t)} omega_{i,t} A_i,

with omega = alpha * s. jgrpo computes the exact per-token coefficient
c_{i,t} = dJ/dlogp_{i,t} (which is omega_{i,t} A_i for an unclipped token ratio,
and whatever the method's semantics give otherwise: clipping, stop-gradients,
KL), sums it over each node of the group's prefix tree, and pulls any subset of
token coefficients back through the model with one forward pass and a vmapped
VJP.

The policy is any ``logprob_fn(params, tokens) -> logp [..., G, T]`` (bind the
prompt with ``functools.partial``): see :mod:`jgrpo.policies`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jgrpo
from jgrpo.methods import MethodSpec
from jgrpo.weights import shared_prefix

__all__ = [
    "Decomposition",
    "PrefixTree",
    "coefficients",
    "decompose",
    "prefix_tree",
    "w_agg",
]


class PrefixTree(NamedTuple):
    """The prefix tree of every group, as dense arrays.

    Attributes:
      same_prefix: ``[..., G, G, T]`` bool, completions i and j agree on tokens 0..t.
      node_size: ``[..., G, T]`` int, how many completions share token (i, t)'s prefix
        (1 for a divergent token, 0 on padding).
      shared: ``[..., G, T]`` bool, the token lies in a prefix shared by >= 2 completions.
      representative: ``[..., G, T]`` bool, (i, t) is the first copy of its node
        (the smallest i in it); summing over representatives visits each node once.
    """

    same_prefix: jax.Array
    node_size: jax.Array
    shared: jax.Array
    representative: jax.Array


def prefix_tree(tokens, mask) -> PrefixTree:
    """Finds the prefixes shared inside each group from the token ids.

    Args:
      tokens: ``[..., G, T]`` int token ids of the completions (right-padded).
      mask: ``[..., G, T]`` 1 on completion tokens.

    Returns:
      A :class:`PrefixTree`. O(G^2 T) work, no Python loop over G or T.
    """
    same = shared_prefix(jnp.asarray(tokens), jnp.asarray(mask))
    node_size = jnp.sum(same, axis=-2).astype(jnp.int32)
    g = same.shape[-2]
    idx = jnp.arange(g)
    # representative: no j < i shares the prefix of (i, t).
    earlier = same & (idx[None, :] < idx[:, None])[..., None]
    representative = ~jnp.any(earlier, axis=-2) & (node_size > 0)
    return PrefixTree(same_prefix=same, node_size=node_size, shared=node_size >= 2, representative=representative)


def coefficients(spec: MethodSpec, logp, batch: jgrpo.GroupBatch):
    """c_{i,t} = dJ/dlogp_{i,t}, the exact per-token coefficient of grad log pi in grad J.

    J is the objective of Eq. 1 averaged over the prompts (``-jgrpo.loss``), so
    grad_theta J = sum_{i,t} c_{i,t} grad_theta log pi(y_{i,t} | x, y_{i,<t}).

    Returns:
      ``[..., G, T]`` in the compute dtype (float32 or float64), zero on padding.
    """
    logp = jnp.asarray(logp)
    return jax.grad(lambda lp: -jgrpo.loss(spec, lp, batch)[0])(logp)


def w_agg(coef, tree: PrefixTree):
    """W_agg(t) of Prop. 1 on every token of a shared prefix, zero elsewhere.

    W_agg[i, t] = sum_{j in node(i, t)} c_{j, t}: the total weight that the
    node's single log-probability receives. Every member of a node carries the
    same value.

    Args:
      coef: ``[..., G, T]`` coefficients (:func:`coefficients`).
      tree: the group's :class:`PrefixTree`.
    """
    total = jnp.einsum("...ijt,...jt->...it", tree.same_prefix.astype(coef.dtype), coef)
    return jnp.where(tree.shared, total, jnp.zeros((), coef.dtype))


class Decomposition(NamedTuple):
    """Exact gradient contributions of token subsets (pytrees like ``params``).

    Attributes:
      total: grad_theta J (J = -loss, averaged over prompts).
      shared: the part from tokens in prefixes shared by >= 2 completions.
      divergent: the part from all other tokens (total = shared + divergent).
      subsets: contributions of the extra ``subsets`` masks, stacked on a leading axis (or None).
      coefficients: ``[..., G, T]`` c_{i,t} = dJ/dlogp_{i,t}.
      w_agg: ``[..., G, T]`` W_agg of Prop. 1 (zero outside shared prefixes).
      tree: the :class:`PrefixTree`.
      objective: J.
    """

    total: Any
    shared: Any
    divergent: Any
    subsets: Any
    coefficients: jax.Array
    w_agg: jax.Array
    tree: PrefixTree
    objective: jax.Array


def decompose(
    spec: MethodSpec,
    logprob_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    batch: jgrpo.GroupBatch,
    subsets: jax.Array | None = None,
) -> Decomposition:
    """Splits grad_theta J into exact contributions of token subsets (Prop. 1).

    One forward pass of ``logprob_fn`` and one VJP per subset, vmapped: the
    contribution of a subset S is sum_{(i,t) in S} c_{i,t} grad log pi_{i,t},
    which is exactly the gradient of J restricted to S because c is the exact
    dJ/dlogp.

    Args:
      spec: the method (static under jit).
      logprob_fn: ``(params, tokens [..., G, T]) -> logp [..., G, T]``.
      params: the policy parameters (any pytree).
      batch: a :class:`jgrpo.GroupBatch` with ``tokens``.
      subsets: optional ``[K, ..., G, T]`` masks of further token subsets (e.g.
        per prefix depth); their contributions come back in ``subsets``.

    Returns:
      A :class:`Decomposition`.

    Raises:
      ValueError: ``batch.tokens`` is missing or ``subsets`` has the wrong shape.
    """
    if batch.tokens is None:
        raise ValueError("decompose needs batch.tokens (token ids) to find the shared prefixes")
    tokens = jnp.asarray(batch.tokens)
    logp, vjp = jax.vjp(lambda p: logprob_fn(p, tokens), params)
    if logp.shape != tokens.shape:
        raise ValueError(f"logprob_fn must return logp of shape {tokens.shape} like batch.tokens, got {logp.shape}")
    coef = coefficients(spec, logp, batch)
    tree = prefix_tree(tokens, batch.mask)
    shared = tree.shared.astype(coef.dtype)
    masks = [jnp.ones_like(coef), shared, 1.0 - shared]
    if subsets is not None:
        subsets = jnp.asarray(subsets)
        if subsets.shape[1:] != coef.shape:
            raise ValueError(f"subsets must have shape [K, {', '.join(map(str, coef.shape))}], got {subsets.shape}")
        masks.extend(list(subsets.astype(coef.dtype)))
    cotangents = jnp.stack(masks) * coef[None]
    (grads,) = jax.vmap(vjp)(cotangents.astype(logp.dtype))
    pick = lambda k: jax.tree.map(lambda g: g[k], grads)  # noqa: E731
    extra = None if subsets is None else jax.tree.map(lambda g: g[3:], grads)
    objective = -jgrpo.loss(spec, logp, batch)[0]
    return Decomposition(
        total=pick(0),
        shared=pick(1),
        divergent=pick(2),
        subsets=extra,
        coefficients=coef,
        w_agg=w_agg(coef, tree),
        tree=tree,
        objective=objective,
    )


def depth_subsets(tree: PrefixTree, max_depth: int):
    """``[max_depth, ..., G, T]`` masks: shared tokens at prefix depth d = 0..max_depth-1 (position t = d)."""
    t = tree.shared.shape[-1]
    depth = jnp.arange(max_depth).reshape((max_depth,) + (1,) * tree.shared.ndim)
    return tree.shared[None] & (jnp.arange(t) == depth)


def tree_norm(tree: Any):
    """Global L2 norm of a pytree of arrays."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
