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


ADAM_FAMILY = ("adam_b0", "adam_b0.5", "adam_b0.9", "adam_b0.95", "reset", "projection", "gate", "guard")


def checkpoint_policy(scale: str, path: str) -> PolicyConfig:
    """The sweep on the Hugging Face checkpoint at ``path`` (``--model PATH``) at ``scale``.

    Only Adam-kind optimizers (one Adam state beside the parameters; RMSProp and SGD would add
    two more parameter-sized states). The η grids are for a pre-trained LM under Adam (its
    per-step change of a weight is about η); they were not tuned on any checkpoint. ``test`` is
    for the tiny random-weight checkpoint of the tests (larger η: it must move within 2 steps).
    """
    if scale == "quick":
        return PolicyConfig(
            kind="checkpoint", checkpoint=path, completion_len=32, num_prompts=2, group_size=4, num_batches=3,
            mu=4, seeds=5, learning_rates=_geometric(2e-6, 2.0, 5),
            optimizers=("adam_b0", "adam_b0.9", "reset", "projection", "gate", "guard"),
        )  # fmt: skip
    if scale == "paper":
        return PolicyConfig(
            kind="checkpoint", checkpoint=path, completion_len=128, num_prompts=8, group_size=8, num_batches=4,
            mu=8, seeds=8, learning_rates=_geometric(1e-6, 2**0.5, 9), optimizers=ADAM_FAMILY,
        )  # fmt: skip
    if scale == "test":
        return PolicyConfig(
            kind="checkpoint", checkpoint=path, completion_len=4, num_prompts=2, group_size=3, num_batches=2,
            mu=2, seeds=2, learning_rates=(0.003, 0.012, 0.048), optimizers=("adam_b0", "adam_b0.9", "guard"),
        )  # fmt: skip
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")


def with_checkpoint(cfg: Config, path: str, scale: str) -> Config:
    """``cfg`` with its policies replaced by the checkpoint's sweep (:func:`checkpoint_policy`).

    The tabular and NNX transformer rows are skipped with ``--model`` (the report says so): the run is
    about the checkpoint; part (a)'s closed forms run as usual.
    """
    return dataclasses.replace(cfg, policies=(checkpoint_policy(scale, path),))
