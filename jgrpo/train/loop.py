"""The outer loop of a real GRPO run on a verifiable task: warm-up, sampling, rewards, μ inner steps, checkpoints.

One outer step (:func:`train`), jitted once per configuration:

1. draw B prompts of :mod:`jgrpo.tasks` (key = fold_in(fold_in(key(seed), 1), step));
2. sample G completions per prompt with the current policy (π_old) at the
   configured temperature;
3. reward them (exact-match, verifiable), recompute log π_old and the entropies
   with the training forward pass (and log π_ref with the frozen initial policy
   when the method's β > 0), and build a :class:`jgrpo.GroupBatch`;
4. run μ optimizer steps on this fixed batch with ``lax.scan`` (any optax chain;
   the extra args ``new_batch``, ``clip_fraction`` and ``ratio_fn`` of
   :mod:`jgrpo.optim` are passed to every update);
5. measure: rewards, accuracy, lengths of correct / incorrect completions, clip
   fractions, the escape of ratios beyond the clip bound after the μ steps
   (Prop. 3), the surrogate J at the first and last inner steps (Prop. 4), and
   whatever an optional metrics hook adds (e.g. the shared-prefix aggregates of
   Prop. 1, ``experiments.shared.metrics.prefix_metrics``).

Data parallel and FSDP: the mesh has a "data" axis and optionally an "fsdp" axis
(:func:`make_mesh`). The prompts' batch axis is sharded over both (every device
gets its own rows); parameters and optimizer state are sharded FSDP-style over
"fsdp" (each leaf split along its largest divisible dimension, :func:`fsdp_shardings`)
and replicated over "data". Only ``jax.sharding`` annotations are used (NamedSharding
placements and ``with_sharding_constraint``); GSPMD inserts the all-gathers of the
weights and the reduce-scatters of the gradients. With a 1-D "data" mesh
(:func:`data_mesh`, the default) parameters are replicated: plain data parallelism.
The same code runs on one CPU, on ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
virtual CPUs, on a GPU, a TPU slice, or several hosts: call
``jax.distributed.initialize()`` first in every process, then build the mesh over
``jax.devices()`` (all processes' devices); each process then feeds its own rows of
the global batch (``jax.make_array_from_process_local_data``) and the step is the
same program everywhere. :func:`make_train_step` is the sharded loss/gradient/update
step for any ``logprob_fn`` (e.g. a :mod:`jgrpo.models` checkpoint, with
rematerialisation when its config has ``remat=True``).

Checkpoints (orbax, atomic): params, optimizer state, reference params, the
RNG key, the step and the metrics history every ``checkpoint_every`` outer
steps. ``train(config, out_dir)`` resumes from the latest one and, because every
step's randomness is a function of (seed, step) only, ends in exactly the state
of an uninterrupted run (bitwise on CPU; on GPU with deterministic ops, see
:func:`train`'s ``compiler_options``).

The policy is the temperature-τ policy π_θ(·) = softmax(logits / τ): sampling,
π_old, π_ref and the loss all use it (verl's convention), so the batch is
exactly on-policy at the first inner step for any τ > 0.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jgrpo
from jgrpo import tasks
from jgrpo.policies import make_transformer, nnx_logits_fn
from jgrpo.sampling import sample
from jgrpo.train.checkpoint import _abstract, _Checkpointer
from jgrpo.train.compile import _jit, _options
from jgrpo.train.config import TrainConfig, _program_key
from jgrpo.train.logprob import grouped_policy_logprob
from jgrpo.train.mesh import _check_divisible, _check_mesh, _constrain, _place, _shard_batch, data_mesh
from jgrpo.train.metrics import MetricsFn, escape_metrics, masked_mean
from jgrpo.train.optimizer import make_optimizer
from jgrpo.train.step import grad_and_update
from jgrpo.train.warmup import warmup

__all__ = ["TrainResult", "train"]


@functools.cache
def _outer_step_fn(
    config: TrainConfig, graphdef: Any, mesh: jax.sharding.Mesh, options: tuple = (), metrics_fn: Any = None
) -> Callable:
    """``(params, opt_state, ref_params, step) -> (params, opt_state, metrics)``, jitted once."""
    spec, task = config.spec, config.task
    b, g, t, tau, mu = (
        config.prompts_per_step,
        config.group_size,
        config.max_len,
        config.temperature,
        config.inner_steps,
    )
    logits_fn = nnx_logits_fn(graphdef)
    opt = make_optimizer(config)
    needs_ref = config.needs_ref
    shard = functools.partial(_shard_batch, mesh=mesh)

    def step_fn(params, opt_state, ref_params, step):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 1), step)
        k_prompt, k_sample = jax.random.split(key)
        prompt, answers = tasks.sample_prompts(task, k_prompt, b)
        prompt, answers = shard(prompt), shard(answers)
        s = sample(
            logits_fn,
            params,
            prompt,
            k_sample,
            group_size=g,
            max_len=t,
            temperature=tau,
            eos_id=tasks.EOS,
            pad_id=tasks.PAD,
        )
        tokens, mask = shard(s.tokens), shard(s.mask)
        rewards = tasks.reward(task, tokens, mask, answers)
        logp_fn = lambda p: grouped_policy_logprob(graphdef, p, tokens, prompt, tau)  # noqa: E731
        logp_old, entropy = jax.lax.stop_gradient(logp_fn(params))
        logp_ref = jax.lax.stop_gradient(logp_fn(ref_params)[0]) if needs_ref else None
        batch = jgrpo.GroupBatch(
            mask=mask, logp_old=logp_old, rewards=rewards, logp_ref=logp_ref, tokens=tokens, entropy=entropy
        )

        def logp_of(p):
            return logp_fn(p)[0]

        def inner(carry, k):
            p, state = carry
            p_new, state, value, aux, grads = grad_and_update(spec, logp_of, batch, opt, p, state, k == 0)
            ys = {
                "objective": -value,
                "clip_frac_high": aux["clip_frac_high"],
                "clip_frac_low": aux["clip_frac_low"],
                "kl": aux["kl"],
                "grad_norm": optax.tree.norm(grads),
            }
            return (p_new, state), ys

        (new_params, opt_state), ys = jax.lax.scan(inner, (params, opt_state), jnp.arange(mu))

        logp_new = logp_fn(new_params)[0]
        after = jgrpo.terms(spec, logp_new, batch)
        value_after, _ = jgrpo.loss(spec, logp_new, batch)
        parsed = tasks.parse(task, tokens, mask)
        correct = rewards > 0.5
        length = parsed.length.astype(jnp.float32)
        m = mask.astype(bool)
        gap = jnp.max(jnp.where(m, jnp.abs(s.logp_sample - logp_old), 0.0))
        metrics = {
            "reward_mean": jnp.mean(rewards),
            "accuracy": jnp.mean(correct.astype(jnp.float32)),
            "valid_frac": jnp.mean(parsed.valid.astype(jnp.float32)),
            "mixed_groups": jnp.mean((jnp.max(rewards, -1) > jnp.min(rewards, -1)).astype(jnp.float32)),
            "length_mean": jnp.mean(length),
            "length_correct": masked_mean(length, correct),
            "length_incorrect": masked_mean(length, ~correct),
            "filler_mean": jnp.mean(parsed.num_filler.astype(jnp.float32)),
            "entropy_mean": masked_mean(entropy, m),
            "clip_frac_high": ys["clip_frac_high"][-1],
            "clip_frac_low": ys["clip_frac_low"][-1],
            "kl": ys["kl"][-1],
            "grad_norm_first": ys["grad_norm"][0],
            "objective_first": ys["objective"][0],
            "objective_last": ys["objective"][-1],
            "objective_after": -value_after,
            "ratio_min_after": jnp.min(jnp.where(m, after.ratio, jnp.inf)),
            "ratio_max_after": jnp.max(jnp.where(m, after.ratio, -jnp.inf)),
            "logp_sampler_gap": gap,
            **escape_metrics(spec, after.ratio, after.advantages, mask),
        }
        if metrics_fn is not None:
            extra = dict(metrics_fn(spec, logp_old, batch))
            clash = sorted(set(extra) & set(metrics))
            if clash:
                raise ValueError(f"metrics_fn returned names the loop already reports: {clash}")
            metrics.update(extra)
        metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
        return new_params, opt_state, metrics

    repl = NamedSharding(mesh, P())

    def placed(params, opt_state, ref_params, step):
        params, opt_state, ref_params = (_constrain(t, mesh) for t in (params, opt_state, ref_params))
        new_params, opt_state, metrics = step_fn(params, opt_state, ref_params, step)
        return (
            _constrain(new_params, mesh),
            _constrain(opt_state, mesh),
            jax.lax.with_sharding_constraint(metrics, repl),
        )

    return _jit(placed, options)


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      params: final policy parameters (replicated on the mesh).
      opt_state: final optimizer state.
      ref_params: the frozen initial (warmed-up) policy, π_ref.
      step: outer steps done.
      history: one metrics dict (``str -> float``) per outer step, from step 0.
      graphdef: the policy's graphdef (``nnx.merge(graphdef, params)`` rebuilds it).
    """

    params: Any
    opt_state: Any
    ref_params: Any
    step: int
    history: list[dict[str, float]]
    graphdef: Any


