"""Prop. 1: shared-prefix gradient attribution, exact through the real model.

For completions of a group that share a prefix, the gradient of J on the
prefix tokens is (Prop. 1 of arXiv 2601.05002)

    sum_t grad log pi(y_t | x, y_<t) * W_agg(t),    W_agg(t) = sum_{i in node(t)} omega_{i,t} A_i,

with omega = alpha * s. jgrpo computes the exact per-token coefficient
c_{i,t} = dJ/dlogp_{i,t} (which is omega_{i,t} A_i for an unclipped token ratio,
and whatever the method's semantics give otherwise: clipping, stop-gradients,
KL), sums it over each node of the group's prefix tree, and pulls any subset of
token coefficients back through the model: the total with one forward pass and
one VJP, the shared prefixes and per-depth subsets with a VJP over the first
``depth`` positions only (causality), the divergent part as total - shared.

The policy is any ``logprob_fn(params, tokens [..., G, T], prompt) -> logp [..., G, T]``,
the protocol of :mod:`jgrpo.policies` (``prompt`` may be None for a policy that ignores it).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import jgrpo
from jgrpo._validate import check_shape, check_static_int, is_concrete
from jgrpo.methods import MethodSpec
from jgrpo.policies import LogprobFn, tree_num_contexts
from jgrpo.weights import shared_prefix

__all__ = [
    "Decomposition",
    "Effects",
    "PrefixTree",
    "coefficients",
    "decompose",
    "depth_subsets",
    "directional_logp",
    "effects",
    "effects_of",
    "prefix_tree",
    "tree_expectation",
    "tree_norm",
    "tree_sequences",
    "truncation_depth",
    "truncation_rows",
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


def prefix_tree(tokens: ArrayLike, mask: ArrayLike) -> PrefixTree:
    """Finds the prefixes shared inside each group from the token ids.

    Args:
      tokens: ``[..., G, T]`` int token ids of the completions (right-padded).
      mask: ``[..., G, T]`` 1 on completion tokens.

    Returns:
      A :class:`PrefixTree`. O(G^2 T) work, no Python loop over G or T.

    Raises:
      ValueError: ``mask`` not shaped like ``tokens``.

    Three completions: the first two share the prefix (1, 2), all three share (1,):

    >>> import numpy as np
    >>> tree = prefix_tree(np.array([[1, 2, 3], [1, 2, 0], [1, 0, 0]]), np.ones((3, 3)))
    >>> tree.node_size.tolist()
    [[3, 2, 1], [3, 2, 1], [3, 1, 1]]
    >>> tree.representative.tolist()  # each node once: its first member
    [[True, True, True], [False, False, True], [False, True, True]]
    """
    check_shape("mask", mask, np.shape(tokens), "[..., G, T] like tokens")
    same = shared_prefix(jnp.asarray(tokens), jnp.asarray(mask))
    node_size = jnp.sum(same, axis=-2).astype(jnp.int32)
    g = same.shape[-2]
    idx = jnp.arange(g)
    # representative: no j < i shares the prefix of (i, t).
    earlier = same & (idx[None, :] < idx[:, None])[..., None]
    representative = ~jnp.any(earlier, axis=-2) & (node_size > 0)
    return PrefixTree(same_prefix=same, node_size=node_size, shared=node_size >= 2, representative=representative)


def coefficients(spec: MethodSpec, logp: ArrayLike, batch: jgrpo.GroupBatch) -> jax.Array:
    """c_{i,t} = dJ/dlogp_{i,t}, the exact per-token coefficient of grad log pi in grad J.

    J is the objective of Eq. 1 averaged over the prompts (``-jgrpo.loss``), so
    grad_theta J = sum_{i,t} c_{i,t} grad_theta log pi(y_{i,t} | x, y_{i,<t}).
    Jit it with the spec static: ``jax.jit(coefficients, static_argnums=0)``.

    Returns:
      ``[..., G, T]`` in the compute dtype (float32 or float64), zero on padding.
    """
    logp = jnp.asarray(logp)
    return jax.grad(lambda lp: -jgrpo.loss(spec, lp, batch)[0])(logp)


def w_agg(coef: jax.Array, tree: PrefixTree) -> jax.Array:
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
      divergent: the part from all other tokens, ``total - shared`` (exact by linearity).
      subsets: contributions of the extra ``subsets`` masks, stacked on a leading axis (or None).
      coefficients: ``[..., G, T]`` c_{i,t} = dJ/dlogp_{i,t}.
      w_agg: ``[..., G, T]`` W_agg of Prop. 1 (zero outside shared prefixes).
      tree: the :class:`PrefixTree`.
      objective: J.
      truncated: scalar bool, the shared and subset contributions came from the truncated backward
        over ``tokens[..., :depth]`` (False: from the full-length one, ``depth`` >= T).
    """

    total: Any
    shared: Any
    divergent: Any
    subsets: Any
    coefficients: jax.Array
    w_agg: jax.Array
    tree: PrefixTree
    objective: jax.Array
    truncated: jax.Array


