"""Method presets: the ten methods of Table 1 of arXiv 2601.05002 and peers' extras.

A method is a frozen, hashable :class:`MethodSpec`. Discrete choices are enums,
coefficients are floats, optional features are ``None`` when off, so a spec can
be passed to ``jax.jit`` as a static argument. Variants come from
``methods.get(name, **overrides)`` or ``dataclasses.replace``.

The unified objective (Eq. 1) is

    J = sum_i sum_t alpha_{i,t} * min(s_{i,t} A_i, clip(s_{i,t}, 1-eps_low, 1+eps_high) A_i)
        - beta * R

and the fields below choose each of its pieces. See ``docs/conventions.md`` for
the table of conventions per flavour (paper / verl / trl).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return self.value


class Flavor(_StrEnum):
    """Whose numbers a preset reproduces: the paper's Table 1, verl 0.9, or TRL 1.x."""

    PAPER = "paper"
    VERL = "verl"
    TRL = "trl"


class Objective(_StrEnum):
    """The per-token surrogate term and its ratio s_{i,t} (Table 1, column s)."""

    PPO_CLIP = "ppo_clip"  # s = I = exp(logp - logp_old); min(sA, clip(s)A)
    GSPO = "gspo"  # GSPO-token: value s_i (geometric mean ratio), grad s_i * dlogp_t
    SEQUENCE = "sequence"  # GCPO: whole-sequence ratio prod_t I, clipped once per completion
    GEO_MEAN = "geo_mean"  # GMPO: exp(mean_t sign-aware-clamped log I), no outer clip
    LOGP = "logp"  # GPG: s = log pi, no ratio, no clip
    CISPO = "cispo"  # sg[clip(I)] * A * log pi
    SAPO = "sapo"  # (4/tau) * sigmoid(tau (I - 1)) * A


class Advantage(_StrEnum):
    """How A_i is centred (Eq. 2). Scales such as 1/sigma live in the weights."""

    GROUP_MEAN = "group_mean"  # A_i = r_i - mean_j r_j
    RLOO = "rloo"  # A_i = G/(G-1) (r_i - mean_j r_j)   (leave-one-out baseline)


class Scale(_StrEnum):
    """Per-group scale multiplied into alpha (the 1/sigma(r) of Table 1)."""

    NONE = "none"
    GROUP_STD = "group_std"  # 1/(sigma_group + std_eps)
    BATCH_STD = "batch_std"  # 1/(sigma over all rewards of the batch + std_eps)  (TRL "batch")


class Agg(_StrEnum):
    """Token normaliser of alpha; names follow verl's ``loss_agg_mode``.

    With N_rows / N_tokens counted per group (``Scope.GROUP``) or over the whole
    batch (``Scope.BATCH``), L_i the completion length, L a constant length:

    - seq-mean-token-mean:     alpha = 1 / (N_rows * L_i)
    - seq-mean-token-sum:      alpha = 1 / N_rows
    - seq-mean-token-sum-norm: alpha = 1 / (N_rows * L)
    - token-mean:              alpha = 1 / N_tokens
    - token-sum:               alpha = 1
    """

    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"
    TOKEN_MEAN = "token-mean"
    TOKEN_SUM = "token-sum"


class Scope(_StrEnum):
    """Where the normaliser of ``Agg`` counts rows and tokens.

    - group: per prompt, N_rows = G (empty completions included), N_tokens = sum_j L_j;
      the loss is the mean over prompts of -J (the paper's Table 1, TRL's ``grpo``).
    - batch: over the whole batch, N_rows = number of non-empty completions,
      N_tokens = all tokens (verl's ``agg_loss``; DAPO's paper; TRL's ``dapo``/``bnpo``).
    """

    GROUP = "group"
    BATCH = "batch"


class Regularizer(_StrEnum):
    """R(theta) of Eq. 1, weighted like the policy term but without 1/sigma."""

    NONE = "none"
    KL = "kl"  # sum_t w_t D_KL
    KL_IMPORTANCE = "kl_importance"  # sum_t w_t I D_KL (DeepSeek-V3.2)
    GTPO_ENTROPY = "gtpo_entropy"  # (1/G) sum_i delta_i <H>_i / |o_i| sum_t I lambda_{i,t}


