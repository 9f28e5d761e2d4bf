"""One optimizer step of the GRPO loss (−J of Eq. 1) on a fixed batch, sharded, with jgrpo.optim's extra args."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jgrpo
from jgrpo.methods import MethodSpec
from jgrpo.train.mesh import (
    _check_divisible,
    _check_mesh,
    _constrain,
    _shard_batch,
    batch_sharding,
    fsdp_shardings,
)

__all__ = ["STEP_METRICS", "grad_and_update", "make_train_step"]

STEP_METRICS = ("loss", "grad_norm", "clip_frac_high", "clip_frac_low", "kl")


def grad_and_update(
    spec: MethodSpec,
    logp_fn: Callable[[Any], jax.Array],
    batch: jgrpo.GroupBatch,
    optimizer: optax.GradientTransformationExtraArgs,
    params: Any,
    opt_state: Any,
    new_batch: jax.Array | bool,
) -> tuple[Any, Any, jax.Array, dict[str, Any], Any]:
    """The gradient of ``jgrpo.loss(spec, logp_fn(params), batch)`` and one optax update with the extra args.

    Every update gets ``new_batch`` (the first step on this batch), ``clip_fraction``
    (``clip_frac_high + clip_frac_low`` of the loss at ``params``) and ``ratio_fn``
    (``params -> (ratio, advantages[..., None], mask)``), the signals of :mod:`jgrpo.optim`'s
    transforms; ``optimizer`` must accept them (``optax.with_extra_args_support`` makes a
    plain transformation ignore them). Shared by :func:`make_train_step` and the outer
    step of :func:`jgrpo.train.train`.

    Returns:
      ``(new_params, new_opt_state, loss, aux, grads)``.
    """

    def loss_fn(p):
        return jgrpo.loss(spec, logp_fn(p), batch)

    def ratio_fn(p):
        tm = jgrpo.terms(spec, logp_fn(p), batch)
        return tm.ratio, tm.advantages[..., None], batch.mask

    (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    clip_fraction = aux["clip_frac_high"] + aux["clip_frac_low"]
    updates, opt_state = optimizer.update(
        grads, opt_state, params, new_batch=new_batch, clip_fraction=clip_fraction, ratio_fn=ratio_fn
    )
    return optax.apply_updates(params, updates), opt_state, value, aux, grads


def make_train_step(
    logprob_fn: Callable[..., jax.Array],
    spec: MethodSpec,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh | None = None,
    *,
    donate: bool = True,
) -> Callable[..., tuple[Any, Any, dict[str, jax.Array]]]:
    """One sharded optimizer step on a fixed batch: ``step(params, opt_state, batch, prompt, prompt_mask=None,
    new_batch=True)``.

    Computes ``loss, aux = jgrpo.loss(spec, logprob_fn(params, batch.tokens, prompt[, prompt_mask]), batch)``
    (−J of Eq. 1), its gradient, and the optax update. The update gets :mod:`jgrpo.optim`'s
    extra args ``new_batch`` (the step's argument: True on the first inner step of a batch),
    ``clip_fraction`` and ``ratio_fn`` (see :func:`grad_and_update`), so extra-args transforms
    (``optim.gated_adam``, ``optim.adam_with_reset``, ``optim.trust_region_guard``, ...) work;
    a plain ``optax.GradientTransformation`` ignores them. Parameters and optimizer state are
    constrained to :func:`jgrpo.train.fsdp_shardings` (sharded over "fsdp", replicated over
    "data"), the batch and prompts to :func:`jgrpo.train.batch_sharding`; GSPMD inserts the
    collectives. With ``mesh=None`` nothing is constrained (one device, or whatever the inputs carry).

    Args:
      logprob_fn: ``(params, tokens [B, G, T], prompt [B, P][, prompt_mask]) -> logp [B, G, T]``
        (the :mod:`jgrpo.policies` protocol, e.g. :func:`jgrpo.models.logprob_fn`; its config's
        ``remat`` rematerialises the layers).
      spec: the method (static).
      optimizer: an ``optax.GradientTransformation`` or ``GradientTransformationExtraArgs``.
      mesh: a :func:`jgrpo.train.make_mesh` / :func:`jgrpo.train.data_mesh` mesh or None.
      donate: donate ``params`` and ``opt_state`` to the step (in-place update on accelerators).

    Returns:
      The jitted step, returning ``(params, opt_state, metrics)`` with metrics ``loss``,
      ``grad_norm``, ``clip_frac_high``, ``clip_frac_low`` and ``kl`` (float32 scalars).
    """
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"spec must be a MethodSpec (jgrpo.methods.get(name)), got {type(spec).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    if mesh is not None:
        _check_mesh(mesh)
    opt = optax.with_extra_args_support(optimizer)
    shard = functools.partial(_shard_batch, mesh=mesh)

    def step(params, opt_state, batch, prompt, prompt_mask, new_batch):
        params, opt_state = _constrain(params, mesh), _constrain(opt_state, mesh)
        batch = jax.tree.map(shard, batch)
        prompt = shard(prompt)
        prompt_mask = None if prompt_mask is None else shard(prompt_mask)

        def logp_fn(p):
            if prompt_mask is None:
                return logprob_fn(p, batch.tokens, prompt)
            return logprob_fn(p, batch.tokens, prompt, prompt_mask)

        params, opt_state, value, aux, grads = grad_and_update(spec, logp_fn, batch, opt, params, opt_state, new_batch)
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
        return lambda params, opt_state, batch, prompt, prompt_mask=None, new_batch=True: jitted(
            params, opt_state, batch, prompt, prompt_mask, jnp.asarray(new_batch, bool)
        )
    compiled: dict[Any, Callable] = {}
    repl = NamedSharding(mesh, P())

    def run(params, opt_state, batch, prompt, prompt_mask=None, new_batch=True):
        _check_divisible("the number of prompts B", int(np.shape(prompt)[0]), mesh)
        # Explicit in/out shardings, built once per parameter/optimizer-state structure.
        abstract = jax.tree.map(lambda x: (np.shape(x), jnp.result_type(x)), (params, opt_state))
        key = (jax.tree.structure((params, opt_state, batch, prompt, prompt_mask)), str(abstract))
        if key not in compiled:
            ps, os_ = fsdp_shardings(params, mesh), fsdp_shardings(opt_state, mesh)
            bs = jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)), (batch, prompt, prompt_mask))
            metrics = dict.fromkeys(STEP_METRICS, repl)
            compiled[key] = jax.jit(
                step,
                in_shardings=(ps, os_, *bs, repl),
                out_shardings=(ps, os_, metrics),
                donate_argnums=donate_argnums,
            )
        return compiled[key](params, opt_state, batch, prompt, prompt_mask, jnp.asarray(new_batch, bool))

    return run
