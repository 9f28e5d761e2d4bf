"""Shared-prompt compute (jgrpo.models.logprob_fn(share_prompt=True), the default): the prompt runs once per group.

Criterion (written before the runs): through the shared path and the G-copies path, the
log-probs, entropies, the GRPO loss (−J of Eq. 1) and its gradient w.r.t. every parameter agree
to 1e-5 relative to the largest magnitude of the reference (float32), on Qwen2, Qwen3 and Llama
tiny configs, with left-padded prompts of unequal lengths and right-padded completions. Falsified
by any larger difference. A control shows the comparison can fail: a shared path that is fed the
wrong prompt mask (a position offset) differs far beyond the tolerance. XLA's FLOP count of the
default path must be below the G-copies path's (the default really is the shared path), and the
train step (jgrpo.train.make_train_step) with the default logprob_fn gives the same update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jgrpo
import jgrpo.models as M
from jgrpo import train as jtrain
from tests.model_utils import random_params

B, G, T, P = 2, 3, 6, 5
TOL = 1e-5


def _inputs(config: M.ModelConfig, seed: int = 0, *, b: int = B, g: int = G, t: int = T, p: int = P):
    rng = np.random.default_rng(seed)
    v = config.vocab_size
    tokens = rng.integers(0, v, size=(b, g, t)).astype(np.int32)
    prompt = rng.integers(0, v, size=(b, p)).astype(np.int32)
    prompt_mask = np.ones((b, p), np.int32)
    prompt_mask[0, : min(2, p - 1)] = 0  # left padding: prompts of unequal lengths
    if b > 1 and p > 2:
        prompt_mask[1, :1] = 0
    lengths = rng.integers(1, t + 1, size=(b, g))
    lengths[0, 0] = t
    mask = (np.arange(t) < lengths[..., None]).astype(np.float32)  # right-padded completions
    rewards = rng.integers(0, 2, size=(b, g)).astype(np.float32)
    rewards[:, 0], rewards[:, -1] = 1.0, 0.0
    return tokens, prompt, prompt_mask, mask, rewards


def _rel(a, b) -> float:
    """max |a - b| / max |b| over a pytree."""
    num = max(
        float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - y)))
        for x, y in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    )
    den = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))
    return num / max(den, 1e-30)


def _both_paths(config, params, tokens, prompt, prompt_mask, mask, rewards, spec_name="grpo"):
    """One jitted program: (loss, logp, entropy, grads) through the shared and the G-copies path, and the shared
    path's logp with the prompt mask replaced by ones (the control)."""
    spec = jgrpo.methods.get(spec_name, beta=0.0)
    fn = M.model_fn(config)
    shared = M.logprob_and_entropy_fn(fn, share_prompt=True)
    copies = M.logprob_and_entropy_fn(fn, share_prompt=False)
    noise = 0.3 * np.random.default_rng(1).standard_normal(tokens.shape).astype(np.float32)

    @jax.jit
    def run(params):
        # logp_old: the reference path's log-probs moved by a fixed perturbation (ratios away from 1, some clip)
        logp0 = jax.lax.stop_gradient(copies(params, tokens, prompt, prompt_mask)[0])
        batch = jgrpo.GroupBatch(mask=mask, logp_old=jnp.minimum(logp0 + noise, 0.0), rewards=rewards, tokens=tokens)

        def objective(p, f):
            logp, ent = f(p, tokens, M.Prompt(prompt, prompt_mask))
            return jgrpo.loss(spec, logp, batch)[0], (logp, ent)

        out = [jax.value_and_grad(objective, has_aux=True)(params, f) for f in (shared, copies)]
        wrong = shared(params, tokens, prompt, jnp.ones_like(prompt_mask))[0]
        return [(v, lp, en, g) for (v, (lp, en)), g in out], wrong

    return run(params)


