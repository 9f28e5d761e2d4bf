"""Part (B)'s prefix-tree task: reward (the answer at ``answer_pos``) independent of length by construction.

Tokens: 0 = EOS, 1 = the correct answer, 2.. = other tokens. The prefix-tree policy
(``jgrpo.policies.tree_*``) has one row of logits per whole prefix, so shared prefixes are exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
from experiments.prefix_bias.config import CONTROL, METHODS, Config
from experiments.shared.tasks import comparison_specs
from jgrpo.policies import tree_num_contexts

EOS = 0
CORRECT = 1
NEG = -1.0e4  # logit of an impossible token: exp underflows to exactly 0 in float32


def _depths(vocab: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth t and base-V index h of every row of a prefix-tree table."""
    n = tree_num_contexts(vocab, length)
    depth, index = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for t in range(length):
        off = tree_num_contexts(vocab, t) if t else 0
        depth[off : off + vocab**t] = t
        index[off : off + vocab**t] = np.arange(vocab**t)
    return depth, index


def tree_task_policy(seed: int, cfg: Config, accuracy: float) -> dict[str, jax.Array]:
    """The prefix-tree policy of part (B): reward (answer at ``answer_pos``) independent of length.

    Random normal logits (std ``init_scale``); EOS impossible up to the answer; the
    answer row is the same after every preamble (P(token 1) = ``accuracy``, the
    other non-EOS tokens share the rest); rows after the answer are copied from the
    row with the answer replaced by the correct token, so the continuation does not
    depend on the answer.
    """
    v, t_len, a = cfg.vocab, cfg.length, cfg.answer_pos
    rng = np.random.default_rng(seed)
    depth, index = _depths(v, t_len)
    logits = cfg.init_scale * rng.standard_normal((depth.size, v))
    logits[depth <= a, EOS] = NEG
    answer = np.full(v, math.log((1 - accuracy) / (v - 2)))
    answer[CORRECT], answer[EOS] = math.log(accuracy), NEG
    logits[depth == a] = answer
    deep = np.nonzero(depth > a)[0]
    d, h = depth[deep], index[deep]
    place = v ** (d - 1 - a)  # weight of the answer digit in the base-V index
    digit = (h // place) % v
    logits[deep] = logits[deep + (CORRECT - digit) * place]
    return {"logits": jnp.asarray(logits, jnp.float32)}


def reward(tokens, cfg: Config):
    """``[..., G]`` 1 iff the answer (the token at ``answer_pos``) is the correct one."""
    return (tokens[..., cfg.answer_pos] == CORRECT).astype(jnp.float32)


def specs(methods=METHODS) -> tuple[tuple[str, jgrpo.MethodSpec], ...]:
    """``(name, spec)`` of ``methods``: the shared comparison (β = 0) and the short-positive control (dr_grpo's
    constant α = 1/G with :func:`control_advantages`)."""
    base = {**comparison_specs(), CONTROL: jgrpo.methods.get("dr_grpo", beta=0.0)}
    return tuple((m, base[m]) for m in methods)


def control_advantages(rewards, mask):
    """The positive control's advantages: A_i · mean_j|o_j| / |o_i| where A_i > 0, A_i elsewhere.

    With dr_grpo's constant α = 1/G this weights positive completions by 1/|o_i| and
    the others uniformly: the paper's "short positive answers dominate the shared
    prefix" with nothing to offset it.
    """
    lengths = jnp.sum(mask, axis=-1)
    adv = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    scale = jnp.mean(lengths, axis=-1, keepdims=True) / jnp.maximum(lengths, 1.0)
    return jnp.where(adv > 0, adv * scale, adv)