def _initial_state(config: TrainConfig, mesh: jax.sharding.Mesh, options: tuple) -> tuple[Any, Any, Any]:
    base = jax.random.key(config.seed)
    graphdef, params = make_transformer(jax.random.fold_in(base, 0), config.model)
    params = _place(params, mesh)
    if config.warmup_steps > 0:
        params, _ = warmup(
            config.task,
            graphdef,
            params,
            jax.random.fold_in(base, 2),
            steps=config.warmup_steps,
            batch_size=config.warmup_batch,
            learning_rate=config.warmup_learning_rate,
            mesh=mesh,
            compiler_options=dict(options),
        )
    return graphdef, params, _place(make_optimizer(config).init(params), mesh)


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    compiler_options: Mapping[str, Any] | None = None,
    metrics_fn: MetricsFn | None = None,
) -> TrainResult:
    """Runs (or resumes) GRPO on ``config.task`` for ``config.steps`` outer steps.

    Each outer step is one jitted function (sampling, rewards, μ inner steps in
    ``lax.scan``, metrics; see the module docstring); a Python loop runs the
    outer steps, calls ``on_step`` and checkpoints.

    Args:
      config: the run.
      out_dir: checkpoint directory (``out_dir/checkpoints``). When it holds a
        checkpoint of the same config, the run resumes from the latest one and
        ends in the same state as an uninterrupted run. None: no checkpoints.
      mesh: a mesh with the axis "data" (default :func:`data_mesh`: all devices, data
        parallel) or the axes ("data", "fsdp") (:func:`make_mesh`: parameters and
        optimizer state sharded over "fsdp").
      on_step: ``on_step(step, metrics)`` after each outer step; ``step`` is its
        0-based index (step ``s`` uses the key fold_in(.., s)), ``metrics`` a
        dict of Python floats. The checkpoint of steps ``0..s`` (saved as
        orbax step ``s + 1``) is written before the call.
      metrics_fn: optional :class:`jgrpo.train.metrics.MetricsFn` hook ``(spec, logp_old, batch) ->
        {name: scalar}`` evaluated in the step at the first inner step; its values join each
        step's metrics (e.g. ``experiments.shared.metrics.prefix_metrics``: the shared-prefix
        statistics of Prop. 1). A hashable function (it keys the compiled step).
      compiler_options: XLA options for the warm-up and step compiles, e.g.
        ``{"xla_backend_optimization_level": 0}``, which compiles the tiny model's
        step 2-3x faster on CPU (but runs the small model ~4x slower); results
        may differ from the default compile in float rounding only. On GPU pass
        ``{"xla_gpu_deterministic_ops": True}`` for a bitwise-exact resume: XLA's
        GPU scatter-adds (embedding gradients) are otherwise non-deterministic,
        and Adam turns that noise into lr-sized differences.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: B or the warm-up batch not divisible by the device count, a
        mesh without a "data" axis, or a checkpoint written by another config.

    Metrics (float32 scalars per step): ``reward_mean``, ``accuracy``,
    ``valid_frac``, ``mixed_groups``; ``length_mean``, ``length_correct``,
    ``length_incorrect`` (NaN when no such completion), ``filler_mean``,
    ``entropy_mean``; ``clip_frac_high/low`` and ``kl`` at the last inner step;
    ``grad_norm_first``; ``objective_first`` / ``objective_last`` (J at the first
    and the last inner step, before its update) and ``objective_after``;
    ``ratio_min_after`` / ``ratio_max_after``; ``escape_frac`` (completion
    tokens whose ratio after the μ steps is above 1 + ε_high with A > 0 or below
    1 − ε_low with A < 0, :func:`jgrpo.optim.clip_excess`), ``escape_frac_high/low``
    and ``escape_max`` (the largest excess beyond the bound); ``logp_sampler_gap``
    (max |log π_sampler − log π_old recomputed|, ~1e-6); and those of ``metrics_fn``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if metrics_fn is not None and not callable(metrics_fn):
        raise TypeError(f"metrics_fn must be callable (spec, logp, batch) -> dict or None, got {metrics_fn!r}")
    mesh = data_mesh() if mesh is None else mesh
    _check_mesh(mesh)
    _check_divisible("TrainConfig.prompts_per_step", config.prompts_per_step, mesh)
    if config.warmup_steps > 0:
        _check_divisible("TrainConfig.warmup_batch", config.warmup_batch, mesh)

    key_data = np.asarray(jax.random.key_data(jax.random.key(config.seed)))
    options = _options(compiler_options)
    program = repr(_program_key(config))
    ckpt = None if out_dir is None else _Checkpointer(os.path.join(os.fspath(out_dir), "checkpoints"))
    try:
        latest = None if ckpt is None else ckpt.latest_step()
        if latest is not None:
            graphdef, abstract_params = make_transformer(jax.random.key(0), config.model)
            abstract_opt = jax.eval_shape(make_optimizer(config).init, abstract_params)
            abstract = {
                "params": _abstract(abstract_params, mesh),
                "opt_state": _abstract(abstract_opt, mesh),
                "ref_params": _abstract(abstract_params, mesh),
                "key": jax.ShapeDtypeStruct(key_data.shape, key_data.dtype),
            }
            state, meta = ckpt.restore(latest, abstract)
            if meta.get("config") != program:
                raise ValueError(
                    f"the checkpoint in {out_dir} was written by another config:\n  {meta.get('config')}\n"
                    f"this run's config (steps and checkpoint_every aside) is:\n  {program}"
                )
            if not np.array_equal(np.asarray(state["key"]), key_data):
                raise ValueError(f"the checkpoint in {out_dir} holds another RNG key than seed {config.seed}'s")
            params, opt_state, ref_params = state["params"], state["opt_state"], state["ref_params"]
            start, history = int(meta["step"]), list(meta["history"])
        else:
            graphdef, params, opt_state = _initial_state(config, mesh, options)
            ref_params, start, history = params, 0, []

        step_fn = _outer_step_fn(_program_key(config), graphdef, mesh, options, metrics_fn)
        every = config.checkpoint_every
        for s in range(start, config.steps):
            params, opt_state, metrics = step_fn(params, opt_state, ref_params, jnp.asarray(s, jnp.int32))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            history.append(metrics)
            done = s + 1
            if ckpt is not None and ((every and done % every == 0) or done == config.steps):
                ckpt.save(
                    done,
                    {"params": params, "opt_state": opt_state, "ref_params": ref_params, "key": key_data},
                    {"step": done, "config": program, "history": history},
                )
            if on_step is not None:
                on_step(s, metrics)
        return TrainResult(
            params=params,
            opt_state=opt_state,
            ref_params=ref_params,
            step=max(start, config.steps),
            history=history,
            graphdef=graphdef,
        )
    finally:
        if ckpt is not None:
            ckpt.close()