def decompose(
    spec: MethodSpec,
    logprob_fn: LogprobFn,
    params: Any,
    batch: jgrpo.GroupBatch,
    subsets: jax.Array | None = None,
    *,
    prompt: ArrayLike | None = None,
    depth: int | None = None,
    rows: int | None = None,
    chunk: int | None = None,
) -> Decomposition:
    """Splits grad_theta J into exact contributions of token subsets (Prop. 1, Eqs. 15-18).

    The contribution of a token subset S is ``g_S = sum_{(i,t) in S} c_{i,t} grad log pi_{i,t}``
    with ``c = dJ/dlogp`` (:func:`coefficients`), exactly the gradient of J restricted to S; on
    the shared prefixes it is Prop. 1's ``sum_t grad log pi(y_t | x, y_<t) W_agg(t)``. The
    computation:

    1. one forward pass over ``tokens [..., G, T]`` and one VJP with cotangent c: ``total``;
    2. **truncated backward**: the shared tokens and the ``subsets`` lie at positions < ``depth``,
       and by causality log pi_{i,t} depends on the prompt and ``tokens[..., i, :t+1]`` only, so
       their contributions need the forward pass and the VJPs over ``tokens[..., :depth]`` alone.
       Moreover the completions of one prefix-tree node have the same log pi_{i,t} and the same
       gradient (same prompt, same tokens <= t: Eq. 17), so each node's coefficients are summed onto its
       representative (Prop. 1's W_agg, for any subset) and the window runs on the ``rows``
       completions per group that carry them: one forward over ``[..., rows, depth]``, then a
       vmapped VJP of the 1 + K cotangents (shared, subsets), ``chunk`` at a time;
    3. ``divergent = total - shared`` by linearity (no VJP of its own).

    Causality (the policy's log-prob at position t depends on the tokens at positions <= t and
    the prompt only) is what step 2 needs; every policy in :mod:`jgrpo.policies` and every causal
    LM satisfies it. Three cheap checks run on every truncated call (three scalars): the window's
    log-probs equal the full pass's on the window's completion tokens (to 1024 ulp), no shared
    token or subset token lies at position ``depth`` or beyond, and no group needs more than
    ``rows`` representatives. A failure raises: a
    ValueError with concrete inputs, else at run time from a ``jax.debug.callback`` (a
    ``JaxRuntimeError`` carrying the same message). The causality check compares values at
    ``params`` only: a policy whose values are causal there but whose gradient is not (a
    parameter, zero here, multiplying a term that reads later tokens) passes it; such a policy
    needs ``depth`` >= T and ``rows`` >= G. A full-length fallback under ``lax.cond`` was
    measured instead and made every call ~1.3-2x slower on the CPU (the conditional's operands),
    so a window that does not fit is an error: pass a larger one (or none under jit: no
    truncation).

    Memory: with R_L the residuals of a forward pass over L completion positions (plus the
    prompt) of every completion (R_depth: of ``rows`` completions per group), B_L the transient
    activation cotangents of one backward pass over them and |theta|
    the parameter size, the peak is about

        R_T + R_depth + (K + 3) |theta| + chunk * (B_depth + |theta|)

    (K + 3: total, shared, divergent and the K subsets, the result itself; R_depth = 0 and
    B_T instead of B_depth without truncation). ``chunk`` bounds the last term, e.g. chunk = 1 for a
    1B-parameter model with K = 8 depth subsets: 11 * 4 GB of float32 results plus one
    backward at a time.

    Jit: ``spec`` and ``logprob_fn`` are Python objects, ``params``, ``batch`` and ``prompt``
    pytrees of arrays, ``depth`` and ``chunk`` static ints. Close over the former, pass the
    arrays, so that one compile serves every batch of the same shapes::

        tree = prefix.prefix_tree(tokens, mask)  # outside jit: concrete
        depth = prefix.truncation_depth(tree)
        rows = prefix.truncation_rows(tree, depth=depth)

        @jax.jit
        def run(params, batch, prompt):
            return prefix.decompose(spec, logprob_fn, params, batch, prompt=prompt, depth=depth, rows=rows)

    (``examples/decompose_own_model.py`` does this with a flax NNX model.)

    Args:
      spec: the method (static under jit).
      logprob_fn: ``(params, tokens [..., G, T], prompt) -> logp [..., G, T]``, the protocol of
        :mod:`jgrpo.policies` (``prompt`` is passed through; it may be None for policies that
        ignore it).
      params: the policy parameters (any pytree).
      batch: a :class:`jgrpo.GroupBatch` with ``tokens``.
      subsets: optional ``[K, ..., G, T]`` masks of further token subsets (e.g. per prefix depth,
        :func:`depth_subsets`); their contributions come back in ``subsets``.
      prompt: ``[..., P]`` prompt token ids passed to ``logprob_fn`` (or None).
      depth: static int >= 1, the length of the truncated window. None: with concrete tokens,
        :func:`truncation_depth` of the batch and ``subsets`` (rounded up to a multiple of 8);
        under jit (traced tokens) T, no truncation. >= T: no truncation.
      rows: static int >= 1, the window's completions per group (node representatives). None:
        with concrete tokens :func:`truncation_rows`, under jit G. >= G: every completion.
      chunk: static int >= 1, how many of the 1 + K cotangents (shared, subsets) one vmapped VJP
        takes (a ``lax.fori_loop`` over the chunks); None: all at once.

    Returns:
      A :class:`Decomposition`.

    Raises:
      ValueError: ``batch.tokens`` is missing, ``subsets`` has the wrong shape, ``depth`` or
        ``chunk`` is not a static int >= 1, ``logprob_fn`` returns the wrong shape, or (concrete
        inputs) the window check fails.
      TypeError: ``logprob_fn`` does not take ``(params, tokens, prompt)`` (a legacy ``(params, tokens)``
        function is accepted with a DeprecationWarning when ``prompt`` is None).
      jax.errors.JaxRuntimeError: under jit, the window check fails (the message of the ValueError).
    """
    if batch.tokens is None:
        raise ValueError("decompose needs batch.tokens (token ids) to find the shared prefixes")
    if depth is not None:
        depth = check_static_int("depth", depth, low=1)
    if rows is not None:
        rows = check_static_int("rows", rows, low=1)
    if chunk is not None:
        chunk = check_static_int("chunk", chunk, low=1)
    logprob_fn = _as_protocol(logprob_fn, prompt)
    tokens = jnp.asarray(batch.tokens)
    t = tokens.shape[-1]
    logp, vjp_full = jax.vjp(lambda p: logprob_fn(p, tokens, prompt), params)
    if logp.shape != tokens.shape:
        raise ValueError(f"logprob_fn must return logp of shape {tokens.shape} like batch.tokens, got {logp.shape}")
    coef = coefficients(spec, logp, batch)
    tree = prefix_tree(tokens, batch.mask)
    masks = tree.shared[None].astype(coef.dtype)
    if subsets is not None:
        subsets = _check_subsets(subsets, coef.shape)
        masks = jnp.concatenate([masks, subsets.astype(coef.dtype)])
    cot = (masks * coef[None]).astype(logp.dtype)  # [1 + K, ..., G, T]: shared, then the subsets
    (total,) = vjp_full(coef.astype(logp.dtype))
    g = tokens.shape[-2]
    if depth is None:
        depth = truncation_depth(tree, subsets) if is_concrete(cot) else t
    depth = min(depth, t)
    if rows is None:
        rows = truncation_rows(tree, subsets, depth=depth) if is_concrete(cot) else g
    rows = min(rows, g)

    if depth >= t and rows >= g:
        parts, truncated = _pullback(vjp_full, cot, chunk), jnp.zeros((), bool)
    else:
        cot = _to_representatives(cot, tree)  # each node's coefficients on its first member
        need = jnp.any(cot[..., :depth] != 0, axis=(0, -1))  # [..., G]: carries a window cotangent
        pick = jnp.argsort(~need, axis=-1, stable=True)[..., :rows]  # [..., R]: those first, then others
        take = lambda x: jnp.take_along_axis(x, pick[..., None], axis=-2)[..., :depth]  # noqa: E731
        tokens_w = take(tokens)
        logp_d, vjp_d = jax.vjp(lambda p: logprob_fn(p, tokens_w, prompt), params)
        if logp_d.shape != tokens_w.shape:
            raise ValueError(
                f"logprob_fn must return logp of shape {tokens_w.shape} for the window's tokens, got {logp_d.shape}"
            )
        reach = jnp.max(jnp.where(jnp.any(cot != 0, axis=tuple(range(cot.ndim - 1))), jnp.arange(t), -1))
        _check_window(take(logp), logp_d, take(jnp.asarray(batch.mask)), reach, jnp.max(jnp.sum(need, -1)), depth, rows)
        cot_w = jax.vmap(take)(cot)
        parts, truncated = _pullback(vjp_d, cot_w, chunk), jnp.ones((), bool)
    shared = jax.tree.map(lambda g: g[0], parts)
    extra = None if subsets is None else jax.tree.map(lambda g: g[1:], parts)
    return Decomposition(
        total=total,
        shared=shared,
        divergent=jax.tree.map(jnp.subtract, total, shared),
        subsets=extra,
        coefficients=coef,
        w_agg=w_agg(coef, tree),
        tree=tree,
        objective=-jgrpo.loss(spec, logp, batch)[0],
        truncated=truncated,
    )


