"""Evaluation: accuracy and format statistics of sampled completions of fresh prompts."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jgrpo import tasks
from jgrpo._validate import check_float, check_int
from jgrpo.policies import nnx_logits_fn
from jgrpo.sampling import sample
from jgrpo.train.compile import _jit, _options

__all__ = ["evaluate"]


@functools.cache
def _evaluate_fn(
    task: tasks.ArithmeticTask, graphdef: Any, num_prompts: int, group_size: int, max_len: int, options: tuple
):
    logits_fn = nnx_logits_fn(graphdef)

    def run(params, key, temperature):
        k_prompt, k_sample = jax.random.split(key)
        prompt, answers = tasks.sample_prompts(task, k_prompt, num_prompts)
        s = sample(
            logits_fn,
            params,
            prompt,
            k_sample,
            group_size=group_size,
            max_len=max_len,
            temperature=temperature,
            eos_id=tasks.EOS,
            pad_id=tasks.PAD,
        )
        r = tasks.reward(task, s.tokens, s.mask, answers)
        parsed = tasks.parse(task, s.tokens, s.mask)
        return {
            "accuracy": jnp.mean(r),
            "valid_frac": jnp.mean(parsed.valid.astype(jnp.float32)),
            "length_mean": jnp.mean(parsed.length.astype(jnp.float32)),
            "filler_mean": jnp.mean(parsed.num_filler.astype(jnp.float32)),
            "mixed_groups": jnp.mean((jnp.max(r, -1) > jnp.min(r, -1)).astype(jnp.float32)),
        }

    return _jit(run, options)


def evaluate(
    task: tasks.ArithmeticTask,
    graphdef: Any,
    params: Any,
    key: jax.Array,
    *,
    num_prompts: int = 256,
    group_size: int = 1,
    temperature: float = 1.0,
    max_len: int | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Samples completions of fresh prompts and reports accuracy and format statistics (one jitted call).

    Args:
      task: the task.
      graphdef, params: the policy.
      key: PRNG key of the prompts and the samples.
      num_prompts: prompts drawn.
      group_size: completions per prompt.
      temperature: sampling temperature (0 = greedy; a traced value, no recompile).
      max_len: completion budget T (default ``task.max_len``).
      compiler_options: XLA compile options (see :func:`warmup`).

    Returns:
      ``{"accuracy", "valid_frac", "length_mean", "filler_mean", "mixed_groups"}``:
      the fraction of exactly correct completions, of well-formed ones, the mean
      completion length and filler count, and the fraction of prompts whose group
      has both correct and incorrect completions (0 when ``group_size`` is 1).
    """
    check_int("evaluate", "num_prompts", num_prompts, 1)
    check_int("evaluate", "group_size", group_size, 1)
    max_len = task.max_len if max_len is None else max_len
    check_int("evaluate", "max_len", max_len, 1)
    check_float("evaluate", "temperature", temperature, temperature >= 0, ">= 0")
    fn = _evaluate_fn(task, graphdef, int(num_prompts), int(group_size), int(max_len), _options(compiler_options))
    out = fn(params, key, jnp.asarray(temperature, jnp.float32))
    return {k: float(v) for k, v in jax.device_get(out).items()}
