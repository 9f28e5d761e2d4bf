"""The length_bias experiment's sizes: a frozen :class:`Config`, the named ones (``_config(scale)``), the methods."""

from __future__ import annotations

import dataclasses

NAME = "length_bias"
CONTROL = "1/|o|² control"
METHODS = ("grpo", "dr_grpo", "dapo", "gspo", "grpo+debias", CONTROL)
REQUIRED = ("grpo", "dr_grpo", CONTROL)  # what the claims read
OPTIMIZERS = (("adam", "Adam"), ("ngd", "normalised gradient descent"))
LEVELS = 5  # matched-progress levels per seed
MIN_GAIN = 0.05  # the least common gain of E[r] that is compared at matched progress


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes of one run (frozen; :func:`_config` gives the named ones).

    Attributes:
      difficulties: d_k, the R tokens prompt k needs before its answer.
      methods: a subset of :data:`METHODS` containing :data:`REQUIRED`.
      length: T, the longest completion.
      init_scale: std of the noise added to the prior logits.
      seeds: independent initial policies and sample streams (>= 5 for a decisive verdict).
      outer_steps, prompts_per_step, group_size, inner_steps: training.
      learning_rate: Adam's η; ngd_learning_rate: the step length of normalised gradient descent.
      drift_groups: groups sampled for each exact drift measurement.
      checkpoints: outer steps (of the dr_grpo run) at which the drift is also measured; 0 = θ_0.
    """

    difficulties: tuple[int, ...] = (2, 4, 6, 8)
    methods: tuple[str, ...] = METHODS
    length: int = 32
    init_scale: float = 0.5
    seeds: int = 6
    outer_steps: int = 300
    prompts_per_step: int = 8
    group_size: int = 8
    inner_steps: int = 2
    learning_rate: float = 0.02
    ngd_learning_rate: float = 0.25
    drift_groups: int = 1024
    checkpoints: tuple[int, ...] = (0, 100, 200)

    def __post_init__(self) -> None:
        if not self.difficulties or min(self.difficulties) < 1:
            raise ValueError(f"Config.difficulties must be ints >= 1, got {self.difficulties}")
        if not set(REQUIRED) <= set(self.methods) <= set(METHODS):
            raise ValueError(f"Config.methods must contain {REQUIRED} and lie in {METHODS}, got {self.methods}")
        if max(self.difficulties) + 2 > self.length:
            raise ValueError(
                f"Config.length must leave room for the hardest prompt: max(difficulties) + 2 = "
                f"{max(self.difficulties) + 2} > length = {self.length}"
            )
        if self.seeds < 2 or self.group_size < 2 or self.inner_steps < 1 or self.outer_steps < 2:
            raise ValueError(
                "Config.seeds >= 2, group_size >= 2, inner_steps >= 1 and outer_steps >= 2 required, got "
                f"{self.seeds}, {self.group_size}, {self.inner_steps}, {self.outer_steps}"
            )
        if self.prompts_per_step % len(self.difficulties) or self.drift_groups % len(self.difficulties):
            raise ValueError(
                f"Config.prompts_per_step and drift_groups must be multiples of the number of prompts "
                f"{len(self.difficulties)}, got {self.prompts_per_step}, {self.drift_groups}"
            )
        if not self.checkpoints or self.checkpoints[0] != 0 or list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"Config.checkpoints must be increasing and start at 0, got {self.checkpoints}")
        if self.checkpoints[-1] >= self.outer_steps:
            raise ValueError(f"Config.checkpoints must be < outer_steps = {self.outer_steps}, got {self.checkpoints}")
        if not (self.learning_rate > 0 and self.ngd_learning_rate > 0):
            raise ValueError(
                f"Config.learning_rate and ngd_learning_rate must be > 0, got {self.learning_rate}, "
                f"{self.ngd_learning_rate}"
            )


def _config(scale: str) -> Config:
    """``quick`` (CPU, < 3 min), ``paper`` (accelerator) and ``test`` (seconds)."""
    if scale == "quick":
        return Config()
    if scale == "paper":
        return Config(
            difficulties=(2, 4, 6, 8, 10, 12),
            length=48,
            seeds=16,
            outer_steps=1000,
            prompts_per_step=24,
            group_size=16,
            drift_groups=6144,
            checkpoints=(0, 250, 500, 750),
        )
    if scale == "test":
        return Config(
            difficulties=(1, 3),
            length=8,
            seeds=2,
            outer_steps=6,
            prompts_per_step=2,
            group_size=4,
            drift_groups=16,
            checkpoints=(0, 3),
            methods=REQUIRED,
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")