def _as_protocol(logprob_fn: Callable, prompt: Any) -> LogprobFn:
    """``logprob_fn`` as ``(params, tokens, prompt) -> logp`` (the protocol of :mod:`jgrpo.policies`).

    A function of ``(params, tokens)`` only (the interface before the protocol, e.g. a
    ``functools.partial`` binding the prompt) is still accepted when ``prompt`` is None, with a
    DeprecationWarning; with a prompt it is a TypeError.
    """
    try:
        sig = inspect.signature(logprob_fn)
    except (TypeError, ValueError):  # builtins and some C callables have no signature: let the call decide
        return logprob_fn
    try:
        sig.bind(None, None, None)
        return logprob_fn
    except TypeError:
        pass
    try:
        sig.bind(None, None)
    except TypeError:
        legacy = False
    else:
        legacy = prompt is None
    if not legacy:
        raise TypeError(
            f"logprob_fn must take (params, tokens, prompt) (the protocol of jgrpo.policies; prompt may be None), "
            f"got a function with signature {sig}" + ("" if prompt is None else " and a prompt it cannot take")
        )
    warnings.warn(
        "logprob_fn(params, tokens) is deprecated: pass logprob_fn(params, tokens, prompt) and prompt=... "
        "(the protocol of jgrpo.policies)",
        DeprecationWarning,
        stacklevel=3,
    )
    return lambda params, tokens, _prompt: logprob_fn(params, tokens)