class KLEstimator(_StrEnum):
    """Per-token KL estimator, x = logp_ref - logp."""

    K1 = "k1"  # -x
    K2 = "k2"  # x^2 / 2
    K3 = "k3"  # exp(x) - x - 1   (the paper's D_KL)
    ABS = "abs"  # |x|


class CispoClip(_StrEnum):
    """How CISPO clips its stop-gradient importance weight."""

    TWO_SIDED = "two_sided"  # clip(I, 1-eps_low, 1+eps_high)   (paper, verl)
    UPPER_CAP = "upper_cap"  # min(I, eps_high), eps_high an absolute cap   (TRL)


class GpgRescale(_StrEnum):
    """GPG's alpha-hat."""

    NONE = "none"
    GROUPS = "groups"  # B / (B - M), M groups with all-equal rewards   (paper)
    NONZERO = "nonzero"  # (B*G) / max(#non-zero rewards, 1)   (verl's compute_gpg_outcome_advantage)


class FNorm(_StrEnum):
    """GPG's F_norm."""

    ONE = "one"
    BATCH_STD = "batch_std"  # std of all rewards of the batch (ddof = std_ddof) + std_eps


_ENUM_FIELDS: dict[str, type[enum.Enum]] = {
    "flavor": Flavor,
    "objective": Objective,
    "advantage": Advantage,
    "scale": Scale,
    "agg": Agg,
    "scope": Scope,
    "regularizer": Regularizer,
    "kl": KLEstimator,
    "cispo_clip": CispoClip,
    "gpg_rescale": GpgRescale,
    "f_norm": FNorm,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """A frozen, hashable description of one GRPO-style objective (Eq. 1).

    Attributes:
      name: preset name (informational).
      flavor: whose conventions the numbers follow.
      objective: the surrogate term / ratio s_{i,t}.
      advantage: centring of the rewards (Eq. 2).
      scale: per-group 1/sigma factor in alpha.
      std_ddof: degrees of freedom of sigma (0: population, 1: sample).
      std_eps: added to sigma before dividing (sigma + std_eps). Groups whose
        rewards are all equal get A = 0 exactly and contribute exactly zero.
      single_sample_unit: verl's convention for groups of one: mean 0, sigma 1.
        When False, a std-based preset requires G >= 2 (checked at trace time).
      agg, scope: the token normaliser of alpha (see :class:`Agg`, :class:`Scope`).
      norm_length: L for ``seq-mean-token-sum-norm``; 0 means the padded width T.
      eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high] of the ratio.
      dual_clip: c > 1 of dual-clip PPO (for A < 0 the term is max(term, c A)); None: off.
      ratio_cap: TRL's ``delta``: the unclipped branch uses min(s, ratio_cap); None: off.
      log_ratio_min, log_ratio_max: clamp of the log-ratio before exp (token
        log-ratio for token objectives, sequence log-ratio for gspo/sequence);
        zero gradient beyond. The paper flavour uses +-80 so that float32
        exp never overflows (log-ratios of +-100 stay finite).
      regularizer, kl, beta: R(theta) and its coefficient.
      kl_log_ratio_clamp: clamp of x = logp_ref - logp before the exp of the k3
        estimator (verl: 20; paper/trl: 80 so that float32 exp never overflows);
        k1, k2 and abs are never clamped, as in verl's ``kl_penalty``; None: off.
      kl_value_clamp: clamp of the k3 value to [-c, c] (verl: 10); None: off.
      prune_gamma: CPPO's threshold, alpha *= 1{|A_i| > gamma}; None: off.
      offpolicy_delta: DeepSeek-V3.2's off-policy sequence mask threshold; None: off.
      gtpo_w: GTPO's lambda for conflict tokens of positive completions.
      gtpo_conflicts: whether GTPO's conflict-token lambda is applied (needs tokens).
      entropy_threshold: GTPO's delta_i = 1{<H>_i <= threshold}; None: delta = 1.
      cispo_clip: CISPO's clip of the stop-gradient weight.
      gpg_rescale, f_norm: GPG's alpha-hat and F_norm.
      tau_pos, tau_neg: SAPO's temperatures.
      prefix_debias: beyond the paper: every token of a shared-prefix node gets
        the node's mean weight, so a node's aggregate W_agg = mean(alpha) * sum_i s_i A_i
        no longer depends on the completions' lengths, and a prefix shared by
        the whole group gets exactly zero net gradient at the first inner step.
        Needs ``batch.tokens``. ``gcpo`` counts each completion once and is
        already unbiased (left unchanged); ``gmpo``'s 1/|o_i| lives inside its
        geometric-mean ratio, which weights cannot debias (rejected).
    """

    name: str = "custom"
    flavor: Flavor = Flavor.PAPER
    objective: Objective = Objective.PPO_CLIP
    advantage: Advantage = Advantage.GROUP_MEAN
    scale: Scale = Scale.GROUP_STD
    std_ddof: int = 0
    std_eps: float = 0.0
    single_sample_unit: bool = False
    agg: Agg = Agg.SEQ_MEAN_TOKEN_MEAN
    scope: Scope = Scope.GROUP
    norm_length: float = 0.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    ratio_cap: float | None = None
    log_ratio_min: float = -80.0
    log_ratio_max: float = 80.0
    regularizer: Regularizer = Regularizer.NONE
    kl: KLEstimator = KLEstimator.K3
    beta: float = 0.0
    kl_log_ratio_clamp: float | None = 80.0
    kl_value_clamp: float | None = None
    prune_gamma: float | None = None
    offpolicy_delta: float | None = None
    gtpo_w: float = 2.0
    gtpo_conflicts: bool = False
    entropy_threshold: float | None = None
    cispo_clip: CispoClip = CispoClip.TWO_SIDED
    gpg_rescale: GpgRescale = GpgRescale.NONE
    f_norm: FNorm = FNorm.ONE
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    prefix_debias: bool = False

    def __post_init__(self) -> None:
        for field, enum_type in _ENUM_FIELDS.items():
            value = getattr(self, field)
            try:
                object.__setattr__(self, field, enum_type(value))
            except ValueError:
                allowed = ", ".join(repr(e.value) for e in enum_type)
                raise ValueError(f"MethodSpec.{field} must be one of {allowed}; got {value!r}") from None
        if not isinstance(self.std_ddof, int) or self.std_ddof not in (0, 1):
            raise ValueError(f"MethodSpec.std_ddof must be 0 or 1; got {self.std_ddof!r}")
        _check(self, "std_eps", self.std_eps >= 0, ">= 0")
        _check(self, "norm_length", self.norm_length >= 0, ">= 0 (0 means the padded width T)")
        _check(self, "eps_low", 0 <= self.eps_low <= 1, "in [0, 1]")
        _check(self, "eps_high", self.eps_high >= 0, ">= 0")
        _check(self, "beta", self.beta >= 0, ">= 0")
        _check(self, "log_ratio_min", self.log_ratio_min < 0, "< 0")
        _check(self, "log_ratio_max", self.log_ratio_max > 0, "> 0")
        _check(self, "gtpo_w", self.gtpo_w >= 0, ">= 0")
        _check(self, "tau_pos", self.tau_pos > 0, "> 0")
        _check(self, "tau_neg", self.tau_neg > 0, "> 0")
        if self.dual_clip is not None:
            _check(self, "dual_clip", self.dual_clip > 1, "> 1 (or None to disable)")
        if self.ratio_cap is not None:
            _check(self, "ratio_cap", self.ratio_cap > 1, "> 1 (or None to disable)")
        for field in ("kl_log_ratio_clamp", "kl_value_clamp", "offpolicy_delta"):
            value = getattr(self, field)
            if value is not None:
                _check(self, field, value > 0, "> 0 (or None to disable)")
        if self.prune_gamma is not None:
            _check(self, "prune_gamma", self.prune_gamma >= 0, ">= 0 (or None to disable)")
        if not isinstance(self.prefix_debias, bool):
            raise ValueError(f"MethodSpec.prefix_debias must be a bool; got {self.prefix_debias!r}")
        if self.prefix_debias and self.objective == Objective.GEO_MEAN:
            raise ValueError(
                "MethodSpec.prefix_debias is not available for objective 'geo_mean' (GMPO): its 1/|o_i| "
                "is inside the geometric-mean ratio, not in the token weights alpha"
            )
        if self.cispo_clip == CispoClip.UPPER_CAP:
            _check(self, "eps_high", self.eps_high > 0, "> 0 (an absolute cap with cispo_clip='upper_cap')")

    @property
    def needs_std(self) -> bool:
        """Whether the preset divides by a group reward std."""
        return self.scale == Scale.GROUP_STD

    def replace(self, **overrides: Any) -> MethodSpec:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **overrides)


