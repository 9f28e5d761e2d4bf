"""The supervised warm-up: teacher-forced next-token training on correct completions of the task."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jgrpo import tasks
from jgrpo._validate import check_int
from jgrpo.policies import nnx_logits_fn
from jgrpo.train.compile import _jit, _options
from jgrpo.train.logprob import policy_logprob
from jgrpo.train.mesh import _check_divisible, _constrain, _shard_batch

__all__ = ["warmup"]


@functools.cache
def _warmup_fn(
    task: tasks.ArithmeticTask, graphdef: Any, steps: int, batch_size: int, mesh: Any, options: tuple
) -> Callable:
    logits_fn = nnx_logits_fn(graphdef)

    def run(params, key, learning_rate):
        opt = optax.adam(learning_rate)

        def body(carry, key_s):
            params, state = carry
            k_prompt, k_fill = jax.random.split(key_s)
            prompt, answers = tasks.sample_prompts(task, k_prompt, batch_size)
            tokens, mask = tasks.correct_completions(task, k_fill, answers)
            prompt, tokens, mask = (_shard_batch(x, mesh) for x in (prompt, tokens, mask))

            def nll(p):
                logp, _ = policy_logprob(logits_fn, p, tokens[:, None], prompt, 1.0)
                return -jnp.sum(logp[:, 0] * mask) / jnp.sum(mask)

            value, grads = jax.value_and_grad(nll)(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), jax.random.split(key, steps))
        return params, losses

    if mesh is None:
        return _jit(run, options)

    def placed(params, key, learning_rate):
        params, losses = run(_constrain(params, mesh), key, learning_rate)
        return _constrain(params, mesh), jax.lax.with_sharding_constraint(losses, NamedSharding(mesh, P()))

    return _jit(placed, options)


def warmup(
    task: tasks.ArithmeticTask,
    graphdef: Any,
    params: Any,
    key: jax.Array,
    *,
    steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    mesh: jax.sharding.Mesh | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> tuple[Any, jax.Array]:
    """Supervised warm-up: teacher-forced next-token training on correct completions.

    Each step draws ``batch_size`` prompts and one correct completion each, with
    a filler count uniform in ``{0..task.max_filler}``, and takes one Adam step on
    the mean negative log-likelihood of the completion tokens (EOS included).
    The whole loop is one jitted ``lax.scan`` (compiled once per task, model,
    ``steps``, ``batch_size`` and mesh; the learning rate is traced).

    Args:
      task: the task.
      graphdef: the policy's graphdef (:func:`jgrpo.policies.make_transformer`).
      params: initial parameters.
      key: PRNG key of the data.
      steps: number of Adam steps (>= 1).
      batch_size: completions per step (divisible by the mesh's device count).
      learning_rate: Adam's learning rate.
      mesh: optional mesh (:func:`data_mesh` or :func:`make_mesh`); the batch is sharded
        over its batch axes, params placed as :func:`fsdp_shardings` says.
      compiler_options: XLA options for the compile, e.g.
        ``{"xla_backend_optimization_level": 0}`` (CPU: compiles 2-3x faster; the
        results may differ in float rounding only).

    Returns:
      ``(params, losses [steps])``.
    """
    check_int("warmup", "steps", steps, 1)
    check_int("warmup", "batch_size", batch_size, 1)
    if mesh is not None:
        _check_divisible("batch_size", batch_size, mesh)
    fn = _warmup_fn(task, graphdef, int(steps), int(batch_size), mesh, _options(compiler_options))
    return fn(params, key, jnp.asarray(learning_rate, jnp.float32))