def _to_representatives(cot: jax.Array, tree: PrefixTree) -> jax.Array:
    """``[K, ..., G, T]`` cotangents moved onto each node's representative: the sum over the node's members.

    Exact for the pullback: the members of a node have the same log pi and the same gradient.
    """
    moved = jnp.einsum("...ijt,k...jt->k...it", tree.same_prefix.astype(cot.dtype), cot)
    return jnp.where(tree.representative[None], moved, jnp.zeros((), cot.dtype))


def _check_window(
    head: jax.Array, logp_d: jax.Array, mask: jax.Array, reach: jax.Array, count: jax.Array, depth: int, rows: int
) -> None:
    """Raises unless the window gives the exact contributions (see :func:`decompose`).

    (1) the last nonzero cotangent, ``reach``, lies before ``depth``; (2) no group needs more than ``rows``
    representatives (``count``); (3) the window's log-probs equal the full pass's (``head``) on its completion
    tokens to 1024 ulp (the policy is causal, as far as one evaluation shows).
    Concrete inputs: ValueError now; traced: a ``jax.debug.callback`` that raises at run time.
    """
    tol = 1024 * jnp.finfo(head.dtype).eps * (1.0 + jnp.abs(head))
    gap = jnp.where(mask > 0, jnp.abs(logp_d.astype(head.dtype) - head) - tol, -jnp.inf)
    excess = jnp.max(gap)

    def check(reach, count, excess):
        if int(reach) >= depth:
            raise ValueError(
                f"decompose(depth={depth}): a shared-prefix or subset token lies at position {int(reach)} >= depth; "
                f"pass depth > {int(reach)} (prefix.truncation_depth computes it) or depth=None under jit (no "
                "truncation)"
            )
        if int(count) > rows:
            raise ValueError(
                f"decompose(rows={rows}): a group has {int(count)} prefix-tree nodes' representatives in the window; "
                "pass rows >= that (prefix.truncation_rows computes it) or rows=None under jit (every completion)"
            )
        if float(excess) > 0:
            raise ValueError(
                f"decompose(depth={depth}): logprob_fn is not causal: its log-probs over the window's tokens differ "
                f"from the full pass's on those positions by up to {float(excess):.3g} beyond 1024 ulp; the "
                "truncated backward needs log pi at position t to depend on the prompt and tokens <= t only. "
                "Pass depth=None and rows=None (under jit), or depth >= T and rows >= G, for no truncation"
            )

    if is_concrete(reach, count, excess):
        check(reach, count, excess)
    else:
        jax.debug.callback(check, reach, count, excess)


