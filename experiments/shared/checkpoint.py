"""A Hugging Face checkpoint as the experiments' policy (``python -m experiments run NAME --model PATH``).

The checkpoint is loaded with :func:`jgrpo.models.from_pretrained` (safetensors only), its
tokenizer with :func:`jgrpo.tasks.text.load_tokenizer`, and prompts come from Countdown
(:mod:`jgrpo.tasks.text`, generated, no download). Rollouts are sampled with the KV-cache
decoder and scored with the one policy protocol ``logprob_fn(params, tokens, prompt)``, the
prompt being a :class:`jgrpo.models.Prompt` ``(ids, mask)`` of left-padded prompts.

The overshoot experiment trains on the checkpoint with a graded Countdown reward computed on the
host (:func:`countdown_shaped_score`: the exact verifier's 1 for a solution, else partial credit
for writing the problem's numbers), because the verifier alone is 0 on almost every short
completion of a small or untrained model, and a group of equal rewards has no advantage.
"""

from __future__ import annotations

import collections
import functools
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
import jgrpo.models as M
from jgrpo.tasks import text

COUNTDOWN = text.CountdownTask()  # 3 numbers in [1, 20], targets <= 200

__all__ = [
    "SHAPED_REWARD",
    "Checkpoint",
    "Rollouts",
    "check_path",
    "countdown_prompts",
    "countdown_shaped_rewards",
    "countdown_shaped_score",
    "left_pad",
    "load",
    "rollouts",
]


class Checkpoint(NamedTuple):
    """A loaded checkpoint: ``model_fn``, ``params``, its tokenizer, the path and a one-line description."""

    model_fn: Any
    params: Any
    tokenizer: text.TextTokenizer
    path: str
    description: str


class Rollouts(NamedTuple):
    """Sampled Countdown rollouts: the batch, the prompt (a :class:`jgrpo.models.Prompt`), the Countdown rewards."""

    batch: jgrpo.GroupBatch
    prompt: M.Prompt
    countdown_rewards: np.ndarray


