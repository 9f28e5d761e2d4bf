"""The warmed-up arithmetic policy and its rollouts, shared by the experiments of one process."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

import jgrpo
from experiments.shared.tasks import cpu_compiler_options
from jgrpo import tasks
from jgrpo.policies import TransformerConfig, make_transformer, nnx_logits_fn, nnx_logprob_fn


@dataclasses.dataclass(frozen=True)
class PolicySetup:
    """Sizes of the shared policy: the task, the model and the warm-up."""

    task: tasks.ArithmeticTask
    model: TransformerConfig
    warmup_steps: int
    warmup_batch: int


def setup(scale: str) -> PolicySetup:
    task = tasks.ArithmeticTask(max_operand=9, max_filler=4)
    max_len = task.prompt_len + task.max_len
    if scale == "paper":
        task = tasks.ArithmeticTask(max_operand=49, max_filler=8)
        max_len = task.prompt_len + task.max_len
        return PolicySetup(task, TransformerConfig.small(vocab=task.vocab_size, max_len=max_len), 2000, 256)
    return PolicySetup(task, TransformerConfig.tiny(vocab=task.vocab_size, max_len=max_len), 300, 64)


@functools.cache
def warm_policy(scale: str, seed: int) -> tuple[Any, Any, PolicySetup]:
    """(graphdef, params, setup): the transformer after the supervised warm-up (cached per process)."""
    from jgrpo.train import warmup

    s = setup(scale)
    key = jax.random.key(seed)
    graphdef, params = make_transformer(jax.random.fold_in(key, 0), s.model)
    params, _ = warmup(
        s.task,
        graphdef,
        params,
        jax.random.fold_in(key, 1),
        steps=s.warmup_steps,
        batch_size=s.warmup_batch,
        compiler_options=cpu_compiler_options(),
    )
    return graphdef, params, s


def rollouts(graphdef, params, s: PolicySetup, key, *, prompts: int, group_size: int):
    """Samples ``group_size`` completions for ``prompts`` prompts; returns (batch, prompt, logprob_fn).

    ``logprob_fn(params, tokens, prompt)`` is the policy protocol (``jgrpo.nnx_logprob_fn``):
    pass ``prompt=prompt`` to the analyses. ``batch.logp_old`` is recomputed with it, so the
    ratio is exactly 1 at the first inner step.
    """
    prompt, answers = tasks.sample_prompts(s.task, jax.random.fold_in(key, 0), prompts)
    smp = jgrpo.sample(
        nnx_logits_fn(graphdef),
        params,
        prompt,
        jax.random.fold_in(key, 1),
        group_size=group_size,
        max_len=s.task.max_len,
        temperature=1.0,
        eos_id=tasks.EOS,
        pad_id=tasks.PAD,
    )
    rewards = tasks.reward(s.task, smp.tokens, smp.mask, answers)
    logprob_fn = nnx_logprob_fn(graphdef)
    logp = logprob_fn(params, smp.tokens, prompt)
    batch = jgrpo.GroupBatch(
        mask=smp.mask,
        logp_old=jnp.where(smp.mask > 0, logp, 0.0),
        rewards=rewards,
        tokens=smp.tokens,
        entropy=smp.entropy,
    )
    return batch, prompt, logprob_fn
