"""A Hugging Face checkpoint as the experiments' policy (``python -m experiments run NAME --model PATH``).

The checkpoint is loaded with :func:`jgrpo.models.from_pretrained` (safetensors only), its
tokenizer with :func:`jgrpo.tasks.text.load_tokenizer`, and prompts come from Countdown
(:mod:`jgrpo.tasks.text`, generated, no download). Rollouts are sampled with the KV-cache
decoder and scored with the one policy protocol ``logprob_fn(params, tokens, prompt)``, the
prompt being a :class:`jgrpo.models.Prompt` ``(ids, mask)`` of left-padded prompts.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
import jgrpo.models as M
from jgrpo.tasks import text

COUNTDOWN = text.CountdownTask()  # 3 numbers in [1, 20], targets <= 200

__all__ = ["Checkpoint", "Rollouts", "check_path", "left_pad", "load", "rollouts"]


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
