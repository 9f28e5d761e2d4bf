"""The clipping experiment's sizes: a frozen :class:`Config` and the named ones (``_config(scale)``)."""

from __future__ import annotations

import dataclasses

from experiments.shared.sweep import PolicyConfig

NAME = "clipping"
VARIANTS = ("clip", "no_clip", "guard", "projection")
LABELS = {"clip": "clip (ε 0.2)", "no_clip": "no clip", "guard": "clip + guard", "projection": "clip + projection"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes (frozen; ``_config(scale)``).

    Attributes:
      policy: the tabular policy and run sizes (``experiments.shared.sweep.PolicyConfig``;
        ``num_batches`` is the run length K, ``learning_rates`` Adam's η grid, ``mu`` the largest μ).
      mus: inner steps per batch compared.
      beta2, adam_eps: Adam's β2 and ε (β1 = 0.9).
    """

    policy: PolicyConfig
    mus: tuple[int, ...] = (1, 2, 4, 8)
    beta2: float = 0.95
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.policy.kind != "tabular":
            raise ValueError(f"Config.policy must be tabular (exact ΔE), got {self.policy.kind!r}")
        if 1 not in self.mus or len(self.mus) < 2:
            raise ValueError(f"Config.mus must contain 1 and at least one μ > 1, got {self.mus}")
        if max(self.mus) != self.policy.mu:
            raise ValueError(f"Config.policy.mu must be max(mus) = {max(self.mus)}, got {self.policy.mu}")


def _config(scale: str) -> Config:
    if scale == "quick":
        return Config(
            policy=PolicyConfig(
                kind="tabular", num_batches=6, burn_in=0, seeds=12, learning_rates=(0.01, 0.02, 0.04, 0.08, 0.16)
            )
        )
    if scale == "paper":
        return Config(
            policy=PolicyConfig(
                kind="tabular",
                num_batches=40,
                burn_in=0,
                seeds=32,
                learning_rates=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32),
            )
        )
    if scale == "test":
        return Config(
            policy=PolicyConfig(
                kind="tabular",
                vocab=6,
                completion_len=4,
                num_prompts=2,
                group_size=4,
                num_batches=2,  # the shapes of experiments.overshoot's test size: the tests share its compile
                burn_in=0,
                mu=2,
                seeds=2,
                learning_rates=(0.05, 0.1, 0.2),
            ),
            mus=(1, 2),
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")
