"""The reward_scaling experiment's sizes: the frozen :class:`Config`, the named ones (``_config(scale)``) and the
optimizer settings (the rows of the map)."""

from __future__ import annotations

import dataclasses
import math

import jgrpo
from analysis import reward_scale as rs

NAME = "reward_scaling"
CPPO_STD = "cppo_std"  # CPPO pruning on standardised advantages, when jgrpo offers it
REWARD_KINDS = ("binary", "uniform")
DTYPES = ("float32", "bfloat16")
POLICIES = ("tabular", "transformer")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One optimizer setting (a row of the map): traced values of one compiled program."""

    key: str
    label: str
    sgd: bool
    beta: float
    eps: float
    weight_decay: float
    l2: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes of one run (frozen; :func:`_config` gives the named ones).

    Attributes:
      seeds: data sets per reward kind (parameters, tokens, lengths, rewards, reorderings).
      reward_kinds: ``"binary"`` (Bernoulli(1/2) verifier rewards) and/or ``"uniform"`` (scores in [0, 1)).
      num_steps: μ optimizer steps on the fixed batch.
      phis: reward scales φ; must contain 1.0 (the reference) and ≥ 3 others (the floor
        has as many runs as there are φ ≠ 1: two at φ = 1 ± 1 ulp, the rest reorderings).
      realistic_phis: the φ ≠ 1 at which the experiments measure how much a factor breaks it.
      presets: preset names (``jgrpo.methods.names()``; ``"cppo_std"`` = CPPO pruning on
        standardised advantages, run only when jgrpo has that option).
      bf16_presets: presets also run with bf16 parameters on the tabular policy.
      eps_limit: Adam's ε standing for ε → 0 (Eq. 27).
      epss: the other Adam ε of the map (PyTorch's default 1e-8, RL code's 1e-5, 1e-3 ≈ φ√v̂ at small φ).
      beta: β of the settings with a KL term.
      weight_decay: λ of the decoupled (AdamW) and coupled (Adam + L2, SGD) settings.
      adam_lr, sgd_lr: learning rates on the tabular policy.
      vocab, completion_len, num_prompts, group_size: the tabular batch V, T, B, G.
      transformer: whether to run the transformer rows.
      tf_presets, tf_dtypes, tf_reward_kinds: what the transformer runs.
      tf_model: ``"tiny"`` or ``"small"`` (``TransformerConfig`` preset).
      tf_vocab, tf_prompt_len, tf_completion_len, tf_num_prompts, tf_group_size: its batch.
      tf_adam_lr, tf_sgd_lr: learning rates on the transformer.
      tf_settings_per_call: settings per compiled call on the transformer (memory); 0 = all.
      model: a Hugging Face checkpoint directory (``--model PATH``) replacing the NNX transformer in the
        transformer rows: its parameters (in each of ``tf_dtypes``), ``tf_num_prompts`` Countdown prompts
        (its tokenizer, left-padded) and ``tf_group_size`` completions of ``tf_completion_len`` tokens
        sampled from it, with the synthetic ``tf_reward_kinds`` rewards (Prop. 2 is about the optimizer,
        not the task). None: the NNX transformer.
    """

    seeds: int = 5
    reward_kinds: tuple[str, ...] = REWARD_KINDS
    num_steps: int = 20
    phis: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0)
    realistic_phis: tuple[float, ...] = (0.1, 10.0)
    presets: tuple[str, ...] = (*jgrpo.methods.names(), CPPO_STD)
    bf16_presets: tuple[str, ...] = ("grpo", "dr_grpo", "cppo")
    eps_limit: float = 1e-30
    epss: tuple[float, ...] = (1e-8, 1e-5, 1e-3)
    beta: float = 0.04
    weight_decay: float = 0.01
    adam_lr: float = 1e-2
    sgd_lr: float = 0.5
    vocab: int = 5
    completion_len: int = 6
    num_prompts: int = 4
    group_size: int = 8
    transformer: bool = True
    tf_presets: tuple[str, ...] = ("dr_grpo", "grpo")
    tf_dtypes: tuple[str, ...] = ("float32",)
    tf_reward_kinds: tuple[str, ...] = ("binary",)
    tf_model: str = "tiny"
    tf_vocab: int = 16
    tf_prompt_len: int = 4
    tf_completion_len: int = 8
    tf_num_prompts: int = 2
    tf_group_size: int = 4
    tf_adam_lr: float = 1e-3
    tf_sgd_lr: float = 0.1
    tf_settings_per_call: int = 0
    model: str | None = None

    def __post_init__(self) -> None:
        def bad(field: str, what: str) -> None:
            raise ValueError(f"Config.{field} {what}, got {getattr(self, field)!r}")

        if 1.0 not in self.phis:
            bad("phis", "must contain 1.0 (the reference run)")
        if any(not (p > 0 and math.isfinite(p)) for p in self.phis):
            bad("phis", "must be finite and > 0")
        if len(set(self.phis)) != len(self.phis) or sum(p != 1.0 for p in self.phis) < 3:
            bad("phis", "must be distinct with at least 3 values besides 1.0 (the floor has as many runs)")
        if not self.realistic_phis or any(p not in self.phis or p == 1.0 for p in self.realistic_phis):
            bad("realistic_phis", "must be a non-empty subset of phis without 1.0")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            bad("seeds", "must be an int >= 1")
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            bad("num_steps", "must be an int >= 1")
        for field in ("reward_kinds", "tf_reward_kinds"):
            kinds = getattr(self, field)
            if not kinds or any(k not in REWARD_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
                bad(field, f"must be distinct values of {REWARD_KINDS}")
        known = (*jgrpo.methods.names(), CPPO_STD)
        for field in ("presets", "bf16_presets", "tf_presets"):
            if any(n not in known for n in getattr(self, field)):
                bad(field, f"must name presets of {known}")
        if not self.presets:
            bad("presets", "must not be empty")
        if any(n not in self.presets for n in self.bf16_presets):
            bad("bf16_presets", "must be a subset of presets")
        if any(d not in DTYPES for d in self.tf_dtypes):
            bad("tf_dtypes", f"must be values of {DTYPES}")
        if self.tf_model not in ("tiny", "small"):
            bad("tf_model", "must be 'tiny' or 'small'")
        if not (0 < self.eps_limit < min(self.epss, default=1.0)):
            bad("eps_limit", "must be > 0 and below every value of epss")
        for field in ("beta", "weight_decay", "adam_lr", "sgd_lr", "tf_adam_lr", "tf_sgd_lr"):
            if not getattr(self, field) > 0:
                bad(field, "must be > 0")
        if self.tf_settings_per_call < 0:
            bad("tf_settings_per_call", "must be >= 0 (0 = all settings in one call)")

    @property
    def scales(self) -> tuple[float, ...]:
        """The φ ≠ 1 (the reference is implicit)."""
        return tuple(p for p in self.phis if p != 1.0)

    @property
    def num_reorders(self) -> int:
        """Reordered floor runs: as many floor runs as φ ≠ 1, two of them at φ = 1 ± 1 ulp."""
        return len(self.scales) - len(rs.ULP_PHIS)


def _config(scale: str) -> Config:
    """``quick`` (CPU, ≈ 2 min), ``paper`` (accelerator) and ``test`` (seconds) sizes."""
    if scale == "quick":
        return Config()
    if scale == "paper":
        return Config(
            seeds=10,
            num_steps=50,
            phis=(1e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0, 1e3),
            bf16_presets=(*jgrpo.methods.names(), CPPO_STD),
            vocab=16,
            completion_len=16,
            num_prompts=8,
            group_size=8,
            tf_presets=("dr_grpo", "grpo", "cppo", "rloo"),
            tf_dtypes=DTYPES,
            tf_reward_kinds=REWARD_KINDS,
            tf_model="small",
            tf_vocab=64,
            tf_prompt_len=8,
            tf_completion_len=16,
            tf_num_prompts=4,
            tf_group_size=8,
            tf_settings_per_call=1,
        )
    if scale == "test":
        return Config(
            num_steps=3,
            presets=("dr_grpo", "grpo", "cppo"),
            bf16_presets=("dr_grpo",),
            num_prompts=2,
            group_size=4,
            transformer=False,
            tf_presets=("grpo",),
            tf_completion_len=4,
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")


def settings(cfg: Config) -> tuple[Setting, ...]:
    """The rows of the map: AdamW (β = 0, ε → 0) and one factor changed at a time, a GRPO-like recipe, SGD."""

    def adam(key: str, label: str, **kw) -> Setting:
        base = dict(sgd=False, beta=0.0, eps=cfg.eps_limit, weight_decay=0.0, l2=0.0)
        return Setting(key, label, **{**base, **kw})

    def sgd(key: str, label: str, **kw) -> Setting:
        return Setting(key, label, **{**dict(sgd=True, beta=0.0, eps=cfg.eps_limit, weight_decay=0.0, l2=0.0), **kw})

    lam, beta = cfg.weight_decay, cfg.beta
    rows = [adam("adamw", "AdamW β=0 ε→0")]
    rows += [adam(f"eps_{e:g}", f"AdamW ε={e:g}", eps=e) for e in cfg.epss]
    rows += [
        adam("decoupled_wd", f"AdamW λ={lam:g} (decoupled)", weight_decay=lam),
        adam("coupled_l2", f"Adam+L2 λ={lam:g} (coupled)", l2=lam),
        adam("beta", f"AdamW β={beta:g}", beta=beta),
        adam("recipe", f"AdamW β={beta:g} ε=1e-8 λ={lam:g}", beta=beta, eps=1e-8, weight_decay=lam),
        sgd("sgd", "SGD"),
        sgd("sgd_beta", f"SGD β={beta:g}", beta=beta),
        sgd("sgd_wd", f"SGD λ={lam:g}", weight_decay=lam),
    ]
    return tuple(rows)