def _compare(config, seed=0, **sizes):
    params = random_params(config, seed)
    args = _inputs(config, seed, **sizes)
    ((va, la, ea, ga), (vb, lb, eb, gb)), wrong = _both_paths(config, params, *args)
    errs = {
        "loss": abs(float(va) - float(vb)) / max(abs(float(vb)), 1.0),
        "logp": _rel(la, lb),
        "entropy": _rel(ea, eb),
        "grad": _rel(ga, gb),
    }
    return errs, gb, _rel(wrong, lb)


def test_shared_prompt_equals_g_copies_qwen2():
    """Loss value and gradient through both paths agree to 1e-5 (the make-test case: Qwen2, GQA, q/k/v biases).

    Control: the shared path fed an unpadded mask (completion positions shifted by the padding, padding
    attended) differs far beyond the tolerance, so this comparison can fail."""
    config = M.ModelConfig.tiny("qwen2")
    errs, gb, control = _compare(config)
    assert all(e <= TOL for e in errs.values()), errs
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(gb)) > 1e-3  # a gradient that can differ
    assert control > 100 * TOL, control


def test_default_is_the_shared_path():
    """The default logprob_fn (what make_train_step, decompose and the device check get) is the shared path: its
    HLO counts fewer FLOPs than the G-copies path's (lowered, not compiled), by about G (P + T) / (P + G T)."""
    config = M.ModelConfig.tiny("qwen2")
    params = random_params(config, 5)
    tokens, prompt, prompt_mask, _, _ = _inputs(config, 5, g=4, t=4, p=16)
    fn = M.model_fn(config)

    def flops(f):
        ca = jax.jit(f).lower(params, tokens, prompt, prompt_mask).cost_analysis()
        return float((ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"])

    default, copies = flops(M.logprob_fn(fn)), flops(M.logprob_fn(fn, share_prompt=False))
    assert default == flops(M.logprob_fn(fn, share_prompt=True))
    assert default < 0.6 * copies, (default, copies)  # theory: (16 + 4 * 4) / (4 * (16 + 4)) = 0.4 of the tokens


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_shared_prompt_equals_g_copies_other_families(model_type):
    errs, _, _ = _compare(M.ModelConfig.tiny(model_type), seed=2)
    assert all(e <= TOL for e in errs.values()), errs


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, sizes",
    [
        ({"remat": True, "tie_embeddings": True}, {}),
        ({}, {"t": 1}),  # one completion token: predicted by the prompt's last position alone
        ({}, {"g": 2, "p": 1}),  # a one-token prompt
    ],
)
def test_shared_prompt_edge_cases(overrides, sizes):
    errs, _, _ = _compare(M.ModelConfig.tiny("qwen2", **overrides), seed=3, **sizes)
    assert all(e <= TOL for e in errs.values()), errs


@pytest.mark.slow
def test_shared_prompt_with_extra_leading_dims():
    """tokens [A, B, G, T] and prompt [A, B, P]: the leading dims flatten into groups."""
    config = M.ModelConfig.tiny("llama")
    params = random_params(config, 4)
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 128, size=(2, 2, 3, 4)).astype(np.int32)
    prompt = rng.integers(0, 128, size=(2, 2, 3)).astype(np.int32)
    pm = np.ones((2, 2, 3), np.int32)
    pm[1, 0, 0] = 0
    a = M.logprob_fn(M.model_fn(config))(params, tokens, prompt, pm)
    b = M.logprob_fn(M.model_fn(config), share_prompt=False)(params, tokens, prompt, pm)
    assert a.shape == (2, 2, 3, 4) and _rel(a, b) <= TOL