def check_path(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a checkpoint directory the experiments can use (None when it looks like one)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    if not os.path.exists(os.path.join(path, "config.json")):
        return f"{path} has no config.json (a Hugging Face checkpoint directory is expected)"
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        return (
            f"{path} has no tokenizer.json (the experiments tokenize Countdown prompts with the checkpoint's tokenizer)"
        )
    return None


@functools.cache
def load(path: str, dtype: str = "float32") -> Checkpoint:
    """The checkpoint at ``path`` with parameters and compute in ``dtype`` (cached per process)."""
    model_fn, params = M.from_pretrained(path, dtype=jnp.dtype(dtype))
    tok = text.load_tokenizer(path)
    cfg = model_fn.config
    n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    desc = (
        f"checkpoint {os.path.basename(os.path.normpath(path))} ({cfg.model_type}, {cfg.num_layers} layers, hidden "
        f"{cfg.hidden_size}, vocab {cfg.vocab_size}, {n / 1e6:.1f}M parameters, {dtype})"
    )
    return Checkpoint(model_fn, params, tok, path, desc)


def rollouts(
    ck: Checkpoint,
    key: jax.Array,
    *,
    prompts: int,
    group_size: int,
    max_len: int,
    seed: int,
    task: text.CountdownTask = COUNTDOWN,
    temperature: float = 1.0,
) -> Rollouts:
    """``prompts`` Countdown problems, ``group_size`` completions each, sampled from the checkpoint.

    ``batch.logp_old`` and ``batch.entropy`` are recomputed by the scorer
    (``jgrpo.models.logprob_and_entropy_fn(model_fn)``), so every ratio is exactly 1 at the first
    inner step of an analysis that uses ``jgrpo.models.logprob_fn(model_fn)`` with ``prompt=``;
    ``batch.rewards`` are the verifier's (0/1).
    """
    problems = text.countdown_problems(task, seed, prompts)
    r = text.rollout(
        M.decoder(ck.model_fn), ck.params, ck.tokenizer, task, problems, key,
        group_size=group_size, max_len=max_len, temperature=temperature,
    )  # fmt: skip
    prompt = M.Prompt(jnp.asarray(r.prompt), jnp.asarray(r.prompt_mask))
    score = jax.jit(M.logprob_and_entropy_fn(ck.model_fn))
    logp, entropy = score(ck.params, r.samples.tokens, prompt)
    mask = r.samples.mask
    batch = jgrpo.GroupBatch(
        mask=mask,
        logp_old=jnp.where(mask > 0, logp, 0.0),
        rewards=jnp.asarray(r.rewards, jnp.float32),
        tokens=r.samples.tokens,
        entropy=jnp.where(mask > 0, entropy, 0.0),
    )
    return Rollouts(batch, prompt, np.asarray(r.rewards, np.float32))


def left_pad(prompt: M.Prompt, length: int, pad_id: int) -> M.Prompt:
    """``prompt`` left-padded further to ``length`` positions (mask 0 there), e.g. to stack data sets.

    The model reads positions from the mask, so the log-probabilities do not change (up to float rounding).
    """
    ids, mask = np.asarray(prompt.ids), np.asarray(prompt.mask)
    extra = length - ids.shape[-1]
    if extra < 0:
        raise ValueError(f"length = {length} is shorter than the prompt's {ids.shape[-1]} positions")
    widths = [(0, 0)] * (ids.ndim - 1) + [(extra, 0)]
    return M.Prompt(np.pad(ids, widths, constant_values=pad_id), np.pad(mask, widths, constant_values=0))


# ----------------------------------------------------------------------------- Countdown for the overshoot sweep

SHAPED_REWARD = (
    "graded Countdown reward on the host: 1 if the exact verifier accepts the completion's last <answer> "
    "(jgrpo.tasks.text.countdown_score), else 0.5 × (share of the problem's numbers written in the completion "
    "as integer literals, each counted at most as often as given)"
)
_INTEGER = re.compile(r"\d+")


def countdown_shaped_score(problem: text.CountdownProblem, completion: str) -> float:
    """The graded Countdown reward of one completion (:data:`SHAPED_REWARD`), in [0, 1].

    1.0 when :func:`jgrpo.tasks.text.countdown_score` verifies the completion's answer; otherwise
    ``0.5 · k / n``, k the problem's numbers (a multiset of n) that the completion writes as whole
    integer literals (maximal digit runs: "171" is not "17"; leading zeros ignored), each counted at
    most as often as the problem gives it. Below the verifier's 1 for any unverified completion, it
    rises as the model uses the given numbers — the step before a solution — so that groups of a
    small or untrained model's short completions have unequal rewards (GRPO's advantage is 0
    otherwise), while a verified solution is still worth the most.
    """
    if text.countdown_score(problem, completion) == 1.0:
        return 1.0
    written = collections.Counter(x.lstrip("0") or "0" for x in _INTEGER.findall(completion))
    given = collections.Counter(str(n) for n in problem.numbers)
    hit = sum(min(c, written[n]) for n, c in given.items())
    return 0.5 * hit / len(problem.numbers)


def countdown_shaped_rewards(problems: Sequence[text.CountdownProblem], texts: Sequence[Sequence[str]]) -> np.ndarray:
    """``[B, G']`` float32 rewards (:func:`countdown_shaped_score`) of ``texts[b][g]``, completions of ``problems[b]``.

    Raises:
      ValueError: not one list of texts per problem.
    """
    if len(texts) != len(problems):
        raise ValueError(f"texts must hold one list per problem ({len(problems)}), got {len(texts)}")
    return np.asarray(
        [[countdown_shaped_score(p, t) for t in row] for p, row in zip(problems, texts, strict=True)], np.float32
    )


def countdown_prompts(
    tokenizer: text.TextTokenizer, seed: int, shape: tuple[int, ...], task: text.CountdownTask = COUNTDOWN
) -> tuple[M.Prompt, Any]:
    """Countdown problems for every index of ``shape`` (e.g. (seeds, batches, prompts)) and their prompts.

    Returns ``(Prompt(ids, mask) [*shape, P] NumPy, problems)``: every prompt left-padded to one common
    length P (one compiled shape for every batch), ``problems`` nested lists of ``shape``.
    """
    if not shape or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be non-empty with every size >= 1, got {shape}")
    flat = text.countdown_problems(task, seed, int(np.prod(shape)))
    ids, mask = tokenizer.encode_left_padded([text.countdown_prompt(task, p) for p in flat])
    nested: Any = flat
    for n in reversed(shape[1:]):
        nested = [nested[i : i + n] for i in range(0, len(nested), n)]
    return M.Prompt(ids.reshape(*shape, -1), mask.reshape(*shape, -1)), nested
