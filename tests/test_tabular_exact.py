"""analysis.tabular: exact terminal distribution against brute-force enumeration and against sampling."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from analysis import tabular as tab
from jgrpo.policies import tabular_init, tabular_logits_fn


def _brute_force(logits, transition, eos, length):
    """P[s, L] by enumerating every token sequence (float64 loops; independent of analysis.tabular)."""
    logits = np.asarray(logits, np.float64)
    vocab = logits.shape[-1]
    out = np.zeros((transition.shape[0], length + 1))

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    def walk(prefix, prob, state):
        t = len(prefix)
        ctx = vocab if t == 0 else prefix[-1]
        p = softmax(logits[t, ctx])
        for v in range(vocab):
            s2, q = transition[state, v], prob * p[v]
            if v == eos or t + 1 == length:
                out[s2, t + 1] += q
            else:
                walk(prefix + [v], q, s2)

    walk([], 1.0, 0)
    return out


@pytest.mark.parametrize("eos", [1, None])
def test_terminal_distribution_matches_enumeration(eos):
    vocab, length = 4, 4
    params = {"logits": jnp.asarray(tabular_init(jax.random.key(3), vocab=vocab, max_len=5, scale=1.5)["logits"])}
    params64 = {"logits": np.asarray(params["logits"], np.float64)}
    # a counter of token 2, capped at 3, plus "ended on token 3"
    trans = np.zeros((4, vocab), np.int32)
    for s in range(4):
        for v in range(vocab):
            trans[s, v] = min(s + 1, 3) if v == 2 else s
    with jax.enable_x64(True):
        p = np.asarray(
            tab.terminal_distribution(
                {"logits": jnp.asarray(params64["logits"])}, tab.automaton(trans), eos=eos, length=length
            )
        )
    ref = _brute_force(params64["logits"], trans, eos, length)
    np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-15)
    assert abs(p.sum() - 1) < 1e-12 and np.all(p[:, 0] == 0)


def test_expectations_and_gradient_match_enumeration():
    vocab, length, eos, target = 3, 4, 1, 2
    logits = np.asarray(tabular_init(jax.random.key(0), vocab=vocab, max_len=length, scale=1.0)["logits"], np.float64)
    auto = tab.contains(vocab, target)

    def hit(lg):
        return tab.expectation({"logits": lg}, auto, jnp.asarray([[0.0], [1.0]]), eos=eos, length=length)

    with jax.enable_x64(True):
        value = float(hit(jnp.asarray(logits)))
        grad = np.asarray(jax.grad(hit)(jnp.asarray(logits)))
        e_len = float(tab.expected_length({"logits": jnp.asarray(logits)}, eos=eos, length=length))
    ref = _brute_force(logits, np.asarray(auto.transition), eos, length)
    assert value == pytest.approx(ref[1].sum(), rel=1e-12)
    assert e_len == pytest.approx((ref.sum(0) * np.arange(length + 1)).sum(), rel=1e-12)
    # central differences of the enumeration
    h, fd = 1e-6, np.zeros_like(logits)
    for idx in itertools.product(*map(range, logits.shape)):
        up, dn = logits.copy(), logits.copy()
        up[idx] += h
        dn[idx] -= h
        fd[idx] = (
            _brute_force(up, np.asarray(auto.transition), eos, length)[1].sum()
            - _brute_force(dn, np.asarray(auto.transition), eos, length)[1].sum()
        ) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-8)


def test_matches_sampling_frequencies():
    vocab, length, eos, target = 5, 6, 1, 3
    params = tabular_init(jax.random.key(1), vocab=vocab, max_len=length, scale=1.0)
    n = 20000
    s = jgrpo.sample(
        tabular_logits_fn(1),
        params,
        jnp.zeros((1, 1), jnp.int32),
        jax.random.key(2),
        group_size=n,
        max_len=length,
        eos_id=eos,
    )
    lengths = np.asarray(s.mask).sum(-1).reshape(-1)
    hits = np.any((np.asarray(s.tokens) == target) & (np.asarray(s.mask) > 0), axis=-1).reshape(-1)
    p = np.asarray(tab.terminal_distribution(params, tab.contains(vocab, target), eos=eos, length=length))
    # 5 standard errors: a wrong recursion (e.g. EOS not ending a completion) is off by far more
    for est, exact in ((hits.mean(), p[1].sum()), (np.mean(lengths == length), p[:, length].sum())):
        assert abs(est - exact) < 5 * np.sqrt(exact * (1 - exact) / n) + 1e-9
    e_len = float(tab.expected_length(params, eos=eos, length=length))
    assert abs(lengths.mean() - e_len) < 5 * lengths.std() / np.sqrt(n)


def test_bad_input():
    params = tabular_init(jax.random.key(0), vocab=4, max_len=3)
    with pytest.raises(ValueError, match="length must be"):
        tab.terminal_distribution(params, tab.contains(4, 2), eos=1, length=5)
    with pytest.raises(ValueError, match="reads V = 3"):
        tab.terminal_distribution(params, tab.contains(3, 2), eos=1, length=3)
    with pytest.raises(ValueError, match="states must lie"):
        tab.automaton(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="eos must be"):
        tab.terminal_distribution(params, tab.contains(4, 2), eos=7, length=3)
