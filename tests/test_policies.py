"""Tests for jgrpo.policies: the tabular policy (closed forms) and the NNX transformer (causality)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jgrpo import policies as P

V, TMAX = 5, 6


# ----------------------------------------------------------------------------- tabular


def _np_tabular(table: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: explicit loops over every completion and position."""
    table = np.asarray(table, np.float64)
    vocab = table.shape[-1]
    flat = tokens.reshape(-1, tokens.shape[-1])
    logp = np.zeros(flat.shape)
    ent = np.zeros(flat.shape)
    for i, row in enumerate(flat):
        prev = vocab
        for t, y in enumerate(row):
            z = table[t, prev]
            pr = np.exp(z - z.max())
            pr /= pr.sum()
            logp[i, t] = np.log(pr[y])
            ent[i, t] = -(pr * np.log(pr)).sum()
            prev = y
    return logp.reshape(tokens.shape), ent.reshape(tokens.shape)


@pytest.fixture(scope="module")
def tab():
    params = P.tabular_init(jax.random.key(0), vocab=V, max_len=TMAX, scale=1.5)
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 3, 4), 0, V), np.int32)
    return params, tokens


def test_tabular_matches_numpy_reference(tab):
    params, tokens = tab
    assert params["logits"].shape == (TMAX, V + 1, V)
    logp, ent = P.tabular_logprob_and_entropy(params, tokens)
    ref_logp, ref_ent = _np_tabular(np.asarray(params["logits"]), tokens)
    assert logp.shape == ent.shape == tokens.shape and logp.dtype == jnp.float32
    np.testing.assert_allclose(logp, ref_logp, atol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-5)
    np.testing.assert_array_equal(P.tabular_logprob(params, tokens, prompt=np.zeros((2, 3), np.int32)), logp)


def test_tabular_hand_case_uniform(tab):
    _, tokens = tab
    params = P.tabular_init(jax.random.key(0), vocab=V, max_len=TMAX, scale=0.0)  # uniform: pi = 1/V
    logp, ent = P.tabular_logprob_and_entropy(params, tokens)
    np.testing.assert_allclose(logp, np.full(tokens.shape, -np.log(V)), rtol=1e-6)
    np.testing.assert_allclose(ent, np.full(tokens.shape, np.log(V)), rtol=1e-6)


def test_tabular_grad_closed_form_matches_autodiff(tab):
    params, tokens = tab
    jac = jax.jit(jax.jacrev(lambda p: P.tabular_logprob(p, tokens)))(params)
    dense = P.tabular_grad_logp(params, tokens, dense=True)
    assert dense["logits"].shape == jac["logits"].shape == tokens.shape + (TMAX, V + 1, V)
    np.testing.assert_allclose(dense["logits"], jac["logits"], atol=1e-6)
    # Row form: onehot(y_t) - pi at the (t, y_{t-1}) cell.
    row = P.tabular_grad_logp(params, tokens)
    b, g, t = 1, 2, 3
    prev = tokens[b, g, t - 1]
    pi = jax.nn.softmax(params["logits"][t, prev])
    np.testing.assert_allclose(row[b, g, t], np.eye(V)[tokens[b, g, t]] - pi, atol=1e-6)
    np.testing.assert_allclose(jac["logits"][b, g, t, t, prev], row[b, g, t], atol=1e-6)


def test_tabular_cores_agree_in_values_and_gradients(tab):
    # the per-cell log-sum-exp core (what tabular_logprob runs) against the dense log-softmax and the per-token
    # gather formulations it replaced, and against the float64 loops; gradients of logp and entropy alike
    params, tokens = tab
    table, tok = params["logits"], jnp.asarray(tokens)
    ref_logp, ref_ent = _np_tabular(np.asarray(table), tokens)
    w = np.random.default_rng(3).normal(size=tokens.shape).astype(np.float32)
    cores = (P._tabular_core, P._tabular_core_dense, P._tabular_core_gather)
    grads = []
    for core in cores:
        logp, ent = core(table, tok)
        np.testing.assert_allclose(logp, ref_logp, atol=2e-6)
        np.testing.assert_allclose(ent, ref_ent, atol=2e-6)
        grads.append(jax.grad(lambda x, core=core: jnp.sum(w * core(x, tok)[0]) + jnp.sum(w * core(x, tok)[1]))(table))
    for g in grads[1:]:
        np.testing.assert_allclose(grads[0], g, atol=1e-6)
    assert float(jnp.max(jnp.abs(grads[0]))) > 0.1


