"""Tests for jgrpo.sampling: shapes, EOS/mask semantics, determinism, and log-probs that match the policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrpo import policies as P
from jgrpo.batch import check_inputs
from jgrpo.sampling import Samples, _sample, sample

CFG = P.TransformerConfig.tiny(vocab=11, max_len=12)  # as in test_policies: shared compiles
B, G, T, PL = 2, 4, 5, 3
EOS, PAD = 1, 0
TV, TT = 5, 5  # tabular vocab and length (shared by the tabular tests: one compile)


@pytest.fixture(scope="module")
def tf():
    graphdef, params = P.make_transformer(jax.random.key(0), CFG)
    prompt = jax.random.randint(jax.random.key(1), (B, PL), 2, CFG.vocab)
    return graphdef, params, prompt


@pytest.fixture(scope="module")
def tf_samples(tf):
    graphdef, params, prompt = tf
    kw = dict(group_size=G, max_len=T, eos_id=EOS, pad_id=PAD)
    fn = P.nnx_logits_fn(graphdef)
    s1 = sample(fn, params, prompt, jax.random.key(2), temperature=1.0, **kw)
    s2 = sample(fn, params, prompt, jax.random.key(2), temperature=1.0, **kw)
    s3 = sample(fn, params, prompt, jax.random.key(3), temperature=1.0, **kw)
    s_cold = sample(fn, params, prompt, jax.random.key(2), temperature=0.7, **kw)
    return s1, s2, s3, s_cold


def _np_mask(tokens: np.ndarray, eos: int) -> np.ndarray:
    """Reference: 1 up to and including the first EOS, 0 after."""
    mask = np.zeros(tokens.shape, np.float32)
    for idx in np.ndindex(tokens.shape[:-1]):
        for t, y in enumerate(tokens[idx]):
            mask[idx + (t,)] = 1.0
            if y == eos:
                break
    return mask


def test_shapes_dtypes_and_determinism(tf, tf_samples):
    graphdef, params, prompt = tf
    s1, s2, s3, _ = tf_samples
    assert isinstance(s1, Samples)
    for x in s1:
        assert x.shape == (B, G, T)
    assert s1.tokens.dtype == jnp.int32
    assert s1.mask.dtype == s1.logp_old.dtype == s1.logp_sample.dtype == s1.entropy.dtype == jnp.float32
    for a, b in zip(s1, s2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(s1.tokens, s3.tokens)
    # One compile serves every temperature (traced) and key; nnx_logits_fn is cached per graphdef.
    n = _sample._cache_size()
    fn = P.nnx_logits_fn(graphdef)
    sample(fn, params, prompt, jax.random.key(9), group_size=G, max_len=T, temperature=0.3, eos_id=EOS, pad_id=PAD)
    assert _sample._cache_size() == n


def test_mask_semantics_and_padding(tf_samples):
    for s in tf_samples:
        tokens, mask = np.asarray(s.tokens), np.asarray(s.mask)
        np.testing.assert_array_equal(mask, _np_mask(tokens, EOS))
        assert np.all(tokens[mask == 0] == PAD)
        for x in (s.logp_old, s.logp_sample, s.entropy):
            assert np.all(np.asarray(x)[mask == 0] == 0.0)


def test_logp_matches_nnx_logprob_fn(tf, tf_samples):
    graphdef, params, prompt = tf
    s1, _, _, s_cold = tf_samples
    for s in (s1, s_cold):
        logp, ent = P.nnx_logprob_and_entropy_fn(graphdef)(params, s.tokens, prompt)
        m = np.asarray(s.mask)
        np.testing.assert_allclose(np.asarray(s.logp_old), np.asarray(logp) * m, atol=1e-5)
        np.testing.assert_allclose(np.asarray(s.entropy), np.asarray(ent) * m, atol=1e-5)
    # At temperature 1 the sampling distribution is the policy.
    np.testing.assert_allclose(s1.logp_sample, s1.logp_old, atol=1e-6)
    # Samples -> GroupBatch passes the loss's input checks.
    batch = s1.to_batch(jnp.arange(B * G, dtype=jnp.float32).reshape(B, G))
    check_inputs(logp, batch, need_tokens=True, need_entropy=True)
    assert batch.tokens is s1.tokens and batch.logp_old is s1.logp_old


def test_forced_eos_with_tabular_policy():
    """A tabular policy that emits EOS with certainty at t = 2: mask [1, 1, 1, 0, 0], pad after."""
    params = P.tabular_init(jax.random.key(0), vocab=TV, max_len=TT)
    params = {"logits": params["logits"].at[:2, :, EOS].set(-1e4).at[2, :, EOS].set(1e4)}
    prompt = jnp.zeros((B, 1), jnp.int32)
    s = sample(
        P.tabular_logits_fn(1), params, prompt, jax.random.key(1), group_size=G, max_len=TT, eos_id=EOS, pad_id=PAD
    )
    mask = np.asarray(s.mask)
    tokens = np.asarray(s.tokens)
    assert np.all(tokens[..., 2] == EOS)
    np.testing.assert_array_equal(mask, _np_mask(tokens, EOS))
    assert np.all(mask[..., 3:] == 0) and np.all(tokens[..., 3:] == PAD)
    np.testing.assert_allclose(s.logp_old, np.asarray(P.tabular_logprob(params, s.tokens)) * mask, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.logp_old)[..., 2], 0.0, atol=1e-6)  # log 1
    # Without an EOS id the sampler still traces (abstract evaluation only: no extra compile).
    out = jax.eval_shape(
        lambda p, x, k: sample(P.tabular_logits_fn(1), p, x, k, group_size=G, max_len=TT),
        params,
        prompt,
        jax.random.key(1),
    )
    assert out.mask.shape == (B, G, TT)


def test_logp_sample_at_temperature():
    """logp_sample = log softmax(logits / tau)[y_t]; float64 NumPy reference from the table."""
    params = P.tabular_init(jax.random.key(7), vocab=TV, max_len=TT, scale=1.5)
    prompt = jnp.zeros((B, 1), jnp.int32)
    tau = 0.7
    s = sample(
        P.tabular_logits_fn(1), params, prompt, jax.random.key(8), group_size=G, max_len=TT, temperature=tau, eos_id=EOS
    )
    table, tokens, mask = (np.asarray(x, np.float64) for x in (params["logits"], s.tokens, s.mask))
    ref = np.zeros(tokens.shape)
    for idx in np.ndindex(tokens.shape[:-1]):
        prev = TV
        for t in range(TT):
            z = table[t, prev] / tau
            z = z - z.max()
            y = int(tokens[idx + (t,)])
            ref[idx + (t,)] = (z[y] - np.log(np.exp(z).sum())) * mask[idx + (t,)]
            prev = y
    np.testing.assert_allclose(s.logp_sample, ref, atol=1e-5)
    np.testing.assert_allclose(s.logp_old, np.asarray(P.tabular_logprob(params, s.tokens)) * mask, atol=1e-5)


def test_low_temperature_is_argmax():
    params = P.tabular_init(jax.random.key(5), vocab=TV, max_len=TT, scale=2.0)
    params = {"logits": params["logits"].at[..., EOS].set(-1e4)}  # never ends: the whole greedy path is kept
    prompt = jnp.zeros((B, 1), jnp.int32)
    fn = P.tabular_logits_fn(1)
    for temperature in (1e-4, 0.0):
        s = sample(fn, params, prompt, jax.random.key(6), group_size=G, max_len=TT, temperature=temperature, eos_id=EOS)
        tokens = np.asarray(s.tokens)
        table = np.asarray(params["logits"])
        prev = TV
        for t in range(TT):  # greedy path is the same for every completion
            y = int(np.argmax(table[t, prev]))
            assert np.all(tokens[..., t] == y), (temperature, t)
            prev = y
        np.testing.assert_allclose(s.logp_old, P.tabular_logprob(params, s.tokens), atol=1e-5)
        np.testing.assert_array_equal(s.mask, 1.0)  # EOS never drawn: every token is a completion token
    np.testing.assert_array_equal(s.logp_sample, 0.0)  # greedy: a point mass, reported as 0


def test_errors(tf):
    graphdef, params, prompt = tf
    fn = P.nnx_logits_fn(graphdef)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="group_size"):
        sample(fn, params, prompt, key, group_size=0, max_len=T)
    with pytest.raises(ValueError, match="max_len"):
        sample(fn, params, prompt, key, group_size=G, max_len=0)
    with pytest.raises(ValueError, match="prompt must have shape"):
        sample(fn, params, prompt[0], key, group_size=G, max_len=T)
    with pytest.raises(ValueError, match="temperature"):
        sample(fn, params, prompt, key, group_size=G, max_len=T, temperature=-1.0)
    with pytest.raises(ValueError, match=r"prompt must hold token ids in \[0, 11\)"):
        sample(fn, params, prompt + CFG.vocab, key, group_size=G, max_len=T)
    with pytest.raises(ValueError, match="eos_id"):
        sample(fn, params, prompt, key, group_size=G, max_len=T, eos_id=CFG.vocab)
    with pytest.raises(TypeError, match="prompt"):
        sample(fn, params, prompt.astype(jnp.float32), key, group_size=G, max_len=T)


# ----------------------------------------------------------------------------- KV-cache decoders and top-p

import jgrpo.models as M  # noqa: E402
from tests.model_utils import random_params  # noqa: E402

HF_CFG = M.ModelConfig.tiny("qwen3", vocab_size=24, hidden_size=32, intermediate_size=64, head_dim=8)
HB, HG, HT, HP = 2, 3, 6, 5
HEOS = 3


@pytest.fixture(scope="module")
def hf_model():
    params = random_params(HF_CFG, 0)
    prompt = np.array(jax.random.randint(jax.random.key(1), (HB, HP), 4, HF_CFG.vocab_size), np.int32)
    prompt_mask = np.ones((HB, HP), np.int32)
    prompt_mask[1, :2] = 0  # the second prompt is 3 tokens, left-padded
    prompt[1, :2] = 0
    return params, prompt, prompt_mask


def test_cached_sampler_logp_equals_the_scorer(hf_model):
    """pi_old and entropies of the KV-cache sampler equal the full-sequence scorer's to 1e-5 (float32)."""
    params, prompt, prompt_mask = hf_model
    dec = M.decoder(M.model_fn(HF_CFG))
    s = sample(dec, params, prompt, jax.random.key(2), group_size=HG, max_len=HT, eos_id=HEOS, prompt_mask=prompt_mask)
    assert s.tokens.shape == (HB, HG, HT)
    logp, ent = M.logprob_and_entropy_fn(M.model_fn(HF_CFG))(params, s.tokens, prompt, prompt_mask)
    m = np.asarray(s.mask)
    np.testing.assert_allclose(np.asarray(s.logp_old), np.asarray(logp) * m, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.entropy), np.asarray(ent) * m, atol=1e-5)
    np.testing.assert_array_equal(m, _np_mask(np.asarray(s.tokens), HEOS))
    assert len({tuple(r) for r in np.asarray(s.tokens).reshape(-1, HT)}) > 1  # G completions differ