def _check(spec: MethodSpec, field: str, ok: bool, what: str) -> None:
    value = getattr(spec, field)
    if isinstance(value, float) and math.isnan(value):
        ok = False
    if not ok:
        raise ValueError(f"MethodSpec.{field} must be {what}; got {value!r} (method {spec.name!r})")


# ---------------------------------------------------------------------------
# Presets. Each entry maps a flavour to the fields that differ from the defaults.

_VERL_COMMON: dict[str, Any] = dict(
    flavor=Flavor.VERL,
    std_ddof=1,
    std_eps=1e-6,
    single_sample_unit=True,
    scope=Scope.BATCH,
    log_ratio_min=-20.0,
    log_ratio_max=20.0,
    dual_clip=3.0,
    kl_log_ratio_clamp=20.0,
    kl_value_clamp=10.0,
)
_TRL_COMMON: dict[str, Any] = dict(
    flavor=Flavor.TRL,
    std_ddof=1,
    std_eps=1e-4,
    log_ratio_min=-80.0,
    log_ratio_max=80.0,
)

_KL = dict(regularizer=Regularizer.KL, kl=KLEstimator.K3, beta=0.04)

_PAPER: dict[str, dict[str, Any]] = {
    "grpo": dict(**_KL),
    "grpo_v32": dict(
        scale=Scale.NONE,
        regularizer=Regularizer.KL_IMPORTANCE,
        kl=KLEstimator.K3,
        beta=0.04,
        offpolicy_delta=0.5,
    ),
    "gspo": dict(objective=Objective.GSPO, eps_low=3e-4, eps_high=4e-4),
    "gtpo": dict(scale=Scale.NONE, gtpo_conflicts=True, regularizer=Regularizer.GTPO_ENTROPY, beta=0.0),
    "dapo": dict(agg=Agg.TOKEN_MEAN, eps_low=0.2, eps_high=0.28),
    "cppo": dict(prune_gamma=0.1, **_KL),
    "dr_grpo": dict(scale=Scale.NONE, agg=Agg.SEQ_MEAN_TOKEN_SUM, **_KL),
    "gpg": dict(
        objective=Objective.LOGP,
        scale=Scale.NONE,
        agg=Agg.TOKEN_MEAN,
        gpg_rescale=GpgRescale.GROUPS,
        f_norm=FNorm.ONE,
    ),
    "cispo": dict(objective=Objective.CISPO, agg=Agg.TOKEN_MEAN, eps_low=1.0, eps_high=0.28),
    "gcpo": dict(objective=Objective.SEQUENCE),
    # Extras of peers that are special cases of Eq. 1.
    "bnpo": dict(agg=Agg.TOKEN_MEAN, scope=Scope.BATCH),
    "gmpo": dict(objective=Objective.GEO_MEAN, eps_low=0.4, eps_high=0.4),
    "sapo": dict(objective=Objective.SAPO),
    "rloo": dict(advantage=Advantage.RLOO, scale=Scale.NONE),
}