def test_tabular_policy_wrapper_and_logits_fn(tab):
    params, tokens = tab
    pol = P.TabularPolicy(vocab=V, max_len=TMAX)
    np.testing.assert_array_equal(pol.logprob(params, tokens), P.tabular_logprob(params, tokens))
    with pytest.raises(ValueError, match="params"):
        P.TabularPolicy(vocab=V + 1, max_len=TMAX).logprob(params, tokens)
    # logits_fn over prompt + completion reproduces the same log-probabilities.
    p_len = 2
    ids = np.concatenate([np.zeros((6, p_len), np.int32), tokens.reshape(6, 4)], axis=1)
    logits = pol.logits_fn(p_len)(params, jnp.asarray(ids))[:, p_len - 1 : -1]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, p_len:, None], -1)[..., 0]
    np.testing.assert_allclose(logp.reshape(tokens.shape), P.tabular_logprob(params, tokens), atol=1e-6)
    assert P.tabular_logits_fn(p_len) is P.tabular_logits_fn(p_len)


def test_tabular_errors(tab):
    params, tokens = tab
    with pytest.raises(ValueError, match="max_len"):
        P.tabular_logprob(params, np.zeros((2, TMAX + 1), np.int32))
    with pytest.raises(ValueError, match=r"tokens must hold token ids in \[0, 5\)"):
        P.tabular_logprob(params, np.array([[0, 5]]))
    with pytest.raises(TypeError, match="tokens"):
        P.tabular_logprob(params, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="tokens"):
        P.tabular_logprob(params, np.int32(1))
    with pytest.raises(ValueError, match="vocab"):
        P.tabular_init(jax.random.key(0), vocab=0, max_len=3)
    with pytest.raises(ValueError, match="max_len"):
        P.TabularPolicy(vocab=3, max_len=0)


# ----------------------------------------------------------------------------- transformer


CFG = P.TransformerConfig.tiny(vocab=11, max_len=12)


@pytest.fixture(scope="module")
def tf():
    graphdef, params = P.make_transformer(jax.random.key(0), CFG)
    return graphdef, params


def test_config_validation():
    assert hash(CFG) == hash(P.TransformerConfig.tiny(vocab=11, max_len=12))
    assert P.TransformerConfig(vocab=4, dtype=jnp.bfloat16).dtype == "bfloat16"
    with pytest.raises(ValueError, match="n_heads"):
        P.TransformerConfig(vocab=4, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="TransformerConfig.vocab"):
        P.TransformerConfig(vocab=0)
    with pytest.raises(ValueError, match="TransformerConfig.dtype"):
        P.TransformerConfig(vocab=4, dtype="int32")
    with pytest.raises(TypeError):
        P.TransformerConfig(4)  # keyword-only


def test_transformer_logprob_matches_direct_model(tf):
    graphdef, params = tf
    prompt = jax.random.randint(jax.random.key(1), (2, 3), 0, CFG.vocab)
    tokens = jax.random.randint(jax.random.key(2), (2, 4, 5), 0, CFG.vocab)
    logp, ent = P.nnx_logprob_and_entropy_fn(graphdef)(params, tokens, prompt)
    assert logp.shape == ent.shape == (2, 4, 5) and logp.dtype == ent.dtype == jnp.float32
    np.testing.assert_array_equal(P.nnx_logprob_fn(graphdef)(params, tokens, prompt), logp)
    # Independent computation: one sequence at a time, straight through the module.
    b, g = 1, 2
    seq = jnp.concatenate([prompt[b], tokens[b, g]])[None]
    z = np.asarray(jax.jit(lambda p, s: nnx.merge(graphdef, p)(s))(params, seq)[0], np.float64)
    lv = z - z.max(-1, keepdims=True)
    lv = lv - np.log(np.exp(lv).sum(-1, keepdims=True))
    for t in range(5):
        np.testing.assert_allclose(logp[b, g, t], lv[3 + t - 1, tokens[b, g, t]], atol=1e-5)
        pr = np.exp(lv[3 + t - 1])
        np.testing.assert_allclose(ent[b, g, t], -(pr * np.log(pr)).sum(), atol=1e-5)
    assert P.nnx_logprob_fn(graphdef) is P.nnx_logprob_fn(graphdef)