def test_cached_and_uncached_samplers_draw_the_same_tokens(hf_model):
    """Same key, same logits up to rounding: the KV-cache path reproduces the recompute-everything path."""
    params, prompt, _ = hf_model
    fn = M.model_fn(HF_CFG)
    kw = dict(group_size=HG, max_len=HT, eos_id=HEOS, temperature=0.8)
    a = sample(M.decoder(fn), params, prompt, jax.random.key(3), **kw)
    b = sample(fn, params, prompt, jax.random.key(3), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logp_sample, b.logp_sample, atol=1e-5)
    np.testing.assert_allclose(a.logp_old, b.logp_old, atol=1e-5)


def test_nnx_decoder_matches_the_recomputing_sampler(tf, tf_samples):
    """The tiny NNX transformer through its KV-cache decoder: same tokens, log-probs equal to the scorer's."""
    graphdef, params, prompt = tf
    s1 = tf_samples[0]
    s = sample(M.nnx_decoder(graphdef), params, prompt, jax.random.key(2), group_size=G, max_len=T, eos_id=EOS)
    np.testing.assert_array_equal(s.tokens, s1.tokens)
    logp, ent = P.nnx_logprob_and_entropy_fn(graphdef)(params, s.tokens, prompt)
    m = np.asarray(s.mask)
    np.testing.assert_allclose(np.asarray(s.logp_old), np.asarray(logp) * m, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.entropy), np.asarray(ent) * m, atol=1e-5)


