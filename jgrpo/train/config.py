"""The static configuration of a GRPO run (:class:`TrainConfig`) and the optimizers it names."""

from __future__ import annotations

import dataclasses
from typing import Any

from jgrpo import methods, tasks
from jgrpo._validate import check_float, check_int
from jgrpo.methods import MethodSpec, Regularizer
from jgrpo.policies import TransformerConfig

__all__ = ["OPTIMIZERS", "TrainConfig"]

OPTIMIZERS = ("adamw", "sgd", "adam_with_reset", "adam_rel", "gated_adam", "guarded_adamw")


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
        check_int(own, "group_size", self.group_size, 2)
        check_int(own, "prompts_per_step", self.prompts_per_step, 1)
        if self.max_len is None:
            object.__setattr__(self, "max_len", self.task.max_len)
        check_int(own, "max_len", self.max_len, 2)
        check_float(own, "temperature", self.temperature, self.temperature > 0, "> 0 (greedy cannot be trained)")
        check_int(own, "inner_steps", self.inner_steps, 1)
        check_float(own, "learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{own}.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        check_float(own, "b1", self.b1, 0 <= self.b1 < 1, "in [0, 1)")
        check_float(own, "b2", self.b2, 0 <= self.b2 < 1, "in [0, 1)")
        check_float(own, "adam_eps", self.adam_eps, self.adam_eps >= 0, ">= 0")
        check_float(own, "momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        check_float(own, "weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        if self.max_grad_norm is not None:
            check_float(own, "max_grad_norm", self.max_grad_norm, self.max_grad_norm > 0, "> 0 or None")
        check_int(own, "seed", self.seed, 0)
        check_int(own, "steps", self.steps, 0)
        check_int(own, "checkpoint_every", self.checkpoint_every, 0)
        check_int(own, "warmup_steps", self.warmup_steps, 0)
        check_int(own, "warmup_batch", self.warmup_batch, 1)
        check_float(own, "warmup_learning_rate", self.warmup_learning_rate, self.warmup_learning_rate > 0, "> 0")
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
