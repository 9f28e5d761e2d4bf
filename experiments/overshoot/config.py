"""The overshoot experiment's sizes: a frozen :class:`Config` and the named ones (``_config(scale)``)."""

from __future__ import annotations

import dataclasses

from experiments.shared.sweep import PolicyConfig

NAME = "overshoot"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes of one run (frozen; ``_config(scale)`` gives the named ones).

    Attributes:
      policies: the sweeps, tabular first.
      beta2, adam_eps: Adam's β2 and ε (all optimizers; RMSProp's decay is β2).
      levels: common progress levels at which optimizers are compared.
      closed_T, closed_K: part (a), T = 2..closed_T, k = 0..closed_K-1.
      eq38_T: T of the varying-history check of Eq. 38.
    """

    policies: tuple[PolicyConfig, ...]
    beta2: float = 0.95
    adam_eps: float = 1e-8
    levels: int = 5
    closed_T: int = 51
    closed_K: int = 5
    eq38_T: int = 12

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("Config.policies must not be empty")
        if self.closed_T < 2 or self.closed_K < 1 or self.eq38_T < 2:
            raise ValueError(f"Config needs closed_T >= 2, closed_K >= 1, eq38_T >= 2, got {self}")
        if self.levels < 1:
            raise ValueError(f"Config.levels must be >= 1, got {self.levels}")


def _geometric(start: float, factor: float, n: int) -> tuple[float, ...]:
    return tuple(float(f"{start * factor**k:.4g}") for k in range(n))


def _config(scale: str) -> Config:
    """``quick`` (CPU), ``paper`` (accelerator) and ``test`` (tiny, for the tests) sizes."""
    if scale == "quick":
        return Config(
            policies=(
                PolicyConfig(kind="tabular", seeds=16, learning_rates=_geometric(0.0025, 2**0.5, 13)),
                PolicyConfig(
                    kind="transformer",
                    prompt_len=4,
                    seeds=5,
                    num_batches=3,
                    learning_rates=_geometric(1.25e-5, 2.0, 7),
                    optimizers=("adam_b0", "adam_b0.9", "reset", "projection", "gate", "guard"),
                ),
            )
        )
    if scale == "paper":
        return Config(
            policies=(
                PolicyConfig(kind="tabular", seeds=32, num_batches=8, learning_rates=_geometric(0.0025, 2**0.25, 25)),
                PolicyConfig(
                    kind="transformer",
                    model="small",
                    vocab=64,
                    prompt_len=8,
                    completion_len=32,
                    num_prompts=16,
                    group_size=16,
                    seeds=8,
                    num_batches=8,
                    learning_rates=_geometric(1.25e-6, 2**0.5, 13),
                ),
            ),
            closed_T=101,
            closed_K=8,
        )
    if scale == "test":
        return Config(
            policies=(
                PolicyConfig(
                    kind="tabular",
                    vocab=6,
                    completion_len=4,
                    num_prompts=2,
                    group_size=4,
                    num_batches=2,
                    mu=3,
                    seeds=2,
                    learning_rates=(0.05, 0.1, 0.2),
                ),
            ),
            levels=3,
            closed_T=8,
            closed_K=3,
            eq38_T=5,
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")