def test_tabular_decoder_matches_tabular_logits_fn():
    params = P.tabular_init(jax.random.key(4), vocab=TV, max_len=TT, scale=1.5)
    prompt = jnp.zeros((B, 1), jnp.int32)
    kw = dict(group_size=G, max_len=TT, eos_id=EOS, temperature=0.9, top_p=0.8)
    a = sample(M.tabular_decoder(), params, prompt, jax.random.key(5), **kw)
    b = sample(P.tabular_logits_fn(1), params, prompt, jax.random.key(5), **kw)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_top_p_nucleus_against_numpy_reference():
    """Drawn tokens lie in the top-p nucleus of softmax(logits / tau); logp_sample is their renormalised log-prob."""
    params = P.tabular_init(jax.random.key(7), vocab=TV, max_len=TT, scale=1.5)
    prompt = jnp.zeros((B, 1), jnp.int32)
    tau, top_p = 0.9, 0.6
    kw = dict(group_size=G, max_len=TT, eos_id=EOS)  # the static arguments of the test above: one compile
    s = sample(M.tabular_decoder(), params, prompt, jax.random.key(8), temperature=tau, top_p=top_p, **kw)
    table = np.asarray(params["logits"], np.float64)
    tokens, mask = np.asarray(s.tokens), np.asarray(s.mask)
    checked = 0
    for idx in np.ndindex(tokens.shape[:-1]):
        prev = TV
        for t in range(TT):
            if not mask[idx + (t,)]:
                break
            z = table[t, prev] / tau
            p = np.exp(z - z.max())
            p /= p.sum()
            order = np.argsort(-p)
            before = np.cumsum(p[order]) - p[order]
            nucleus = order[before < top_p]
            y = int(tokens[idx + (t,)])
            assert y in nucleus, (idx, t)
            assert abs(float(s.logp_sample[idx + (t,)]) - np.log(p[y] / p[nucleus].sum())) < 1e-5, (idx, t)
            checked += int(len(nucleus) < TV)  # a truncated nucleus was exercised
            prev = y
    assert checked > 5
    # A nucleus narrower than the top token is greedy decoding with log-prob 0 (a point mass).
    tiny = sample(M.tabular_decoder(), params, prompt, jax.random.key(8), top_p=1e-6, **kw)
    greedy = sample(M.tabular_decoder(), params, prompt, jax.random.key(8), temperature=0.0, **kw)
    np.testing.assert_array_equal(tiny.tokens, greedy.tokens)
    np.testing.assert_allclose(tiny.logp_sample, 0.0, atol=1e-6)


def test_decoder_and_top_p_errors(hf_model):
    params, prompt, prompt_mask = hf_model
    dec = M.decoder(M.model_fn(HF_CFG))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sample(dec, params, prompt, key, group_size=2, max_len=2, top_p=0.0)
    with pytest.raises(ValueError, match="prompt_mask needs a decoder"):
        sample(M.model_fn(HF_CFG), params, prompt, key, group_size=2, max_len=2, prompt_mask=prompt_mask)
    with pytest.raises(ValueError, match="prompt_mask must have the prompt's shape"):
        sample(dec, params, prompt, key, group_size=2, max_len=2, prompt_mask=prompt_mask[:, 1:])
    with pytest.raises(ValueError, match="1 at each prompt's last position"):
        sample(dec, params, prompt, key, group_size=2, max_len=2, prompt_mask=prompt_mask[:, ::-1])
    with pytest.raises(ValueError, match=r"prompt must hold token ids in \[0, 24\)"):
        sample(dec, params, prompt + 30, key, group_size=2, max_len=2)