def _pullback(vjp: Callable, cot: jax.Array, chunk: int | None) -> Any:
    """``vjp`` of each cotangent ``cot[n]``, stacked on a leading axis: one vmapped VJP, or ``chunk`` at a time.

    Chunked: a ``fori_loop`` whose step k pulls back ``cot[s_k : s_k + chunk]`` with
    ``s_k = min(k * chunk, n - chunk)`` and writes it in place into the ``[n, ...]`` result (the last
    chunk overlaps the one before it and rewrites the same values): no padding, no copy of the result.
    """
    n = cot.shape[0]
    if chunk is None or chunk >= n:
        return jax.vmap(vjp)(cot)[0]
    n_chunks = -(-n // chunk)
    shapes = jax.eval_shape(lambda c: vjp(c)[0], cot[0])

    def body(k, acc):
        start = jnp.minimum(k * chunk, n - chunk)
        (grads,) = jax.vmap(vjp)(jax.lax.dynamic_slice_in_dim(cot, start, chunk, axis=0))
        return jax.tree.map(lambda a, g: jax.lax.dynamic_update_slice_in_dim(a, g, start, axis=0), acc, grads)

    init = jax.tree.map(lambda s: jnp.zeros((n, *s.shape), s.dtype), shapes)
    return jax.lax.fori_loop(0, n_chunks, body, init)


def _check_subsets(subsets: ArrayLike, shape: tuple[int, ...]) -> jax.Array:
    subsets = jnp.asarray(subsets)
    check_shape("subsets", subsets, (subsets.shape[0] if subsets.ndim else 0, *shape), "[K, ..., G, T]")
    return subsets


def truncation_depth(tree: PrefixTree, subsets: ArrayLike | None = None, *, multiple: int = 8) -> int:
    """The window :func:`decompose` needs: 1 + the last position of a shared token or a subset's token.

    Rounded up to a ``multiple`` (fewer distinct window lengths, fewer compiles), at least 1 and at
    most T. Needs concrete values: call it outside jit and pass the result as ``decompose``'s static
    ``depth``.

    Raises:
      ValueError: traced arguments, ``multiple`` < 1 or ``subsets`` of the wrong shape.
    """
    multiple = check_static_int("multiple", multiple, low=1)
    if not is_concrete(tree.shared, subsets):
        raise ValueError("truncation_depth needs concrete tree and subsets (call it outside jit)")
    used = np.asarray(tree.shared)
    t = used.shape[-1]
    if subsets is not None:
        subsets = np.asarray(_check_subsets(subsets, used.shape))
        used = used | np.any(subsets != 0, axis=0)
    where = np.flatnonzero(np.any(used.reshape(-1, t), axis=0))
    end = int(where[-1]) + 1 if where.size else 1
    return min(t, -(-end // multiple) * multiple)


def truncation_rows(tree: PrefixTree, subsets: ArrayLike | None = None, *, depth: int) -> int:
    """The window's completions per group :func:`decompose` needs: the most prefix-tree nodes' representatives
    that carry a shared or subset token at a position < ``depth`` in any group (at least 1).

    Needs concrete values (call it outside jit, like :func:`truncation_depth`).

    Raises:
      ValueError: traced arguments, ``depth`` < 1 or ``subsets`` of the wrong shape.
    """
    depth = check_static_int("depth", depth, low=1)
    if not is_concrete(tree.shared, subsets):
        raise ValueError("truncation_rows needs concrete tree and subsets (call it outside jit)")
    used = jnp.asarray(tree.shared)[None]
    if subsets is not None:
        used = jnp.concatenate([used, _check_subsets(subsets, used.shape[1:]) != 0])
    moved = np.asarray(_to_representatives(used.astype(jnp.float32), tree))[..., :depth]
    return max(1, int(np.max(np.sum(np.any(moved != 0, axis=(0, -1)), axis=-1), initial=0)))


def depth_subsets(tree: PrefixTree, max_depth: int) -> jax.Array:
    """``[max_depth, ..., G, T]`` masks: shared tokens at prefix depth d = 0..max_depth-1 (position t = d).

    Pass them as ``decompose(..., subsets=depth_subsets(prefix_tree(tokens, mask), D))`` to get the
    gradient contribution of each depth of the shared prefixes.
    """
    t = tree.shared.shape[-1]
    depth = jnp.arange(max_depth).reshape((max_depth,) + (1,) * tree.shared.ndim)
    return tree.shared[None] & (jnp.arange(t) == depth)


def tree_norm(tree: Any) -> jax.Array:
    """Global L2 norm of a pytree of arrays, in float32 (``optax.tree.norm`` of the float32 leaves)."""
    return optax.tree.norm(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree))


class Effects(NamedTuple):
    """First-order effects of token subsets' gradient contributions on functionals F_d, per group.

    For a direction ``u_d = grad_theta F_d`` (e.g. the exact gradient of the expected
    length), the change of F_d along the gradient contribution of a token subset S is
    ``<u_d, g_S>`` with ``g_S = sum_{(i,t) in S} c_{i,t} grad log pi_{i,t}`` (Prop. 1,
    Eqs. 15-18). Each entry is that effect for one group's own objective J_b: their
    mean over the groups is the effect of the batch gradient grad J (J = mean_b J_b).

    Attributes:
      total: ``[D, ...]`` effect of the whole gradient on each F_d (``...`` = the batch's leading dims).
      shared: ``[D, ...]`` effect of the tokens in prefixes shared by >= 2 completions.
      divergent: ``[D, ...]`` effect of the other tokens (total = shared + divergent).
      subsets: ``[K, D, ...]`` effects of the extra ``subsets`` masks (or None).
      coefficients: ``[..., G, T]`` c_{i,t} = dJ/dlogp_{i,t}.
      tree: the :class:`PrefixTree`.
    """

    total: jax.Array
    shared: jax.Array
    divergent: jax.Array
    subsets: jax.Array | None
    coefficients: jax.Array
    tree: PrefixTree


def directional_logp(
    logprob_fn: LogprobFn, params: Any, tokens: ArrayLike, directions: Any, *, prompt: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array]:
    """``(logp [..., G, T], dlogp [D, ..., G, T])``: log-probabilities and their JVPs along D directions.

    ``dlogp[d, ..., i, t] = d log pi(y_{i,t}) / d theta . u_d``, one vmapped JVP of
    ``logprob_fn(params, tokens, prompt)`` (the protocol of :mod:`jgrpo.policies`; ``prompt`` may be None).

    Raises:
      ValueError: ``directions`` is not a pytree like ``params`` with a leading axis D, or ``logprob_fn``
        returns the wrong shape.
      TypeError: ``logprob_fn`` does not take ``(params, tokens, prompt)`` (a legacy ``(params, tokens)``
        function is accepted with a DeprecationWarning when ``prompt`` is None).
    """
    logprob_fn = _as_protocol(logprob_fn, prompt)
    tokens = jnp.asarray(tokens)
    p_leaves = jax.tree.leaves(params)
    d_leaves = jax.tree.leaves(directions)
    if len(p_leaves) != len(d_leaves) or any(
        d.ndim != p.ndim + 1 or d.shape[1:] != p.shape for p, d in zip(p_leaves, d_leaves, strict=True)
    ):
        raise ValueError(
            "directions must be a pytree like params with a leading axis D; got leaf shapes "
            f"{[tuple(d.shape) for d in d_leaves]} for params {[tuple(p.shape) for p in p_leaves]}"
        )
    fn = lambda p: logprob_fn(p, tokens, prompt)  # noqa: E731
    logp = fn(params)
    if logp.shape != tokens.shape:
        raise ValueError(f"logprob_fn must return logp of shape {tokens.shape} like the tokens, got {logp.shape}")
    dlogp = jax.vmap(lambda u: jax.jvp(fn, (params,), (u,))[1])(directions)
    return logp, dlogp


def effects_of(coef: jax.Array, dlogp: jax.Array, tree: PrefixTree, subsets: ArrayLike | None = None) -> Effects:
    """:class:`Effects` from coefficients ``[..., G, T]`` and JVPs ``[D, ..., G, T]`` (see :func:`effects`).

    Lets several methods share one :func:`directional_logp` (the JVPs do not depend on the method).
    """
    num_groups = math.prod(coef.shape[:-2])
    per_token = num_groups * coef[None] * dlogp.astype(coef.dtype)  # [D, ..., G, T]
    shared = tree.shared.astype(coef.dtype)

    def total_over(mask):
        return jnp.sum(per_token * mask, axis=(-2, -1))

    extra = None
    if subsets is not None:
        subsets = _check_subsets(subsets, coef.shape)
        extra = jax.vmap(lambda m: total_over(m.astype(coef.dtype)))(subsets)
    return Effects(
        total=total_over(1.0),
        shared=total_over(shared),
        divergent=total_over(1.0 - shared),
        subsets=extra,
        coefficients=coef,
        tree=tree,
    )


def effects(
    spec: MethodSpec,
    logprob_fn: LogprobFn,
    params: Any,
    batch: jgrpo.GroupBatch,
    directions: Any,
    subsets: jax.Array | None = None,
    *,
    prompt: ArrayLike | None = None,
) -> Effects:
    """Exact effect of each token subset's gradient contribution on functionals of the policy.

    ``<u, g_S> = sum_{(i,t) in S} c_{i,t} (d log pi_{i,t} / d theta . u)``: one JVP of
    ``logprob_fn`` per direction (vmapped), no parameter-sized gradient per group.
    This equals the inner product of ``u`` with :func:`decompose`'s contributions,
    and is what Prop. 1's consequences are about: e.g. with ``u = grad E[|o|]``,
    how much the shared-prefix part of a group's gradient changes the expected
    length (to first order in the step). Jit it as :func:`decompose`.

    Args:
      spec: the method.
      logprob_fn: ``(params, tokens [..., G, T], prompt) -> logp [..., G, T]`` (:mod:`jgrpo.policies`).
      params: the policy parameters (pytree).
      batch: a :class:`jgrpo.GroupBatch` with ``tokens``.
      directions: a pytree like ``params`` with a leading axis D: the gradients u_d.
      subsets: optional ``[K, ..., G, T]`` extra token masks.
      prompt: ``[..., P]`` prompt token ids passed to ``logprob_fn`` (or None).

    Returns:
      :class:`Effects`; per-group values are ``B * sum_{(i,t) in group b and S} c_{i,t} D_{d,i,t}``
      with B the number of groups.

    Raises:
      ValueError: ``batch.tokens`` missing, ``subsets`` or ``directions`` of the wrong shape.
      TypeError: ``logprob_fn`` does not take ``(params, tokens, prompt)`` (a legacy ``(params, tokens)``
        function is accepted with a DeprecationWarning when ``prompt`` is None).
    """
    if batch.tokens is None:
        raise ValueError("effects needs batch.tokens (token ids) to find the shared prefixes")
    tokens = jnp.asarray(batch.tokens)
    logp, dlogp = directional_logp(logprob_fn, params, tokens, directions, prompt=prompt)
    coef = coefficients(spec, logp, batch)
    return effects_of(coef, dlogp, prefix_tree(tokens, batch.mask), subsets)


_TREE_MAX_SEQUENCES = 2**22


def tree_sequences(vocab: int, length: int, *, eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Every token sequence of ``length`` tokens, ``[V^length, length]``, and its completion mask.

    The mask is 1 up to and including the first ``eos`` (all ones without EOS), the
    convention of :func:`jgrpo.policies.tree_sample`. Raises ValueError beyond 2^22 sequences.
    """
    v, t = int(vocab), int(length)
    if v < 1 or t < 1:
        raise ValueError(f"vocab and length must be >= 1, got {vocab}, {length}")
    if v**t > _TREE_MAX_SEQUENCES:
        raise ValueError(f"V^length = {v}^{t} = {v**t} sequences exceed the enumeration limit 2^22")
    seqs = np.stack(np.unravel_index(np.arange(v**t), (v,) * t), axis=-1).astype(np.int32)
    if eos is None:
        return seqs, np.ones(seqs.shape, np.float32)
    is_eos = seqs == eos
    before = np.cumsum(is_eos, axis=-1) - is_eos  # EOS tokens strictly before t
    return seqs, (before == 0).astype(np.float32)


def tree_expectation(params: Any, value_fn: Callable, *, eos: int | None, length: int) -> jax.Array:
    """Exact E[value_fn(tokens, mask)] under a prefix-tree policy, by enumeration.

    Sums over all V^length sequences ``y`` of ``prod_t pi(y_t | y_<t)`` times the value
    of the completion (``y`` cut after its first EOS): the tokens after the EOS
    marginalise to 1, so this is the expectation over completions drawn by
    :func:`jgrpo.policies.tree_sample` with the same ``eos`` and ``max_len = length``.

    Args:
      params: ``{"logits": [N, V]}`` (a prefix tree covering at least ``length`` tokens).
      value_fn: ``(tokens [S, length] int32, mask [S, length] float32) -> [S]`` values
        (padding tokens are the sequences' own tokens after the EOS: read ``mask``).
      eos: the EOS token or None.
      length: the completion length (static).

    Returns:
      A scalar, differentiable in ``params`` (float32, or float64 for a float64 table).
    """
    table = params["logits"] if isinstance(params, dict) else params
    n, vocab = np.shape(table)
    if n < tree_num_contexts(vocab, length):
        raise ValueError(f"params['logits'] has {n} rows, fewer than a prefix tree of length {length} needs")
    seqs, mask = tree_sequences(vocab, length, eos=eos)
    dtype = jnp.result_type(table.dtype, jnp.float32)
    table = jnp.asarray(table, dtype)
    # log P(y_<t+1) level by level: the rows of depth t are one contiguous block in base-V order, and the
    # children of prefix h are h*V + v, so each level is a static slice and a reshape (no gather). A loop
    # over the depth is unavoidable (level t has V^t rows); length is small (V^length <= 2^22).
    logp = jnp.zeros((1,), dtype)
    for t in range(length):
        off = tree_num_contexts(vocab, t) if t else 0
        block = jax.nn.log_softmax(table[off : off + vocab**t], axis=-1)  # [V^t, V]
        logp = (logp[:, None] + block).reshape(-1)
    # the barrier keeps XLA from constant-folding value_fn over the V^length enumerated sequences
    seqs_, mask_ = jax.lax.optimization_barrier((jnp.asarray(seqs), jnp.asarray(mask)))
    return jnp.sum(jnp.exp(logp) * jnp.asarray(value_fn(seqs_, mask_), dtype))