def test_transformer_causality_gradient_is_exactly_zero(tf):
    """nanodo's test: d logits[:, t] / d embeddings[:, s] == 0 exactly for s > t."""
    graphdef, params = tf
    ids = jax.random.randint(jax.random.key(3), (1, 8), 0, CFG.vocab)

    @jax.jit
    def jac(params):
        model = nnx.merge(graphdef, params)
        x = model.embed(ids)
        logp_fn = lambda x: jnp.take_along_axis(jax.nn.log_softmax(model.decode(x)[0, :-1]), ids[0, 1:, None], -1)
        return jax.jacrev(lambda x: logp_fn(x)[:, 0])(x)[:, 0]  # [L-1 outputs t, L inputs s, D]

    grad = np.asarray(jac(params))
    for t in range(7):
        assert np.all(grad[t, t + 1 :] == 0.0), t
        assert np.all(np.any(grad[t, : t + 1] != 0.0, axis=-1)), t


def test_transformer_later_tokens_do_not_change_earlier_logp(tf):
    graphdef, params = tf
    fn = P.nnx_logprob_fn(graphdef)
    prompt = jax.random.randint(jax.random.key(1), (2, 3), 0, CFG.vocab)
    tokens = jax.random.randint(jax.random.key(4), (2, 4, 5), 0, CFG.vocab)
    changed = tokens.at[1, 2, 3].set((tokens[1, 2, 3] + 1) % CFG.vocab)
    a, b = np.array(fn(params, tokens, prompt)), np.array(fn(params, changed, prompt))
    np.testing.assert_array_equal(a[1, 2, :3], b[1, 2, :3])
    assert a[1, 2, 3] != b[1, 2, 3]  # a different token
    assert a[1, 2, 4] != b[1, 2, 4]  # a different context
    a[1, 2], b[1, 2] = 0, 0
    np.testing.assert_array_equal(a, b)  # other completions untouched
    # Unbatched leading dims: prompt [P], tokens [G, T] (shape only: no extra compile).
    assert jax.eval_shape(fn, params, tokens[0], prompt[0]).shape == (4, 5)


def test_transformer_shared_prefix_identical_logp(tf):
    graphdef, params = tf
    fn = P.nnx_logprob_fn(graphdef)
    prompt = jnp.array([[4, 2, 1], [7, 7, 1]])
    k = 3  # shared prefix length
    prefix = jnp.array([5, 1, 9])
    tails = jax.random.randint(jax.random.key(5), (2, 4, 2), 0, CFG.vocab)
    tokens = jnp.concatenate([jnp.broadcast_to(prefix, (2, 4, k)), tails], axis=-1)
    logp = fn(params, tokens, prompt)
    for b in range(2):
        np.testing.assert_allclose(logp[b, 1:, :k], np.broadcast_to(logp[b, 0, :k], (3, k)), atol=1e-6)
    # Different prompts -> different prefix log-probabilities (the prompt is used).
    assert not np.allclose(logp[0, 0, :k], logp[1, 0, :k])


def test_transformer_grad_and_bf16(tf):
    graphdef, params = tf
    fn = P.nnx_logprob_fn(graphdef)
    prompt, tokens = jnp.array([1, 2]), jnp.array([[3, 4, 5], [3, 6, 0]])
    grads = jax.jit(jax.grad(lambda p: fn(p, tokens, prompt).sum()))(params)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(params)) and all(np.all(np.isfinite(x)) for x in leaves)
    # bfloat16 params and compute, float32 log-probabilities (abstract evaluation: no compile).
    cfg16 = P.TransformerConfig.tiny(vocab=11, max_len=12, dtype="bfloat16", param_dtype="bfloat16")
    gd16, p16 = jax.eval_shape(lambda k: P.make_transformer(k, cfg16), jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
    logp16 = jax.eval_shape(P.nnx_logprob_fn(gd16), p16, tokens, prompt)
    assert logp16.shape == (2, 3) and logp16.dtype == jnp.float32


def _np_transformer_logits(params, ids, cfg):
    """Independent float64 NumPy forward of the pre-LN transformer (explicit causal softmax attention)."""
    d = jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(params))
    n, length = ids.shape
    h, dh = cfg.n_heads, cfg.d_model // cfg.n_heads

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]

    def gelu(x):  # jax.nn.gelu's default tanh approximation
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    x = d["tok_embed"]["embedding"][ids] + d["pos_embed"][:length]
    for k in range(cfg.n_layers):
        blk = d["blocks"][k]
        qkv = (ln(x, blk["ln1"]) @ blk["qkv"]["kernel"]).reshape(n, length, 3, h, dh)
        q, kk, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = np.zeros((n, length, h, dh))
        for t in range(length):  # position t attends to 0..t
            s = np.einsum("nhk,nshk->nhs", q[:, t], kk[:, : t + 1]) / np.sqrt(dh)
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            out[:, t] = np.einsum("nhs,nshk->nhk", a, v[:, : t + 1])
        x = x + out.reshape(n, length, -1) @ blk["proj"]["kernel"] + blk["proj"]["bias"]
        y = gelu(ln(x, blk["ln2"]) @ blk["fc1"]["kernel"] + blk["fc1"]["bias"])
        x = x + y @ blk["fc2"]["kernel"] + blk["fc2"]["bias"]
    return ln(x, d["ln_f"]) @ d["head"]["kernel"]