_VERL: dict[str, dict[str, Any]] = {
    # vanilla policy loss + GRPO advantages (norm_adv_by_std_in_grpo=True).
    "grpo": dict(_PAPER["grpo"], **_VERL_COMMON),
    # GRPO advantages without std + seq-mean-token-sum-norm (loss_scale_factor = T unless norm_length).
    "dr_grpo": dict(_PAPER["dr_grpo"], **_VERL_COMMON, agg=Agg.SEQ_MEAN_TOKEN_SUM_NORM),
    "dapo": dict(_PAPER["dapo"], **_VERL_COMMON),
    "gspo": dict(
        _PAPER["gspo"],
        **{**_VERL_COMMON, "log_ratio_min": -math.inf, "log_ratio_max": 10.0, "dual_clip": None},
    ),
    "gpg": dict(_PAPER["gpg"], **_VERL_COMMON, gpg_rescale=GpgRescale.NONZERO),
    "cispo": dict(_PAPER["cispo"], **{**_VERL_COMMON, "eps_low": 0.2, "eps_high": 0.2, "dual_clip": None}),
    "gmpo": dict(
        _PAPER["gmpo"],
        **{
            **_VERL_COMMON,
            "scope": Scope.GROUP,
            "dual_clip": None,
            "log_ratio_min": -math.inf,
            "log_ratio_max": math.inf,
        },
    ),
    "sapo": dict(_PAPER["sapo"], **{**_VERL_COMMON, "dual_clip": None}),
    "rloo": dict(_PAPER["rloo"], **_VERL_COMMON),
}

