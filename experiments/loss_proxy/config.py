"""The loss_proxy experiment's sizes: a frozen :class:`Config` and the named ones (``_config(scale)``)."""

from __future__ import annotations

import dataclasses

import jgrpo

NAME = "loss_proxy"
EOS = 1  # token id that ends a completion
TARGET = 2  # reward 1 iff the completion contains this token
PHASES = ("early", "middle", "late")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes of one run (frozen; ``_config(scale)`` gives the named ones).

    Attributes:
      vocab, length, init_scale: the tabular policy's V, T and the std of its initial logits.
      id_groups, id_group_size, ref_noise: part (a): sampled groups × G, and the std of the
        noise added to the logits to make π_ref (so that R(θ_old) ≠ 0).
      presets: part (a)'s presets (None: every preset); ``flavors``: in every flavour (False: paper only).
      methods: part (b)'s presets (paper flavour; "gcpo_once" is gcpo counted once per
        completion when jgrpo offers that reading).
      runs: independent training runs (each its own initial policy and samples).
      train_steps, checkpoints: outer steps per run, and the steps whose θ is a θ_old of
        part (b) (one per phase: early, middle, late).
      num_groups, group_size: B groups × G completions per batch (training and part (b)).
      inner_steps, learning_rate, adam_eps: μ AdamW steps per batch, training η, ε (β1 0.9, β2 0.999).
      inner_lrs: the η of part (b)'s updates (a traced sweep); the claims use the first (the
        training η), the others are a sensitivity analysis reported in the table.
      batches: K independent batches per unit (part b).
      heldout: N held-out completions per batch for the SNIS monitor (part c).
      cross: whether to run parts (b) and (c).
    """

    vocab: int = 8
    length: int = 8
    init_scale: float = 0.5
    id_groups: int = 16
    id_group_size: int = 16
    ref_noise: float = 0.3
    presets: tuple[str, ...] | None = None
    flavors: bool = True
    methods: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "cppo", "gspo", "gcpo", "gcpo_once")
    runs: int = 5
    train_steps: int = 30
    checkpoints: tuple[int, ...] = (3, 12, 30)
    num_groups: int = 2
    group_size: int = 16
    inner_steps: int = 4
    learning_rate: float = 0.02
    inner_lrs: tuple[float, ...] = (0.02, 0.05)
    adam_eps: float = 1e-8
    batches: int = 256
    heldout: int = 256
    cross: bool = True

    def __post_init__(self) -> None:
        if self.vocab < 3:
            raise ValueError(f"Config.vocab must be >= 3 (PAD/EOS/TARGET ids 0, 1, 2), got {self.vocab}")
        if self.length < 1:
            raise ValueError(f"Config.length must be >= 1, got {self.length}")
        if self.id_group_size < 2 or self.group_size < 2:
            raise ValueError(
                f"Config.id_group_size and group_size must be >= 2, got {self.id_group_size}, {self.group_size}"
            )
        if not self.methods:
            raise ValueError("Config.methods must name at least one preset")
        known = set(jgrpo.methods.names()) | {"gcpo_once"}
        for name in self.methods + (self.presets or ()):
            if name not in known:
                raise ValueError(f"Config.methods/presets: unknown preset {name!r}; known: {sorted(known)}")
        if not self.checkpoints or any(not 0 <= c <= self.train_steps for c in self.checkpoints):
            raise ValueError(
                f"Config.checkpoints must lie in [0, train_steps = {self.train_steps}], got {self.checkpoints}"
            )
        if not self.inner_lrs or any(not lr > 0 for lr in self.inner_lrs):
            raise ValueError(f"Config.inner_lrs must be a non-empty tuple of learning rates > 0, got {self.inner_lrs}")
        if self.runs < 1 or self.batches < 4 or self.heldout < 2:
            raise ValueError(
                f"Config.runs >= 1, batches >= 4 (a correlation needs pairs) and heldout >= 2 required, got "
                f"{self.runs}, {self.batches}, {self.heldout}"
            )

    @property
    def units(self) -> int:
        return self.runs * len(self.checkpoints)


def _config(scale: str) -> Config:
    """The sizes for ``--scale quick`` (CPU, < 2.5 min), ``paper`` (accelerator) and ``test`` (seconds)."""
    if scale == "quick":
        return Config()
    if scale == "paper":
        return Config(
            vocab=16,
            length=16,
            id_groups=64,
            runs=8,
            num_groups=8,
            group_size=16,
            batches=1024,
            heldout=1024,
        )
    if scale == "test":
        return Config(
            vocab=5,
            length=4,
            id_groups=3,
            id_group_size=16,
            presets=("dr_grpo", "cppo", "gcpo"),
            flavors=False,
            methods=("grpo", "dapo"),
            runs=1,
            train_steps=3,
            checkpoints=(1, 3),
            num_groups=2,
            group_size=4,
            inner_steps=2,
            inner_lrs=(0.05,),
            batches=8,
            heldout=16,
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")