def test_transformer_matches_an_independent_float64_forward(tf):
    # the attention is jax.nn.dot_product_attention: the same numbers as softmax(q k^T / sqrt(K)) v, to rounding
    graphdef, params = tf
    ids = np.asarray(jax.random.randint(jax.random.key(6), (2, 9), 0, CFG.vocab))
    got = np.asarray(jax.jit(lambda p, i: nnx.merge(graphdef, p)(i))(params, ids), np.float64)
    ref = _np_transformer_logits(params, ids, CFG)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(ref).max() > 0.1  # not a trivially small output


def test_one_initialisation_path():
    # the constructor and make_transformer run the same initialisation: equal parameters for the same key
    cfg = P.TransformerConfig.tiny(vocab=7, max_len=8, n_layers=1)
    module = P.Transformer(cfg, rngs=nnx.Rngs(params=5))
    _, from_make = P.make_transformer(nnx.Rngs(params=5).params(), cfg)
    ours, theirs = jax.tree.leaves(nnx.state(module)), jax.tree.leaves(from_make)
    assert len(ours) == len(theirs) == 16
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    # the documented distributions: kernels N(0, 1/fan_in), embeddings N(0, 0.02^2), LayerNorm 1 / 0
    # (tolerances ~4.5 standard errors of a std estimated from n draws: 4.5/sqrt(2n))
    flat = nnx.to_pure_dict(from_make)
    assert np.std(flat["blocks"][0]["fc1"]["kernel"]) == pytest.approx(1 / np.sqrt(16), rel=0.15)  # n = 512
    assert np.std(flat["blocks"][0]["fc2"]["kernel"]) == pytest.approx(1 / np.sqrt(32), rel=0.15)  # n = 512
    assert np.std(flat["pos_embed"]) == pytest.approx(0.02, rel=0.3)  # n = 128
    np.testing.assert_array_equal(flat["ln_f"]["scale"], 1.0)
    np.testing.assert_array_equal(flat["blocks"][0]["proj"]["bias"], 0.0)


def test_transformer_errors(tf):
    graphdef, params = tf
    fn = P.nnx_logprob_fn(graphdef)
    good_p, good_t = np.zeros((2, 3), np.int32), np.zeros((2, 4, 5), np.int32)
    with pytest.raises(ValueError, match="prompt must have shape"):
        fn(params, good_t, np.zeros((3, 3), np.int32))
    with pytest.raises(ValueError, match="tokens must have shape"):
        fn(params, np.zeros((5,), np.int32), good_p[0])
    with pytest.raises(ValueError, match="max_len"):
        fn(params, np.zeros((2, 4, 10), np.int32), good_p)
    with pytest.raises(ValueError, match=r"tokens must hold token ids in \[0, 11\)"):
        fn(params, good_t + 11, good_p)
    with pytest.raises(ValueError, match="prompt must hold"):
        fn(params, good_t, good_p - 1)
    with pytest.raises(ValueError, match="P >= 1"):
        fn(params, good_t, np.zeros((2, 0), np.int32))
    with pytest.raises(TypeError, match="prompt"):
        fn(params, good_t, good_p.astype(np.float32))
