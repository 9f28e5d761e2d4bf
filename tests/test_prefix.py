"""Prop. 1: shared-prefix attribution through a real transformer, checked against separate gradients."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from analysis import prefix
from jgrpo import methods
from jgrpo import policies as P
from jgrpo.policies import TransformerConfig, make_transformer, nnx_logprob_fn

# Four completions; prefixes shared at depths 1 (all four), 2 (three), 4 (two); unequal lengths.
TOKENS = np.array(
    [
        [[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 0, 0, 0], [1, 2, 5, 6, 7, 8, 0], [1, 3, 3, 0, 0, 0, 0]],
        [[4, 4, 4, 4, 4, 4, 4], [4, 4, 1, 0, 0, 0, 0], [5, 1, 2, 3, 0, 0, 0], [4, 4, 1, 2, 3, 4, 0]],
    ],
    np.int32,
)
MASK = (TOKENS > 0).astype(np.float32)
MASK[1, 0] = 1.0
PROMPT = np.array([[9, 10], [11, 9]], np.int32)


@pytest.fixture(scope="module")
def model():
    graphdef, params = make_transformer(jax.random.key(0), TransformerConfig.tiny(vocab=12, max_len=10))
    fn = nnx_logprob_fn(graphdef)
    return _bind(fn, jnp.asarray(PROMPT)), params


def _bind(fn, prompt):
    """``(params, tokens, prompt=None)`` with the prompt bound (the protocol's signature, prompt ignored)."""
    return lambda params, tokens, _=None: fn(params, tokens, prompt)


def assert_tree_close(a, b, rel=1e-5):
    """Relative L2 error of pytree a against b (float32 rounding shows per element, not in the norm)."""
    err = float(prefix.tree_norm(jax.tree.map(jnp.subtract, a, b)) / prefix.tree_norm(b))
    assert err <= rel, err


def make_batch(logprob_fn, params, rewards, seed=0):
    logp = np.asarray(logprob_fn(params, jnp.asarray(TOKENS)))
    rng = np.random.default_rng(seed)
    return jgrpo.GroupBatch(
        mask=MASK,
        logp_old=np.where(MASK > 0, logp - 0.05 * rng.normal(size=logp.shape), 0.0).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        logp_ref=np.where(MASK > 0, logp + 0.1 * rng.normal(size=logp.shape), 0.0).astype(np.float32),
        tokens=TOKENS,
    )


def test_prefix_tree_from_tokens():
    tree = prefix.prefix_tree(TOKENS, MASK)
    np.testing.assert_array_equal(tree.node_size[0, :, 0], [4, 4, 4, 4])
    np.testing.assert_array_equal(tree.node_size[0, :, 1], [3, 3, 3, 1])
    np.testing.assert_array_equal(tree.node_size[0, :, 3], [2, 2, 1, 0])
    np.testing.assert_array_equal(tree.node_size[0, :, 4], [1, 0, 1, 0])
    # depth 2 (t = 2): completions 0 and 1 share [1, 2, 3]; completion 2 has [1, 2, 5].
    np.testing.assert_array_equal(tree.node_size[0, :, 2], [2, 2, 1, 1])
    assert int(tree.representative[0, :, 0].sum()) == 1
    # The second group: [4, 4, ...] is shared by three completions at t = 0, 1; one starts with 5.
    np.testing.assert_array_equal(tree.node_size[1, :, 0], [3, 3, 1, 3])
    np.testing.assert_array_equal(tree.node_size[1, :, 2], [1, 2, 1, 2])


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("grpo", marks=pytest.mark.slow),
        "dr_grpo",
        pytest.param("gspo", marks=pytest.mark.slow),
        pytest.param("gcpo", marks=pytest.mark.slow),
    ],
)
def test_shared_equals_w_agg_times_separate_prefix_gradients(model, name):
    logprob_fn, params = model
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    spec = methods.get(name, eps_low=0.5, eps_high=0.5) if name == "gspo" else methods.get(name)
    # grpo: the truncated window (positions < 4, two rows per group: one per prefix-tree node) as a caller would
    # pass it; the other methods: the default under jit (untruncated)
    window = dict(depth=4, rows=2) if name == "grpo" else {}
    dec = _DECOMPOSE(spec, logprob_fn, params, batch, **window)
    assert bool(dec.truncated) is (name == "grpo")
    # total = jax.grad of -loss
    direct = jax.jit(jax.grad(lambda p: -jgrpo.loss(spec, logprob_fn(p, jnp.asarray(TOKENS)), batch)[0]))(params)
    assert_tree_close(dec.total, direct)
    # shared + divergent = total
    assert_tree_close(jax.tree.map(jnp.add, dec.shared, dec.divergent), dec.total)
    # shared = sum over nodes of W_agg(node) * grad log pi(node token | prefix), one copy of each prefix.
    reps = np.argwhere(np.asarray(dec.tree.representative & dec.tree.shared))
    assert len(reps) >= 5
    w = np.asarray(dec.w_agg)[tuple(reps.T)]
    grads = _token_grads(logprob_fn)(params, *map(jnp.asarray, reps.T))  # each node's own grad log pi, [K, ...]
    expected = jax.tree.map(lambda g: jnp.tensordot(jnp.asarray(w, g.dtype), g, axes=1), grads)
    num = prefix.tree_norm(jax.tree.map(jnp.subtract, dec.shared, expected))
    den = prefix.tree_norm(expected)
    assert float(den) > 0
    assert float(num / den) <= 1e-5, float(num / den)


