"""A real GRPO loop on a verifiable task: warm-up, sampling, rewards, μ inner steps, checkpoints.

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
   (Prop. 3), the shared-prefix aggregate W_agg at the first inner step
   (Prop. 1) and the surrogate J at the first and last inner steps (Prop. 4).

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

import dataclasses
import functools
import math
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
from analysis import overshoot
from analysis import prefix as _prefix
from jgrpo import methods, optim, tasks
from jgrpo.methods import MethodSpec, Regularizer
from jgrpo.policies import TransformerConfig, make_transformer, nnx_logits_fn
from jgrpo.sampling import sample

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "TrainResult",
    "batch_sharding",
    "data_mesh",
    "evaluate",
    "fsdp_shardings",
    "fsdp_spec",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "policy_logprob",
    "train",
    "warmup",
]

OPTIMIZERS = ("adamw", "sgd", "adam_with_reset", "adam_rel", "gated_adam", "guarded_adamw")
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


# ----------------------------------------------------------------------------- config


def _check_int(owner: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}.{name} must be an int >= {low}, got {value!r}")


def _check_float(owner: str, name: str, value: Any, ok: bool, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok:
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Static configuration of a GRPO run (frozen, hashable, keyword-only).

    Attributes:
      task: the :class:`jgrpo.tasks.ArithmeticTask`.
      model: the policy's :class:`TransformerConfig`; None gives
        ``TransformerConfig.tiny(vocab=V, max_len=P + T)``. Its ``vocab`` must be
        ``task.vocab_size`` and its ``max_len`` at least ``P + T``.
      method: a preset name (``jgrpo.methods.names()``) or a :class:`MethodSpec`;
        β, ε and the weights all come from it.
      method_overrides: ``((field, value), ...)`` replacing fields of the method
        (a tuple of pairs, so the config stays hashable).
      group_size: G >= 2 completions per prompt.
      prompts_per_step: B prompts per outer step (divisible by the number of devices).
      max_len: T completion tokens sampled; None gives ``task.max_len``.
      temperature: τ > 0 of the policy (sampling and loss alike).
      inner_steps: μ >= 1 optimizer steps per batch.
      learning_rate: η > 0.
      optimizer: one of ``OPTIMIZERS``: ``adamw``; ``sgd`` (with ``momentum``);
        ``adam_with_reset`` (fresh Adam state every batch); ``adam_rel`` (Adam
        whose count restarts every batch); ``gated_adam`` (momentum gated by the
        clip fraction); ``guarded_adamw`` (AdamW then
        :func:`jgrpo.optim.trust_region_guard` with the method's ε).
      b1, b2, adam_eps: Adam's β1, β2, ε.
      momentum: SGD momentum (0 = plain SGD).
      weight_decay: decoupled weight decay (every optimizer; 0 = off).
      max_grad_norm: global-norm clipping of the gradient; None = off.
      seed: the run's seed; every random draw is fold_in(key(seed), ...).
      steps: outer steps to run in total.
      checkpoint_every: save every N outer steps (and at the end); 0 saves at the
        end only. Used when ``train`` gets an ``out_dir``.
      warmup_steps, warmup_batch, warmup_learning_rate: the supervised warm-up
        (:func:`warmup`) run on the initial policy before GRPO; 0 steps skips it.
    """

    task: tasks.ArithmeticTask = tasks.ArithmeticTask()
    model: TransformerConfig | None = None
    method: str | MethodSpec = "grpo"
    method_overrides: tuple[tuple[str, Any], ...] = ()
    group_size: int = 8
    prompts_per_step: int = 16
    max_len: int | None = None
    temperature: float = 1.0
    inner_steps: int = 4
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    seed: int = 0
    steps: int = 20
    checkpoint_every: int = 0
    warmup_steps: int = 300
    warmup_batch: int = 64
    warmup_learning_rate: float = 3e-3

    def __post_init__(self) -> None:
        own = "TrainConfig"
        if not isinstance(self.task, tasks.ArithmeticTask):
            raise TypeError(f"{own}.task must be an ArithmeticTask, got {type(self.task).__name__}")
        if not isinstance(self.method, (str, MethodSpec)):
            raise TypeError(f"{own}.method must be a preset name or a MethodSpec, got {type(self.method).__name__}")
        if not isinstance(self.method_overrides, tuple) or not all(
            isinstance(kv, tuple) and len(kv) == 2 and isinstance(kv[0], str) for kv in self.method_overrides
        ):
            raise ValueError(
                f"{own}.method_overrides must be a tuple of (field, value) pairs, got {self.method_overrides!r}"
            )
        _check_int(own, "group_size", self.group_size, 2)
        _check_int(own, "prompts_per_step", self.prompts_per_step, 1)
        if self.max_len is None:
            object.__setattr__(self, "max_len", self.task.max_len)
        _check_int(own, "max_len", self.max_len, 2)
        _check_float(own, "temperature", self.temperature, self.temperature > 0, "> 0 (greedy cannot be trained)")
        _check_int(own, "inner_steps", self.inner_steps, 1)
        _check_float(own, "learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{own}.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        _check_float(own, "b1", self.b1, 0 <= self.b1 < 1, "in [0, 1)")
        _check_float(own, "b2", self.b2, 0 <= self.b2 < 1, "in [0, 1)")
        _check_float(own, "adam_eps", self.adam_eps, self.adam_eps >= 0, ">= 0")
        _check_float(own, "momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        _check_float(own, "weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        if self.max_grad_norm is not None:
            _check_float(own, "max_grad_norm", self.max_grad_norm, self.max_grad_norm > 0, "> 0 or None")
        _check_int(own, "seed", self.seed, 0)
        _check_int(own, "steps", self.steps, 0)
        _check_int(own, "checkpoint_every", self.checkpoint_every, 0)
        _check_int(own, "warmup_steps", self.warmup_steps, 0)
        _check_int(own, "warmup_batch", self.warmup_batch, 1)
        _check_float(own, "warmup_learning_rate", self.warmup_learning_rate, self.warmup_learning_rate > 0, "> 0")
        total = self.task.prompt_len + self.max_len
        if self.model is None:
            object.__setattr__(self, "model", TransformerConfig.tiny(vocab=self.task.vocab_size, max_len=total))
        if not isinstance(self.model, TransformerConfig):
            raise TypeError(f"{own}.model must be a TransformerConfig or None, got {type(self.model).__name__}")
        if self.model.vocab != self.task.vocab_size:
            raise ValueError(
                f"{own}.model.vocab must be the task's vocab_size {self.task.vocab_size}, got {self.model.vocab}"
            )
        if self.model.max_len < total:
            raise ValueError(
                f"{own}.model.max_len must be >= prompt_len + max_len = {self.task.prompt_len} + {self.max_len} "
                f"= {total}, got {self.model.max_len}"
            )
        self.spec  # noqa: B018 - validates the method and its overrides now

    @property
    def spec(self) -> MethodSpec:
        """The :class:`MethodSpec` of the run (the method with ``method_overrides`` applied)."""
        overrides = dict(self.method_overrides)
        if isinstance(self.method, MethodSpec):
            return self.method.replace(**overrides) if overrides else self.method
        return methods.get(self.method, **overrides)

    @property
    def needs_ref(self) -> bool:
        """Whether the loss reads log π_ref (a KL regularizer with β > 0)."""
        s = self.spec
        return s.beta > 0 and s.regularizer in (Regularizer.KL, Regularizer.KL_IMPORTANCE)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **overrides)


def _program_key(config: TrainConfig) -> TrainConfig:
    """The config without the fields that do not change the compiled step or the trajectory."""
    return config.replace(steps=0, checkpoint_every=0)


# ----------------------------------------------------------------------------- mesh


def data_mesh(devices: Any = None) -> jax.sharding.Mesh:
    """A 1-D mesh with the axis "data" over ``devices`` (default: every device of every process).

    Call ``jax.distributed.initialize()`` first on multi-host systems.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def make_mesh(*, fsdp: int = 1, data: int | None = None, devices: Any = None) -> jax.sharding.Mesh:
    """A 2-D mesh ``("data", "fsdp")`` of ``data x fsdp`` devices (default: every device of every process).

    Args:
      fsdp: devices each parameter is split over (1 = replicated parameters).
      data: data-parallel replicas; default ``len(devices) // fsdp``.
      devices: the devices (default ``jax.devices()``; call ``jax.distributed.initialize()``
        first on multi-host systems).

    Raises:
      ValueError: ``data * fsdp`` is not the number of devices.
    """
    devices = jax.devices() if devices is None else list(devices)
    _check_int("make_mesh", "fsdp", fsdp, 1)
    data = len(devices) // fsdp if data is None else data
    _check_int("make_mesh", "data", data, 1)
    if data * fsdp != len(devices):
        raise ValueError(f"make_mesh: data * fsdp = {data} * {fsdp} must equal the number of devices ({len(devices)})")
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, fsdp), (DATA_AXIS, FSDP_AXIS), axis_types=(auto, auto), devices=devices)


def _batch_axes(mesh: Any) -> tuple[str, ...]:
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.shape)


def _check_mesh(mesh: Any) -> None:
    names = tuple(mesh.shape)
    if names not in ((DATA_AXIS,), (DATA_AXIS, FSDP_AXIS)):
        raise ValueError(
            f"mesh must have the axes ('{DATA_AXIS}',) or ('{DATA_AXIS}', '{FSDP_AXIS}') (see data_mesh, make_mesh), "
            f"got axes {dict(mesh.shape)}"
        )


def _check_divisible(name: str, batch: int, mesh: jax.sharding.Mesh) -> None:
    axes = _batch_axes(mesh)
    n = int(np.prod([mesh.shape[a] for a in axes]))
    if batch % n:
        raise ValueError(
            f"{name} = {batch} must be divisible by the number of devices on the mesh's batch axes {axes} ({n}); "
            f"use a multiple of {n}"
        )


def fsdp_spec(shape: tuple[int, ...], n: int) -> P:
    """The FSDP partition of a parameter of ``shape`` over ``n`` devices: its largest dimension divisible by n.

    The leading axis of a rank >= 3 leaf (the stacked layer axis of :mod:`jgrpo.models`,
    sliced by the layer scan) is not split. Leaves with no divisible dimension (scalars,
    small vectors) are replicated. Ties go to the last dimension.
    """
    if n <= 1:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % n == 0 and d >= n and not (len(shape) >= 3 and i == 0)]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], i))
    return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def fsdp_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """A pytree of ``NamedSharding`` for ``tree`` (arrays or ``ShapeDtypeStruct`` leaves): :func:`fsdp_spec` over
    the mesh's "fsdp" axis, replicated over "data" (fully replicated on a mesh without "fsdp")."""
    n = mesh.shape.get(FSDP_AXIS, 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), n)), tree)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
    """Leading axis over every batch axis of the mesh ("data" and "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(_batch_axes(mesh), *([None] * (ndim - 1))))


def _place(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every leaf placed with its :func:`fsdp_shardings` (from host values, so it also works across processes)."""
    shardings = fsdp_shardings(tree, mesh)
    return jax.tree.map(lambda x, sh: jax.device_put(np.asarray(jax.device_get(x)), sh), tree, shardings)


