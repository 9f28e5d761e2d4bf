"""The prefix_bias experiment's sizes: a frozen :class:`Config`, the named ones (``_config(scale)``), the methods."""

from __future__ import annotations

import dataclasses

NAME = "prefix_bias"
CONTROL = "short-positive control"
METHODS = ("grpo", "dr_grpo", "dapo", "gspo", "grpo+debias", CONTROL)
REQUIRED = ("grpo", "dr_grpo", "grpo+debias", CONTROL)  # what the claims read


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes of one run (frozen; :func:`_config` gives the named ones).

    Attributes:
      verify_policy: part (A)'s rollouts: "transformer" (warmed-up, arithmetic task), "tree", or
        "checkpoint" (the Hugging Face checkpoint ``model`` on Countdown prompts, ``--model PATH``).
      model: the checkpoint directory of ``verify_policy="checkpoint"`` (None otherwise).
      max_len: completion tokens sampled from a checkpoint.
      verify_presets: part (A)'s presets (None: every ``jgrpo.methods.names()``); must include
        grpo, gspo, dr_grpo and dapo (the float64 checks).
      prompts, group_size: part (A)'s B x G.
      vocab, length, answer_pos: the prefix-tree policy's V, T and the answer position a.
      init_scale: std of its random logits.
      accuracies: the regimes p = P(correct answer).
      methods: part (B)'s methods, a subset of :data:`METHODS` containing :data:`REQUIRED`.
      seeds: independent policies per regime (>= 5 for a decisive verdict).
      groups, tree_group_size: groups and G per seed in part (B).
    """

    verify_policy: str = "transformer"
    model: str | None = None
    max_len: int = 64
    verify_presets: tuple[str, ...] | None = None
    prompts: int = 8
    group_size: int = 8
    vocab: int = 3
    length: int = 10
    answer_pos: int = 2
    init_scale: float = 1.5
    accuracies: tuple[float, ...] = (0.25, 0.75)
    methods: tuple[str, ...] = METHODS
    seeds: int = 24
    groups: int = 1024
    tree_group_size: int = 8

    def __post_init__(self) -> None:
        needed = {"grpo", "gspo", "dr_grpo", "dapo"}
        if self.verify_presets is not None and not needed <= set(self.verify_presets):
            raise ValueError(f"Config.verify_presets must include {sorted(needed)}, got {self.verify_presets}")
        if not set(REQUIRED) <= set(self.methods) <= set(METHODS):
            raise ValueError(f"Config.methods must contain {REQUIRED} and lie in {METHODS}, got {self.methods}")
        if self.verify_policy not in ("transformer", "tree", "checkpoint"):
            raise ValueError(
                f"Config.verify_policy must be 'transformer', 'tree' or 'checkpoint', got {self.verify_policy!r}"
            )
        if (self.verify_policy == "checkpoint") != (self.model is not None):
            raise ValueError(
                "Config.model (a checkpoint directory) goes with verify_policy='checkpoint' and only with it"
            )
        if self.vocab < 3:
            raise ValueError(f"Config.vocab must be >= 3 (EOS, the correct answer, a wrong one), got {self.vocab}")
        if not 0 <= self.answer_pos < self.length - 1:
            raise ValueError(
                f"Config.answer_pos must lie in [0, length - 1) = [0, {self.length - 1}), got {self.answer_pos}"
            )
        if not self.accuracies or not all(0.0 < p < 1.0 for p in self.accuracies):
            raise ValueError(f"Config.accuracies must be probabilities in (0, 1), got {self.accuracies}")
        if self.seeds < 2 or self.groups < 1 or self.tree_group_size < 2:
            raise ValueError(
                f"Config.seeds >= 2, groups >= 1 and tree_group_size >= 2 required, got "
                f"{self.seeds}, {self.groups}, {self.tree_group_size}"
            )


def _config(scale: str) -> Config:
    """``quick`` (CPU, < 1.5 min with the warm-up), ``paper`` (accelerator) and ``test`` (seconds)."""
    if scale == "quick":
        return Config()
    if scale == "paper":
        return Config(prompts=64, group_size=16, vocab=4, length=10, seeds=64, groups=8192, tree_group_size=16)
    if scale == "test":
        return Config(
            verify_policy="tree",
            verify_presets=("grpo", "gspo", "dr_grpo", "dapo"),
            prompts=4,
            group_size=4,
            length=6,
            methods=REQUIRED,
            seeds=2,
            groups=64,
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")