@functools.cache
def _token_grads(logprob_fn):
    """``(params, b [K], i [K], t [K]) -> grad log pi(y_{b,i,t})`` stacked on K (one compile per model)."""

    def one_logp(p, b, i, t):
        return logprob_fn(p, jnp.asarray(TOKENS))[b, i, t]

    return jax.jit(jax.vmap(jax.grad(one_logp), in_axes=(None, 0, 0, 0)))


def _all_shared_w(spec, logprob_fn, params, rewards):
    batch = make_batch(logprob_fn, params, rewards)
    # first inner step: logp_old = current logp, ratio 1.
    logp = logprob_fn(params, jnp.asarray(TOKENS))
    batch = batch.replace(logp_old=np.asarray(logp))
    dec = _DECOMPOSE(spec, logprob_fn, params, batch)  # jitted: op-by-op it takes ~4x longer
    return np.asarray(dec.w_agg)[0, 0, 0], dec  # group 0, token 0: shared by all four


def test_fully_shared_prefix_zero_under_dr_grpo_nonzero_under_grpo(model):
    logprob_fn, params = model
    rewards = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]  # dyadic: the mean is exact
    w_dr, _ = _all_shared_w(methods.get("dr_grpo", beta=0.0), logprob_fn, params, rewards)
    w_grpo, dec = _all_shared_w(methods.get("grpo", beta=0.0), logprob_fn, params, rewards)
    assert w_dr == 0.0
    # grpo weights 1/(G |o_i| sigma): unequal lengths 7, 4, 6, 3 with A = +-0.5 leave a residue.
    lengths = MASK[0].sum(-1)
    expected = np.sum(np.array([0.5, -0.5, 0.5, -0.5]) / (4 * lengths * 0.5)) / 2  # / B = 2 prompts
    assert w_grpo == pytest.approx(expected, rel=1e-5)
    assert abs(w_grpo) > 1e-3
    assert float(prefix.tree_norm(dec.shared)) > 0


@pytest.mark.parametrize("name", [n for n in methods.names() if n != "gmpo"])
def test_prefix_debias_zeroes_fully_shared_prefix_for_every_preset(model, name):
    logprob_fn, params = model
    rewards = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]
    spec = methods.get(name, prefix_debias=True, beta=0.0)
    batch = make_batch(logprob_fn, params, rewards)
    logp = np.asarray(logprob_fn(params, jnp.asarray(TOKENS)))
    batch = batch.replace(logp_old=logp, entropy=np.full_like(logp, 0.5))  # < ln 2: GTPO keeps all
    coef = np.asarray(prefix.coefficients(spec, logp, batch))
    w = np.asarray(prefix.w_agg(jnp.asarray(coef), prefix.prefix_tree(TOKENS, MASK)))
    scale = np.abs(coef).max()
    assert scale > 0
    assert abs(w[0, 0, 0]) <= 1e-6 * scale, (name, w[0, 0, 0], scale)