def _constrain(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """``with_sharding_constraint`` of every leaf to its :func:`fsdp_shardings` (inside jit)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, fsdp_shardings(tree, mesh))


def _shard_batch(x: jax.Array, mesh: jax.sharding.Mesh | None) -> jax.Array:
    """Constrains the leading (prompt) axis of ``x`` to the batch axes ("data", and "fsdp" when present)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim))


# ----------------------------------------------------------------------------- policy


def policy_logprob(
    logits_fn: Callable[[Any, jax.Array], jax.Array], params: Any, tokens: jax.Array, prompt: jax.Array, temperature
) -> tuple[jax.Array, jax.Array]:
    """log π_θ and entropy ``[B, G, T]`` of the temperature-τ policy softmax(logits / τ).

    Args:
      logits_fn: causal ``(params, ids [N, L]) -> logits [N, L, V]``.
      params: the policy parameters.
      tokens: ``[B, G, T]`` int completions.
      prompt: ``[B, P]`` int prompts.
      temperature: τ > 0 (scalar).

    Returns:
      ``(logp, entropy)``, both ``[B, G, T]`` float32. With τ = 1 these equal
      :func:`jgrpo.policies.nnx_logprob_and_entropy_fn`'s.
    """
    b, g, t = tokens.shape
    p = prompt.shape[-1]
    prompt_BGP = jnp.broadcast_to(prompt[:, None, :], (b, g, p)).astype(jnp.int32)
    ids = jnp.concatenate([prompt_BGP, tokens.astype(jnp.int32)], axis=-1).reshape(b * g, p + t)
    logits_NTV = logits_fn(params, ids)[:, p - 1 : p + t - 1].astype(jnp.float32) / temperature
    logp_NTV = jax.nn.log_softmax(logits_NTV, axis=-1).reshape(b, g, t, -1)
    logp = jnp.take_along_axis(logp_NTV, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    prob = jnp.exp(logp_NTV)
    entropy = -jnp.sum(jnp.where(prob > 0, prob * logp_NTV, 0.0), axis=-1)
    return logp, entropy


# ----------------------------------------------------------------------------- warm-up and evaluation


def _options(compiler_options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Compiler options as a hashable, sorted tuple (a cache key)."""
    if compiler_options is None:
        return ()
    if not isinstance(compiler_options, Mapping):
        raise TypeError(f"compiler_options must be a mapping or None, got {type(compiler_options).__name__}")
    return tuple(sorted(compiler_options.items()))


def _jit(fn: Callable, options: tuple[tuple[str, Any], ...], **kwargs: Any) -> Callable:
    return jax.jit(fn, compiler_options=dict(options) if options else None, **kwargs)


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
    _check_int("warmup", "steps", steps, 1)
    _check_int("warmup", "batch_size", batch_size, 1)
    if mesh is not None:
        _check_divisible("batch_size", batch_size, mesh)
    fn = _warmup_fn(task, graphdef, int(steps), int(batch_size), mesh, _options(compiler_options))
    return fn(params, key, jnp.asarray(learning_rate, jnp.float32))


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
    _check_int("evaluate", "num_prompts", num_prompts, 1)
    _check_int("evaluate", "group_size", group_size, 1)
    max_len = task.max_len if max_len is None else max_len
    _check_int("evaluate", "max_len", max_len, 1)
    _check_float("evaluate", "temperature", temperature, temperature >= 0, ">= 0")
    fn = _evaluate_fn(task, graphdef, int(num_prompts), int(group_size), int(max_len), _options(compiler_options))
    out = fn(params, key, jnp.asarray(temperature, jnp.float32))
    return {k: float(v) for k, v in jax.device_get(out).items()}


# ----------------------------------------------------------------------------- optimizer


def make_optimizer(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """The optax chain named by ``config.optimizer`` (extra-args form).

    Every update is called with the extra args ``new_batch`` (first inner step of
    a batch), ``clip_fraction`` (``clip_frac_high + clip_frac_low`` of the loss at
    the current params) and ``ratio_fn``; transforms ignore those they do not use.
    """
    spec, lr = config.spec, config.learning_rate
    adam = dict(b1=config.b1, b2=config.b2, eps=config.adam_eps)
    name = config.optimizer
    if name == "sgd":
        core = optax.trace(decay=config.momentum) if config.momentum > 0 else optax.identity()
    elif name in ("adamw", "guarded_adamw"):
        core = optax.scale_by_adam(**adam)
    elif name == "adam_with_reset":
        core = optim.scale_by_adam_with_reset(**adam, reset="all")
    elif name == "adam_rel":
        core = optim.scale_by_adam_with_reset(**adam, reset="count")
    else:  # gated_adam
        core = optim.scale_by_gated_adam(**adam)
    parts = []
    if config.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(core)
    if config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.scale_by_learning_rate(lr))
    if name == "guarded_adamw":
        parts.append(optim.trust_region_guard(eps_low=spec.eps_low, eps_high=spec.eps_high))
    return optax.chain(*parts)


def make_train_step(
    logprob_fn: Callable[..., jax.Array],
    spec: MethodSpec,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh | None = None,
    *,
    donate: bool = True,
) -> Callable[..., tuple[Any, Any, dict[str, jax.Array]]]:
    """One sharded optimizer step on a fixed batch: ``step(params, opt_state, batch, prompt, prompt_mask=None)``.

    Computes ``loss, aux = jgrpo.loss(spec, logprob_fn(params, batch.tokens, prompt[, prompt_mask]), batch)``
    (−J of Eq. 1), its gradient, and the optax update. Parameters and optimizer state are
    constrained to :func:`fsdp_shardings` (sharded over "fsdp", replicated over "data"),
    the batch and prompts to :func:`batch_sharding`; GSPMD inserts the collectives. With
    ``mesh=None`` nothing is constrained (one device, or whatever the inputs carry).

    Args:
      logprob_fn: ``(params, tokens [B, G, T], prompt [B, P][, prompt_mask]) -> logp [B, G, T]``
        (e.g. :func:`jgrpo.models.logprob_fn`; its config's ``remat`` rematerialises the layers).
      spec: the method (static).
      optimizer: a plain ``optax.GradientTransformation`` (e.g. ``optax.adamw``).
      mesh: a :func:`make_mesh` / :func:`data_mesh` mesh or None.
      donate: donate ``params`` and ``opt_state`` to the step (in-place update on accelerators).

    Returns:
      The jitted step, returning ``(params, opt_state, metrics)`` with metrics ``loss``,
      ``grad_norm``, ``clip_frac_high``, ``clip_frac_low`` and ``kl`` (float32 scalars).
    """
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a MethodSpec (jgrpo.methods.get(name)), got {type(spec).__name__}")
    if mesh is not None:
        _check_mesh(mesh)
    shard = functools.partial(_shard_batch, mesh=mesh)

    def step(params, opt_state, batch, prompt, prompt_mask):
        params, opt_state = _constrain(params, mesh), _constrain(opt_state, mesh)
        batch = jax.tree.map(shard, batch)
        prompt = shard(prompt)
        prompt_mask = None if prompt_mask is None else shard(prompt_mask)

        def loss_fn(p):
            if prompt_mask is None:
                logp = logprob_fn(p, batch.tokens, prompt)
            else:
                logp = logprob_fn(p, batch.tokens, prompt, prompt_mask)
            return jgrpo.loss(spec, logp, batch)

        (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss": value,
            "grad_norm": optax.tree.norm(grads),
            "clip_frac_high": aux["clip_frac_high"],
            "clip_frac_low": aux["clip_frac_low"],
            "kl": aux["kl"],
        }
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return _constrain(params, mesh), _constrain(opt_state, mesh), metrics

    donate_argnums = (0, 1) if donate else ()
    if mesh is None:
        jitted = jax.jit(step, donate_argnums=donate_argnums)
        return lambda params, opt_state, batch, prompt, prompt_mask=None: jitted(
            params, opt_state, batch, prompt, prompt_mask
        )
    compiled: dict[Any, Callable] = {}
    repl = NamedSharding(mesh, P())

    def run(params, opt_state, batch, prompt, prompt_mask=None):
        _check_divisible("the number of prompts B", int(np.shape(prompt)[0]), mesh)
        # Explicit in/out shardings, built once per parameter/optimizer-state structure.
        abstract = jax.tree.map(lambda x: (np.shape(x), jnp.result_type(x)), (params, opt_state))
        key = (jax.tree.structure((params, opt_state, batch, prompt, prompt_mask)), str(abstract))
        if key not in compiled:
            ps, os_ = fsdp_shardings(params, mesh), fsdp_shardings(opt_state, mesh)
            bs = jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)), (batch, prompt, prompt_mask))
            metrics = dict.fromkeys(("loss", "grad_norm", "clip_frac_high", "clip_frac_low", "kl"), repl)
            compiled[key] = jax.jit(
                step, in_shardings=(ps, os_, *bs), out_shardings=(ps, os_, metrics), donate_argnums=donate_argnums
            )
        return compiled[key](params, opt_state, batch, prompt, prompt_mask)

    return run


# ----------------------------------------------------------------------------- the outer step


def _masked_mean(x, where):
    w = where.astype(jnp.float32)
    n = jnp.sum(w)
    return jnp.where(n > 0, jnp.sum(jnp.where(where, x, 0.0)) / jnp.maximum(n, 1.0), jnp.nan)


def _escape(spec: MethodSpec, ratio, advantages, mask):
    """Tokens whose ratio is beyond the clip bound in the advantage-favoured direction (Prop. 3)."""
    e = overshoot.escape(ratio, advantages, mask, eps_low=spec.eps_low, eps_high=spec.eps_high)
    return {
        "escape_frac_high": e.frac_high,
        "escape_frac_low": e.frac_low,
        "escape_frac": e.frac,
        "escape_max": jnp.maximum(e.max_excess_high, e.max_excess_low),
    }


def _wagg_stats(spec: MethodSpec, logp, batch: jgrpo.GroupBatch):
    """Shared-prefix statistics of Prop. 1 at the first inner step (analysis.prefix)."""
    coef = _prefix.coefficients(spec, logp, batch)
    tree = _prefix.prefix_tree(batch.tokens, batch.mask)
    wagg = _prefix.w_agg(coef, tree)
    g = batch.mask.shape[-2]
    m = batch.mask.astype(bool)
    all_shared = tree.node_size == g  # [B, G, T], shared by the whole group
    node_all = all_shared & tree.representative
    node_shared = tree.shared & tree.representative
    return {
        "shared_all_frac": jnp.sum(all_shared & m) / jnp.maximum(jnp.sum(m), 1),
        "wagg_shared_all_abs": _masked_mean(jnp.abs(wagg), node_all),
        "wagg_shared_all_mean": _masked_mean(wagg, node_all),
        "wagg_shared_abs": _masked_mean(jnp.abs(wagg), node_shared),
        "coef_abs_mean": _masked_mean(jnp.abs(coef), m),
    }


@functools.cache
def _outer_step_fn(config: TrainConfig, graphdef: Any, mesh: jax.sharding.Mesh, options: tuple = ()) -> Callable:
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
        logp_fn = lambda p: policy_logprob(logits_fn, p, tokens, prompt, tau)  # noqa: E731
        logp_old, entropy = jax.lax.stop_gradient(logp_fn(params))
        logp_ref = jax.lax.stop_gradient(logp_fn(ref_params)[0]) if needs_ref else None
        batch = jgrpo.GroupBatch(
            mask=mask, logp_old=logp_old, rewards=rewards, logp_ref=logp_ref, tokens=tokens, entropy=entropy
        )

        def loss_fn(p):
            return jgrpo.loss(spec, logp_fn(p)[0], batch)

        def ratio_fn(p):
            tm = jgrpo.terms(spec, logp_fn(p)[0], batch)
            return tm.ratio, tm.advantages[..., None], mask

        def inner(carry, k):
            p, state = carry
            (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
            clip_fraction = aux["clip_frac_high"] + aux["clip_frac_low"]
            updates, state = opt.update(
                grads, state, p, new_batch=k == 0, clip_fraction=clip_fraction, ratio_fn=ratio_fn
            )
            p = optax.apply_updates(p, updates)
            ys = {
                "objective": -value,
                "clip_frac_high": aux["clip_frac_high"],
                "clip_frac_low": aux["clip_frac_low"],
                "kl": aux["kl"],
                "grad_norm": _prefix.tree_norm(grads),
            }
            return (p, state), ys

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
            "length_correct": _masked_mean(length, correct),
            "length_incorrect": _masked_mean(length, ~correct),
            "filler_mean": jnp.mean(parsed.num_filler.astype(jnp.float32)),
            "entropy_mean": _masked_mean(entropy, m),
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
            **_escape(spec, after.ratio, after.advantages, mask),
            **_wagg_stats(spec, logp_old, batch),
        }
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


# ----------------------------------------------------------------------------- train


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


def _abstract(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    shardings = fsdp_shardings(tree, mesh)
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh), tree, shardings)


class _Checkpointer:
    """orbax CheckpointManager holding ``state`` (arrays) and ``meta`` (JSON) per step."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp  # optional dependency (the "checkpoint" extra)

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.fspath(directory)),
            options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
        args = self._ocp.args
        self.manager.save(
            step, args=args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta)), force=True
        )

    def restore(self, step: int, abstract_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        args = self._ocp.args
        out = self.manager.restore(
            step, args=args.Composite(state=args.StandardRestore(abstract_state), meta=args.JsonRestore())
        )
        return out["state"], out["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    compiler_options: Mapping[str, Any] | None = None,
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
    1 − ε_low with A < 0), ``escape_frac_high/low`` and ``escape_max`` (the
    largest excess beyond the bound); ``shared_all_frac`` (tokens in a prefix
    shared by the whole group), ``wagg_shared_all_abs`` / ``wagg_shared_all_mean``
    (mean |W_agg| and mean W_agg over the nodes shared by the whole group, Prop. 1,
    at the first inner step; NaN when there are none), ``wagg_shared_abs`` (over
    all shared nodes), ``coef_abs_mean`` (mean |dJ/dlogp| for scale);
    ``logp_sampler_gap`` (max |log π_sampler − log π_old recomputed|, ~1e-6).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
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

        step_fn = _outer_step_fn(_program_key(config), graphdef, mesh, options)
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