_TRL: dict[str, dict[str, Any]] = {
    # loss_type="grpo": mean over rows of sum_t / max(L_i, 1); scale_rewards="group".
    "grpo": dict(_PAPER["grpo"], **_TRL_COMMON),
    # loss_type="dr_grpo", scale_rewards="none": sum / (rows * max_completion_length).
    "dr_grpo": dict(_PAPER["dr_grpo"], **_TRL_COMMON, agg=Agg.SEQ_MEAN_TOKEN_SUM_NORM, norm_length=512.0),
    # loss_type="dapo": tokens of the whole batch.
    "dapo": dict(_PAPER["dapo"], **_TRL_COMMON, scope=Scope.BATCH),
    # loss_type="bnpo": tokens of the local batch.
    "bnpo": dict(_PAPER["bnpo"], **_TRL_COMMON),
    # importance_sampling_level="sequence".
    "gspo": dict(_PAPER["gspo"], **_TRL_COMMON),
    # loss_type="cispo": sg[min(I, eps_high)] with an absolute cap.
    "cispo": dict(
        _PAPER["cispo"], **_TRL_COMMON, scope=Scope.BATCH, cispo_clip=CispoClip.UPPER_CAP, eps_low=0.2, eps_high=5.0
    ),
    # off-policy mask + importance-weighted KL (use_bias_correction_kl).
    "grpo_v32": dict(_PAPER["grpo_v32"], **_TRL_COMMON),
    "sapo": dict(_PAPER["sapo"], **_TRL_COMMON),
}

_TABLE1 = ("grpo", "grpo_v32", "gspo", "gtpo", "dapo", "cppo", "dr_grpo", "gpg", "cispo", "gcpo")
_EXTRAS = ("bnpo", "gmpo", "sapo", "rloo")
_FLAVORS: dict[Flavor, dict[str, dict[str, Any]]] = {Flavor.PAPER: _PAPER, Flavor.VERL: _VERL, Flavor.TRL: _TRL}


def names() -> tuple[str, ...]:
    """All preset names: the ten methods of Table 1, then the extras."""
    return _TABLE1 + _EXTRAS


def flavors(name: str) -> tuple[str, ...]:
    """The flavours a preset is available in."""
    _check_name(name)
    return tuple(f.value for f, table in _FLAVORS.items() if name in table)


def _check_name(name: str) -> None:
    if name not in _PAPER:
        raise ValueError(f"unknown method name {name!r}; known methods: {', '.join(names())}")


def get(name: str, **overrides: Any) -> MethodSpec:
    """Returns the preset ``name``, optionally in another flavour and with fields replaced.

    Args:
      name: one of :func:`names`.
      **overrides: ``flavor`` ('paper', 'verl' or 'trl') selects the conventions;
        any other :class:`MethodSpec` field replaces the preset's value.

    Raises:
      ValueError: unknown name, flavour not available for this method, unknown
        field, or an invalid value (the message names the field).
    """
    _check_name(name)
    flavor_value = overrides.pop("flavor", Flavor.PAPER)
    try:
        flavor = Flavor(flavor_value)
    except ValueError:
        allowed = ", ".join(repr(f.value) for f in Flavor)
        raise ValueError(f"flavor must be one of {allowed}; got {flavor_value!r}") from None
    table = _FLAVORS[flavor]
    if name not in table:
        raise ValueError(
            f"method {name!r} has no {flavor.value!r} flavour; available flavours: {', '.join(flavors(name))}"
        )
    known = {f.name for f in dataclasses.fields(MethodSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown MethodSpec field(s) {unknown}; known fields: {', '.join(sorted(known))}")
    fields = dict(table[name])
    fields.update(overrides)
    fields["name"] = name
    fields["flavor"] = flavor
    return MethodSpec(**fields)