def test_prefix_debias_keeps_divergent_weights_and_node_means_shared_ones():
    spec = methods.get("grpo", beta=0.0)
    debiased = spec.replace(prefix_debias=True)
    rng = np.random.default_rng(0)
    logp = np.where(MASK > 0, -rng.uniform(0.5, 2.0, size=MASK.shape), 0.0).astype(np.float32)
    batch = jgrpo.GroupBatch(
        mask=MASK, logp_old=logp, rewards=np.array([[1, 0, 1, 0], [0, 1, 1, 0.5]], np.float32), tokens=TOKENS
    )
    a0 = np.asarray(jgrpo.terms(spec, logp, batch).alpha)
    a1 = np.asarray(jgrpo.terms(debiased, logp, batch).alpha)
    tree = prefix.prefix_tree(TOKENS, MASK)
    same = np.asarray(tree.same_prefix)
    # independent loop: node mean of alpha for every token
    expected = np.zeros_like(a0)
    for b in range(2):
        for i in range(4):
            for t in range(TOKENS.shape[-1]):
                members = [j for j in range(4) if same[b, i, j, t]]
                if members:
                    expected[b, i, t] = np.mean([a0[b, j, t] for j in members])
    np.testing.assert_allclose(a1, expected, rtol=1e-6)
    divergent = np.asarray(tree.node_size) == 1
    np.testing.assert_array_equal(a1[divergent], a0[divergent])


def test_subsets_by_depth_sum_to_shared(model):
    logprob_fn, params = model
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    spec = methods.get("grpo")
    tree = prefix.prefix_tree(TOKENS, MASK)
    subsets = prefix.depth_subsets(tree, TOKENS.shape[-1])
    dec = _DECOMPOSE(spec, logprob_fn, params, batch, subsets=subsets)
    assert_tree_close(jax.tree.map(lambda x: x.sum(0), dec.subsets), dec.shared)


def test_decompose_needs_tokens(model):
    logprob_fn, params = model
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    with pytest.raises(ValueError, match="needs batch.tokens"):
        prefix.decompose(methods.get("grpo"), logprob_fn, params, batch.replace(tokens=None))


# ----------------------------------------------------------------------------- truncated, chunked backward


def _causal64(params, tokens, prompt):
    """A one-layer attention LM in float64, written here (not jgrpo's): ``(params, tokens [..., G, T], prompt)``.

    Position t of the completion reads the prompt and y_<t through causal attention, plus ``params["leak"]**2`` times
    the mean embedding of the whole sequence: with leak = 0 it is causal, with leak != 0 every position also sees
    the later tokens (one compiled program for both).
    """
    lead, p = tokens.shape[:-1], prompt.shape[-1]
    ids = jnp.concatenate([jnp.broadcast_to(prompt[..., None, :], lead + (p,)), tokens], axis=-1)
    x = params["embed"][ids]  # [..., G, L, D]
    n = ids.shape[-1]
    scores = jnp.einsum("...id,de,...je->...ij", x, params["query"], x)
    scores = jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores, -jnp.inf)
    h = jnp.einsum("...ij,...jd->...id", jax.nn.softmax(scores, axis=-1), x) + x
    # leak**2: at leak = 0 the gradient is causal too (leak * mean(x) would give leak a gradient from later tokens)
    h = jnp.tanh(h + params["leak"] ** 2 * jnp.mean(x, axis=-2, keepdims=True))
    logp_v = jax.nn.log_softmax(h @ params["head"], axis=-1)[..., p - 1 : -1, :]
    return jnp.take_along_axis(logp_v, tokens[..., None], axis=-1)[..., 0]


@functools.cache
def _separate_fn(spec, logprob_fn):
    """The reference: one jax.grad of sum_S sg[c] logp per token subset S (full length, no vmap; one compile)."""

    @jax.jit
    def run(params, batch, prompt, masks):
        tokens = jnp.asarray(batch.tokens)
        coef = prefix.coefficients(spec, logprob_fn(params, tokens, prompt), batch)
        grad = jax.grad(lambda p, w: jnp.sum(w * coef * logprob_fn(p, tokens, prompt)))
        return jax.lax.map(lambda w: grad(params, w), masks)  # sequential: K separate gradients

    return run


def _separate(spec, logprob_fn, params, batch, prompt, masks):
    out = _separate_fn(spec, logprob_fn)(params, batch, prompt, jnp.asarray(np.stack(masks)))
    return [jax.tree.map(lambda x, k=k: x[k], out) for k in range(len(masks))]


