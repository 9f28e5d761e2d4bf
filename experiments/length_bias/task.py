"""The length-coupled task ("reason, then answer"), its exact metrics and the methods compared (traceable).

Tokens 0 = EOS, 1 = R (a reasoning step), 2 = C (the correct answer), 3 = W (a wrong answer),
4 = F (filler). A completion of prompt k is correct iff its first answer token is C and at least
d_k R tokens precede it; the reward is the end state of a finite automaton, so ``analysis.tabular``
gives the exact joint law of (correct, length).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
from analysis import tabular as tab
from experiments.length_bias.config import CONTROL, METHODS, Config
from experiments.shared.tasks import comparison_specs
from jgrpo.policies import tabular_prompt_logprob, tabular_prompt_sample

VOCAB = 5
EOS, R, C, W, F = range(VOCAB)
# "pretrained" prior logits of (EOS, R, C, W, F), and after an answer token (prev = C or W)
PRIOR = (-2.5, 1.2, -1.0, -1.5, 0.0)
PRIOR_AFTER_ANSWER = (0.5, 0.0, -1.0, -1.0, 0.5)


def automaton(difficulty: int, max_difficulty: int) -> tab.Automaton:
    """States 0..d (R tokens seen, capped at d), then d_max + 1 = correct, d_max + 2 = incorrect (absorbing).

    All prompts share S = d_max + 3 states (states above d are unreachable), so their
    automata stack into one ``[K, S, V]`` array.
    """
    s_count = max_difficulty + 3
    correct, incorrect = max_difficulty + 1, max_difficulty + 2
    t = np.tile(np.arange(s_count, dtype=np.int32)[:, None], (1, VOCAB))  # F, EOS and unreachable states stay
    for s in range(difficulty + 1):
        t[s, R] = min(s + 1, difficulty)
        t[s, C] = correct if s == difficulty else incorrect
        t[s, W] = incorrect
    return tab.automaton(t)


def transitions(cfg: Config) -> jax.Array:
    """``[K, S, V]`` the stacked automata of the prompts."""
    d_max = max(cfg.difficulties)
    return jnp.stack([automaton(d, d_max).transition for d in cfg.difficulties])


def initial_policy(seed: int, cfg: Config) -> dict[str, jax.Array]:
    """``{"logits": [K, T, V+1, V]}``: the prior plus i.i.d. normal noise (std ``init_scale``)."""
    k = len(cfg.difficulties)
    logits = np.tile(np.asarray(PRIOR, np.float64), (k, cfg.length, VOCAB + 1, 1))
    logits[:, :, C, :] = PRIOR_AFTER_ANSWER
    logits[:, :, W, :] = PRIOR_AFTER_ANSWER
    logits += cfg.init_scale * np.random.default_rng(seed).standard_normal(logits.shape)
    return {"logits": jnp.asarray(logits, jnp.float32)}


def rewards_of(tokens, mask, prompt, trans):
    """``[B, G]`` 1 iff the automaton of each completion's prompt ends in the correct state."""
    correct = trans.shape[1] - 2

    def run(trans_k, toks, m):  # toks, m [G, T]
        def step(state, x):
            tok, mk = x
            return jnp.where(mk > 0, trans_k[state, tok], state), None

        state, _ = jax.lax.scan(step, jnp.zeros(toks.shape[0], jnp.int32), (toks.T, m.T))
        return (state == correct).astype(jnp.float32)

    return jax.vmap(run)(trans[prompt], tokens, mask)


def exact_metrics(params, trans, length: int) -> dict[str, jax.Array]:
    """Exact E[r], E[|o|], E[|o| | correct], E[|o| | incorrect], P(|o| = T) over the uniform prompt mixture."""
    correct = trans.shape[1] - 2

    def one(table, tr):
        return tab.terminal_distribution({"logits": table}, tab.Automaton(tr), eos=EOS, length=length)

    p = jax.vmap(one)(params["logits"], trans)  # [K, S, T+1]
    lens = jnp.arange(length + 1, dtype=p.dtype)
    p_len = jnp.sum(p, axis=1)  # [K, T+1]
    p_cor = p[:, correct]  # [K, T+1]
    e_r = jnp.mean(jnp.sum(p_cor, -1))
    e_l = jnp.mean(jnp.sum(p_len * lens, -1))
    e_lc = jnp.mean(jnp.sum(p_cor * lens, -1))
    return {
        "reward": e_r,
        "length": e_l,
        "length_correct": e_lc / e_r,
        "length_incorrect": (e_l - e_lc) / (1.0 - e_r),
        "truncated": jnp.mean(p_len[:, length]),
        "reward_per_prompt": jnp.sum(p_cor, -1),
    }


def specs(methods=METHODS) -> tuple[tuple[str, jgrpo.MethodSpec], ...]:
    """``(name, spec)`` of ``methods``: the shared comparison (β = 0) and the 1/|o|² control (grpo's spec with
    :func:`control_advantages`)."""
    base = {**comparison_specs(), CONTROL: jgrpo.methods.get("grpo", beta=0.0)}
    return tuple((m, base[m]) for m in methods)


def control_advantages(rewards, mask):
    """A_i · mean_j|o_j| / |o_i|: with grpo's α = 1/(G|o_i|σ) the weight becomes ∝ 1/|o_i|²."""
    lengths = jnp.sum(mask, axis=-1)
    adv = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    return adv * jnp.mean(lengths, axis=-1, keepdims=True) / jnp.maximum(lengths, 1.0)


def batch_for(name: str, batch: jgrpo.GroupBatch) -> jgrpo.GroupBatch:
    """The batch method ``name`` trains on: the control's advantages replaced, every other method's as is."""
    if name == CONTROL:
        return dataclasses.replace(batch, advantages=control_advantages(batch.rewards, batch.mask))
    return batch


def prompts(cfg: Config, n: int) -> jax.Array:
    """``[n]`` the prompt of each group: every prompt in turn."""
    return jnp.tile(jnp.arange(len(cfg.difficulties), dtype=jnp.int32), n // len(cfg.difficulties))


def sample_batch(cfg: Config, params, trans, key, n: int):
    """``(batch [n, G, T], prompt [n])``: n groups sampled from the policy ``params``, exact rewards."""
    prompt = prompts(cfg, n)
    s = tabular_prompt_sample(
        params, prompt, key, group_size=cfg.group_size, max_len=cfg.length, eos_id=EOS, pad_id=EOS
    )
    logp = tabular_prompt_logprob(params, s.tokens, prompt)
    batch = jgrpo.GroupBatch(
        mask=s.mask,
        logp_old=jax.lax.stop_gradient(logp),
        rewards=rewards_of(s.tokens, s.mask, prompt, trans),
        tokens=s.tokens,
    )
    return batch, prompt
