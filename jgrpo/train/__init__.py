"""A real GRPO loop on a verifiable task: warm-up, sampling, rewards, μ inner steps, checkpoints.

One concern per module:

* :mod:`jgrpo.train.config`: :class:`TrainConfig` (frozen, hashable) and ``OPTIMIZERS``;
* :mod:`jgrpo.train.mesh`: the "data" / "fsdp" mesh (:func:`data_mesh`, :func:`make_mesh`),
  FSDP partitions (:func:`fsdp_spec`, :func:`fsdp_shardings`) and :func:`batch_sharding`;
* :mod:`jgrpo.train.logprob`: :func:`policy_logprob` of the temperature-τ policy and
  :func:`grouped_policy_logprob`, the same with the prompt run once per group (what the loop uses);
* :mod:`jgrpo.train.warmup` / :mod:`jgrpo.train.evaluate`: the supervised warm-up and evaluation;
* :mod:`jgrpo.train.optimizer`: :func:`make_optimizer`, the optax chain a config names;
* :mod:`jgrpo.train.step`: :func:`make_train_step`, one sharded step for any ``logprob_fn``
  (e.g. a :mod:`jgrpo.models` checkpoint) with :mod:`jgrpo.optim`'s extra args;
* :mod:`jgrpo.train.metrics`: in-step metrics and the :class:`MetricsFn` hook;
* :mod:`jgrpo.train.checkpoint`: orbax checkpoints;
* :mod:`jgrpo.train.loop`: the jitted outer step and :func:`train` (run or resume).

jgrpo never imports ``analysis`` or ``experiments``: analysis statistics (e.g. the
shared-prefix aggregates of Prop. 1) come in through ``train(..., metrics_fn=...)``.
"""

# The private helpers that jgrpo.train exposed as a single module stay importable from it.
from jgrpo.train.checkpoint import _abstract, _Checkpointer  # noqa: F401
from jgrpo.train.compile import _jit, _options  # noqa: F401
from jgrpo.train.config import OPTIMIZERS, TrainConfig, _program_key  # noqa: F401
from jgrpo.train.evaluate import evaluate
from jgrpo.train.logprob import grouped_policy_logprob, policy_logprob
from jgrpo.train.loop import TrainResult, train
from jgrpo.train.mesh import (  # noqa: F401
    DATA_AXIS,
    FSDP_AXIS,
    _batch_axes,
    _check_divisible,
    _check_mesh,
    _constrain,
    _place,
    _shard_batch,
    batch_sharding,
    data_mesh,
    fsdp_shardings,
    fsdp_spec,
    make_mesh,
)
from jgrpo.train.metrics import MetricsFn, escape_metrics, masked_mean
from jgrpo.train.optimizer import make_optimizer
from jgrpo.train.step import grad_and_update, make_train_step
from jgrpo.train.warmup import warmup

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "OPTIMIZERS",
    "MetricsFn",
    "TrainConfig",
    "TrainResult",
    "batch_sharding",
    "data_mesh",
    "escape_metrics",
    "evaluate",
    "fsdp_shardings",
    "fsdp_spec",
    "grad_and_update",
    "grouped_policy_logprob",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "masked_mean",
    "policy_logprob",
    "train",
    "warmup",
]