def _check_against(dec, refs, rel):
    got = [dec.shared, dec.divergent] + [jax.tree.map(lambda x, k=k: x[k], dec.subsets) for k in range(len(refs) - 2)]
    for k, (a, b) in enumerate(zip(got, refs, strict=True)):
        assert float(prefix.tree_norm(b)) > 0, k
        assert_tree_close(a, b, rel=rel)


_DECOMPOSE = jax.jit(prefix.decompose, static_argnums=(0, 1), static_argnames=("depth", "rows", "chunk"))


@pytest.mark.slow  # ~10 s of float64 compiles; make test keeps the float32 tabular check and the window rules
def test_truncated_chunked_backward_is_exact_float64():
    """depth < T, chunked: every contribution equals separate jax.grad calls to float64 rounding; a non-causal
    policy (the same program with leak != 0) fails the causality check with a clear error, under jit too."""
    rng = np.random.default_rng(7)
    tree = prefix.prefix_tree(TOKENS, MASK)
    subsets = prefix.depth_subsets(tree, 3)
    assert prefix.truncation_depth(tree, subsets, multiple=1) == 4  # shared tokens up to t = 3 (group 0)
    assert prefix.truncation_rows(tree, subsets, depth=4) == 2  # group 1: nodes [4, 4] (row 0), [4, 4, 1] (row 1)
    shared = np.asarray(tree.shared, np.float64)
    masks = [shared, 1.0 - shared, *np.asarray(subsets, np.float64)]
    subsets = np.asarray(subsets)
    with jax.enable_x64(True):
        shapes = (("embed", (12, 6)), ("query", (6, 6)), ("head", (6, 12)))
        params = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes} | {"leak": jnp.zeros(())}
        prompt, spec = jnp.asarray(PROMPT), methods.get("grpo", beta=0.0)
        logp_old = np.where(MASK > 0, -rng.uniform(1.0, 3.0, size=MASK.shape), 0.0)
        rewards = np.array([[1, 0, 0.5, 0], [0, 1, 1, 0.25]])
        batch = jgrpo.GroupBatch(mask=MASK, logp_old=logp_old, rewards=rewards, tokens=TOKENS)
        dec = _DECOMPOSE(spec, _causal64, params, batch, subsets, prompt=prompt, depth=4, rows=2, chunk=2)
        assert bool(dec.truncated)
        _check_against(dec, _separate(spec, _causal64, params, batch, prompt, masks), rel=1e-12)
        leaky = params | {"leak": jnp.asarray(0.5)}
        with pytest.raises(Exception, match="logprob_fn is not causal"):  # at run time, from the jitted call
            jax.block_until_ready(
                _DECOMPOSE(spec, _causal64, leaky, batch, subsets, prompt=prompt, depth=4, rows=2, chunk=2)
            )


@pytest.mark.parametrize("policy", ["tabular", pytest.param("transformer", marks=pytest.mark.slow)])
def test_truncated_equals_untruncated_and_separate_grads(model, policy):
    """float32: the truncated decomposition against separate jax.grad calls and the untruncated one."""
    if policy == "tabular":
        # chunked, against the untruncated path too
        logprob_fn, params = P.tabular_logprob, P.tabular_init(jax.random.key(1), vocab=12, max_len=7)
        rel, chunk = 1e-6, 2
    else:
        # float32 rounding of a transformer's gradient: the untruncated decomposition itself differs from
        # separate jax.grad calls by 2e-6 to 5e-6 (relative L2) here, whatever the truncation, depending on
        # XLA's optimisation level. A truncation error (a missing or doubled position) is O(0.1) or more;
        # exactness is checked in float64 (test_truncated_chunked_backward_is_exact_float64).
        (logprob_fn, params), rel, chunk = model, 2e-5, None
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    prompt, spec = jnp.asarray(PROMPT), methods.get("grpo", beta=0.0)
    tree = prefix.prefix_tree(TOKENS, MASK)
    subsets = prefix.depth_subsets(tree, 3)
    shared = np.asarray(tree.shared, np.float32)
    refs = _separate(spec, logprob_fn, params, batch, prompt, [shared, 1.0 - shared, *np.asarray(subsets, np.float32)])
    fast = _DECOMPOSE(spec, logprob_fn, params, batch, subsets, prompt=prompt, depth=4, rows=2, chunk=chunk)
    assert bool(fast.truncated)
    _check_against(fast, refs, rel=rel)
    if policy == "tabular":
        full = _DECOMPOSE(spec, logprob_fn, params, batch, subsets, prompt=prompt)  # traced tokens: T, untruncated
        assert not bool(full.truncated)
        for a, b in ((fast.total, full.total), (fast.shared, full.shared), (fast.subsets, full.subsets)):
            assert_tree_close(a, b, rel=rel)