@pytest.mark.slow
def test_train_step_through_the_default_path():
    """jgrpo.train.make_train_step with the default logprob_fn (shared) gives the G-copies step's loss, gradient
    norm and parameter update (SGD) to 1e-5."""
    config = M.ModelConfig.tiny("qwen2")
    params = random_params(config, 5)
    tokens, prompt, prompt_mask, mask, rewards = _inputs(config, 5, g=4, p=8)
    default = M.logprob_fn(M.model_fn(config))
    copies = M.logprob_fn(M.model_fn(config), share_prompt=False)
    spec = jgrpo.methods.get("grpo", beta=0.0)
    logp0 = np.asarray(jax.jit(copies)(params, tokens, prompt, prompt_mask))
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp0 - 0.1 * mask, rewards=rewards, tokens=tokens)
    opt = optax.sgd(0.1)
    outs = [
        jtrain.make_train_step(f, spec, opt, donate=False)(params, opt.init(params), batch, prompt, prompt_mask)
        for f in (default, copies)
    ]
    (pa, _, ma), (pb, _, mb) = outs
    assert abs(float(ma["loss"]) - float(mb["loss"])) <= TOL * max(1.0, abs(float(mb["loss"])))
    assert abs(float(ma["grad_norm"]) - float(mb["grad_norm"])) <= TOL * float(mb["grad_norm"])
    delta_a = jax.tree.map(lambda x, y: x - y, pa, params)
    delta_b = jax.tree.map(lambda x, y: x - y, pb, params)
    assert _rel(delta_a, delta_b) <= TOL


def _nnx_pair(t: int, fns):
    """(aux, grads) of a weighted sum of logp and entropy through each of ``fns``, and the first one's on a changed
    prompt (the control), jitted with the inputs as arguments (the control reuses the compile)."""
    from jgrpo import policies as P

    config = P.TransformerConfig.tiny(vocab=16, max_len=16)
    graphdef, params = P.make_transformer(jax.random.key(0), config)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 16, size=(2, 3, t)).astype(np.int32)
    prompt = rng.integers(0, 16, size=(2, 4)).astype(np.int32)
    w = rng.standard_normal((2, 3, t)).astype(np.float32)
    out = []
    for make in fns:
        f = make(graphdef)

        def objective(p, y, x, f=f):
            logp, ent = f(p, y, x)
            return jnp.sum(w * logp) + jnp.sum(ent), (logp, ent)

        run = jax.jit(jax.value_and_grad(objective, has_aux=True))
        out.append(run(params, tokens, prompt))
        if not len(out) - 1:
            control = run(params, tokens, (prompt + 1) % 16)
    return [(aux, g) for (_, aux), g in out], control[0][1]


@pytest.mark.slow  # make test-all (make test runs the loop through this path in tests/test_train.py)
def test_nnx_train_loop_path_equals_g_copies():
    """The train loop's grouped_policy_logprob (NNX transformer, prompt once per group, temperature 0.7) equals
    policy_logprob over G copies (values, entropies and gradients) to 1e-5; control: another prompt differs."""
    from jgrpo import policies as P

    fns = [
        lambda gd: lambda p, y, x: jtrain.grouped_policy_logprob(gd, p, y, x, 0.7),
        lambda gd: lambda p, y, x: jtrain.policy_logprob(P.nnx_logits_fn(gd), p, y, x, 0.7),
    ]
    ((aux_a, ga), (aux_b, gb)), control = _nnx_pair(5, fns)
    assert _rel(aux_a, aux_b) <= TOL and _rel(ga, gb) <= TOL, (_rel(aux_a, aux_b), _rel(ga, gb))
    assert _rel(control, aux_b) > 100 * TOL


@pytest.mark.slow
@pytest.mark.parametrize("t", [5, 1])
def test_nnx_logprob_fn_shared_equals_g_copies(t):
    """nnx_logprob_and_entropy_fn(share_prompt=True) equals the G-copies default (incl. T = 1) to 1e-5."""
    from jgrpo import policies as P

    fns = [lambda gd, s=s: P.nnx_logprob_and_entropy_fn(gd, share_prompt=s) for s in (True, False)]
    ((aux_a, ga), (aux_b, gb)), _ = _nnx_pair(t, fns)
    assert _rel(aux_a, aux_b) <= TOL and _rel(ga, gb) <= TOL, (_rel(aux_a, aux_b), _rel(ga, gb))