def test_window_checks_name_the_fix():
    """The three window checks (the rule decompose applies to its measured scalars), on synthetic values."""
    head = jnp.asarray([[-1.0, -2.0, -3.0]])
    mask = jnp.asarray([[1.0, 1.0, 0.0]])
    ok = dict(head=head, logp_d=head, mask=mask, reach=jnp.asarray(2), count=jnp.asarray(2), depth=3, rows=2)
    prefix._check_window(**ok)  # passes: nothing raised
    prefix._check_window(**ok | {"logp_d": head.at[0, 2].set(0.0)})  # a padding position is not compared
    prefix._check_window(**ok | {"logp_d": head * (1 + 1e-5)})  # rounding-level differences pass (1024 ulp)
    with pytest.raises(ValueError, match=r"lies at position 3 >= depth; pass depth > 3"):
        prefix._check_window(**ok | {"reach": jnp.asarray(3)})
    with pytest.raises(ValueError, match=r"a group has 3 prefix-tree nodes' representatives in the window"):
        prefix._check_window(**ok | {"count": jnp.asarray(3)})
    with pytest.raises(ValueError, match="logprob_fn is not causal"):
        prefix._check_window(**ok | {"logp_d": head.at[0, 1].add(1e-3)})


def test_pullback_chunks_equal_one_vmap():
    """Chunked pullback (sizes that divide K and that do not) equals the single vmapped VJP."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    _, vjp = jax.vjp(lambda p: jnp.tanh(p["w"] @ jnp.arange(4.0)), {"w": w})
    cot = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
    whole = prefix._pullback(vjp, cot, None)["w"]
    for chunk in (1, 2, 3, 5, 9):
        np.testing.assert_allclose(prefix._pullback(vjp, cot, chunk)["w"], whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(whole[2], vjp(cot[2])[0]["w"], rtol=1e-6)


def test_decompose_protocol_and_static_arguments(model):
    logprob_fn, params = model
    batch = make_batch(logprob_fn, params, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.25]])
    spec = methods.get("grpo", beta=0.0)
    legacy = lambda p, tokens: logprob_fn(p, tokens)  # noqa: E731  (the interface before the protocol)
    with pytest.raises(TypeError, match=r"logprob_fn must take \(params, tokens, prompt\).*a prompt it cannot take"):
        prefix.decompose(spec, legacy, params, batch, prompt=jnp.asarray(PROMPT))
    with pytest.raises(TypeError, match=r"logprob_fn must take \(params, tokens, prompt\)"):
        prefix.effects(spec, lambda p: p, params, batch, params)
    with pytest.warns(DeprecationWarning, match=r"logprob_fn\(params, tokens\) is deprecated"):
        wrapped = prefix._as_protocol(legacy, None)
    np.testing.assert_array_equal(wrapped(params, jnp.asarray(TOKENS), None), logprob_fn(params, jnp.asarray(TOKENS)))
    assert prefix._as_protocol(P.tabular_logprob, None) is P.tabular_logprob
    for name, value in (("depth", 0), ("chunk", 0), ("depth", 2.0), ("rows", 0)):
        with pytest.raises(ValueError, match=f"{name} must be a static Python int >= 1"):
            prefix.decompose(spec, logprob_fn, params, batch, **{name: value})
    tree = prefix.prefix_tree(TOKENS, MASK)
    assert prefix.truncation_depth(tree, multiple=1) == 4 and prefix.truncation_depth(tree) == 7  # 8 capped at T
    late = np.zeros((1, *TOKENS.shape), bool)
    late[0, 1, 3, 5] = True  # one token at t = 5 (a subset need not be shared)
    assert prefix.truncation_depth(tree, late, multiple=1) == 6 and prefix.truncation_depth(tree, late, multiple=4) == 7
    with pytest.raises(ValueError, match="outside jit"):
        jax.jit(lambda s: prefix.truncation_depth(tree._replace(shared=s)))(tree.shared)


# ----------------------------------------------------------------------------- effects: directional derivatives


def _tree_dot(a, b):
    return float(sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)))


def test_effects_equal_decomposition_dotted_with_directions():
    """effects = <u, decompose's contributions>, per group = the group's own objective (prefix-tree policy)."""
    vocab, length = 3, 5
    rng = np.random.default_rng(4)  # NumPy draws: no PRNG program to compile
    params = {
        "logits": jnp.asarray(0.7 * rng.standard_normal((P.tree_num_contexts(vocab, length), vocab)), jnp.float32)
    }
    s = P.tree_sample(params, jax.random.key(5), (3, 6), max_len=length, eos_id=0)
    logp = P.tree_logprob(params, s.tokens)
    rewards = jnp.asarray([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0.5]], jnp.float32)
    batch = jgrpo.GroupBatch(mask=s.mask, logp_old=logp - 0.05, rewards=rewards, tokens=s.tokens)
    dirs = {"logits": jnp.asarray(rng.standard_normal((2,) + params["logits"].shape), jnp.float32)}
    spec = methods.get("grpo", beta=0.0)
    tree = jax.jit(prefix.prefix_tree)(s.tokens, s.mask)
    subsets = prefix.depth_subsets(tree, 3)
    assert int(tree.shared.sum()) > 0
    effects = jax.jit(prefix.effects, static_argnums=(0, 1))
    eff = effects(spec, P.tree_logprob, params, batch, dirs, subsets=subsets)
    dec = jax.jit(prefix.decompose, static_argnums=(0, 1))(spec, P.tree_logprob, params, batch, subsets=subsets)
    for d in range(2):
        u = {"logits": dirs["logits"][d]}
        for name in ("total", "shared", "divergent"):
            want = _tree_dot(u, getattr(dec, name))
            got = float(getattr(eff, name)[d].mean())  # the mean of per-group effects is the batch effect
            assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (name, d)
        for k in range(3):
            want = _tree_dot(u, jax.tree.map(lambda x, k=k: x[k], dec.subsets))
            assert float(eff.subsets[k, d].mean()) == pytest.approx(want, rel=1e-4, abs=1e-7)
    # per group: the effect of that group's own objective J_b. The same group next to two groups of equal
    # rewards (zero advantage, zero gradient) has the same per-group effect: J_b's, whatever the batch around it.
    alone = jax.tree.map(lambda x: jnp.concatenate([x[1:2], x[1:2], x[1:2]]), batch)
    alone = alone.replace(rewards=alone.rewards.at[1:].set(1.0))
    e1 = effects(spec, P.tree_logprob, params, alone, dirs, subsets=subsets)
    np.testing.assert_allclose(np.asarray(eff.total[:, 1]), np.asarray(e1.total[:, 0]), rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(e1.total[:, 1:]) == 0.0)
    with pytest.raises(ValueError, match="directions must be a pytree like params"):
        prefix.effects(spec, P.tree_logprob, params, batch, params)


# ----------------------------------------------------------------------------- the prefix-tree policy


def _tree_row(prefix_tokens, vocab):
    """Independent row index of a prefix: rows are ordered by length, then base-V order (plain Python)."""
    t = len(prefix_tokens)
    offset = sum(vocab**k for k in range(t))
    index = 0
    for y in prefix_tokens:
        index = index * vocab + int(y)
    return offset + index


def test_tree_policy_logprob_contexts_and_errors():
    vocab, length = 3, 4
    params = P.tree_init(jax.random.key(0), vocab=vocab, max_len=length, scale=1.3)
    assert params["logits"].shape == (1 + 3 + 9 + 27, 3) == (P.tree_num_contexts(vocab, length), vocab)
    tokens = np.array([[[0, 2, 1, 1], [2, 2, 0, 1]], [[1, 1, 1, 1], [0, 0, 0, 0]]], np.int32)
    logp = np.asarray(P.tree_logprob(params, tokens))
    table = np.asarray(params["logits"], np.float64)
    for idx in np.ndindex(tokens.shape[:-1]):
        for t in range(length):
            row = table[_tree_row(tokens[idx][:t], vocab)]
            want = row[tokens[idx][t]] - np.log(np.exp(row).sum())
            assert logp[idx + (t,)] == pytest.approx(want, abs=1e-5)
    ctx = np.asarray(P.tree_contexts(tokens, vocab))
    assert ctx[0, 1].tolist() == [_tree_row(tokens[0, 1][:t], vocab) for t in range(length)]
    # completions sharing a prefix share exactly those rows, and nothing after
    assert ctx[0, 0, 0] == ctx[1, 1, 0] == 0 and ctx[0, 0, 1] == ctx[1, 1, 1] and ctx[0, 0, 2] != ctx[1, 1, 2]
    with pytest.raises(ValueError, match="covers max_len = 4"):
        P.tree_logprob(params, np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match=r"token ids in \[0, 3\)"):
        P.tree_logprob(params, np.full((2, 3), 3, np.int32))
    with pytest.raises(ValueError, match="not 1 \\+ V"):
        P.tree_logprob({"logits": jnp.zeros((7, 3))}, np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="max_len must be an int"):
        P.tree_sample(params, jax.random.key(0), (2,), max_len=5)


def _tree_walk(table, vocab, length, eos, value):
    """E[value(completion)] by recursion over prefixes, float64 (independent of analysis.prefix)."""

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    def walk(prefix_tokens, prob):
        p = softmax(table[_tree_row(prefix_tokens, vocab)])
        total = 0.0
        for v in range(vocab):
            seq = prefix_tokens + [v]
            if v == eos or len(seq) == length:
                total += prob * p[v] * value(seq)
            else:
                total += walk(seq, prob * p[v])
        return total

    return walk([], 1.0)


def test_tree_expectation_matches_recursion_and_gradient():
    vocab, length, eos = 3, 4, 0
    params = P.tree_init(jax.random.key(1), vocab=vocab, max_len=length, scale=1.0)
    table = np.asarray(params["logits"], np.float64)

    def reward(seqs, mask):  # 1 iff token 2 occurs in the completion
        return jnp.any((seqs == 2) & (mask > 0), axis=-1).astype(jnp.float64)

    with jax.enable_x64(True):
        p64 = {"logits": jnp.asarray(table)}
        e_len = float(prefix.tree_expectation(p64, lambda s, m: m.sum(-1), eos=eos, length=length))
        e_hit = float(prefix.tree_expectation(p64, reward, eos=eos, length=length))
        grad = np.asarray(
            jax.grad(lambda p: prefix.tree_expectation(p, lambda s, m: m.sum(-1), eos=eos, length=length))(p64)[
                "logits"
            ]
        )
    assert e_len == pytest.approx(_tree_walk(table, vocab, length, eos, len), rel=1e-12)
    assert e_hit == pytest.approx(_tree_walk(table, vocab, length, eos, lambda s: float(2 in s)), rel=1e-12)
    rng = np.random.default_rng(0)
    for row, col in zip(rng.integers(0, 13, 6), rng.integers(0, vocab, 6), strict=True):  # rows of prefixes < T
        h, up, dn = 1e-6, table.copy(), table.copy()
        up[row, col] += h
        dn[row, col] -= h
        fd = (_tree_walk(up, vocab, length, eos, len) - _tree_walk(dn, vocab, length, eos, len)) / (2 * h)
        assert grad[row, col] == pytest.approx(fd, abs=1e-7)


def test_tree_sequences_masks():
    seqs, mask = prefix.tree_sequences(2, 3, eos=1)
    assert seqs.shape == (8, 3)
    want = {(0, 0, 0): [1, 1, 1], (1, 0, 0): [1, 0, 0], (0, 1, 1): [1, 1, 0], (0, 0, 1): [1, 1, 1]}
    for s, m in want.items():
        assert mask[np.all(seqs == s, -1)][0].tolist() == m
    with pytest.raises(ValueError, match="enumeration limit"):
        prefix.tree_sequences(4, 12, eos=None)


# ----------------------------------------------------------------------------- tabular sampling, prompt tables


def test_prompt_conditioned_tables():
    pp = P.tabular_prompt_init(jax.random.key(2), prompts=3, vocab=4, max_len=6)
    prompt = jnp.array([2, 0, 2])
    ps = P.tabular_prompt_sample(pp, prompt, jax.random.key(3), group_size=5, max_len=6, eos_id=1)
    assert ps.tokens.shape == ps.mask.shape == (3, 5, 6)
    logp = P.tabular_prompt_logprob(pp, ps.tokens, prompt)
    for b, k in enumerate([2, 0, 2]):  # each prompt uses its own table
        np.testing.assert_array_equal(logp[b], P.tabular_logprob({"logits": pp["logits"][k]}, ps.tokens[b]))
    with pytest.raises(ValueError, match=r"prompt must hold token ids in \[0, 3\)"):
        P.tabular_prompt_logprob(pp, ps.tokens, jnp.array([3, 0, 0]))
    with pytest.raises(ValueError, match="prompt must have shape"):
        P.tabular_prompt_logprob(pp, ps.tokens, jnp.array([0, 0]))
    with pytest.raises(ValueError, match=r"\[K, T, V\+1, V\]"):
        P.tabular_prompt_logprob({"logits": pp["logits"][0]}, ps.tokens, prompt)
    with pytest.raises(ValueError, match="max_len must be an int"):
        P.tabular_prompt_sample(pp, prompt, jax.random.key(3), group_size=5, max_len=7)


@pytest.mark.slow
def test_samplers_match_exact_distributions():
    """tabular_sample and tree_sample against the exact expectations (analysis.tabular, tree_expectation)."""
    from analysis import tabular as tab

    n = 20000
    params = P.tabular_init(jax.random.key(0), vocab=4, max_len=6, scale=1.0)
    s = P.tabular_sample(params, jax.random.key(1), (n,), max_len=6, eos_id=1, pad_id=0)
    lengths = np.asarray(s.mask).sum(-1)
    exact = float(tab.expected_length(params, eos=1, length=6))
    assert abs(lengths.mean() - exact) < 4 * lengths.std() / np.sqrt(n)
    hit = float(tab.expectation(params, tab.contains(4, 3), jnp.asarray([[0.0], [1.0]]), eos=1, length=6))
    mc = np.mean(np.any((np.asarray(s.tokens) == 3) & (np.asarray(s.mask) > 0), -1))
    assert abs(mc - hit) < 4 * np.sqrt(hit * (1 - hit) / n)
    tree = P.tree_init(jax.random.key(1), vocab=3, max_len=4, scale=1.0)
    s = P.tree_sample(tree, jax.random.key(2), (n,), max_len=4, eos_id=0)
    lengths = np.asarray(s.mask).sum(-1)
    exact = float(prefix.tree_expectation(tree, lambda q, m: m.sum(-1), eos=0, length=4))
    assert abs(lengths.mean() - exact) < 4 * lengths.std() / np.sqrt(n)
    toks, mask = np.asarray(s.tokens), np.asarray(s.mask)
    ended = (toks == 0) & (mask > 0)  # the EOS is in the completion, padding (mask 0) only after it
    assert np.all(np.cumsum(ended, -1)[mask == 0] >= 1)


def test_documented_jit_pattern_compiles_once():
    # decompose takes a spec and a function: close over both, pass params, batch and prompt as arrays
    params = {"logits": jnp.asarray(np.random.default_rng(3).normal(size=(7, 13, 12)), jnp.float32)}
    spec = methods.get("grpo", beta=0.0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, batch, prompt):
        dec = prefix.decompose(spec, P.tabular_logprob, params, batch, prompt=prompt)
        gap = jax.tree.map(lambda t, s, d: t - s - d, dec.total, dec.shared, dec.divergent)
        return prefix.tree_norm(gap), prefix.tree_norm(dec.shared), prefix.tree_norm(dec.total)

    logp = np.asarray(P.tabular_logprob(params, TOKENS))
    for seed in (0, 1):  # other values, the same shapes: one trace (chex.assert_max_traces would raise)
        rewards = np.random.default_rng(seed).integers(0, 2, size=(2, 4)).astype(np.float32)
        rewards[:, 0], rewards[:, 1] = 1.0, 0.0
        batch = jgrpo.GroupBatch(mask=MASK, logp_old=logp * MASK, rewards=rewards, tokens=TOKENS)
        gap, shared, total = run(params, batch, jnp.asarray(PROMPT))
        assert float(gap) <= 1e-5 * float(total) and float(shared) > 0
