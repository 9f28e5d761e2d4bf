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

import jax
import numpy as np


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
    SEQUENCE = "sequence"  # GCPO: whole-sequence ratio prod_t I on every token (see SequenceTerms)
    GEO_MEAN = "geo_mean"  # GMPO: exp(mean_t sign-aware-clamped log I), no outer clip
    LOGP = "logp"  # GPG: s = log pi, no ratio, no clip
    CISPO = "cispo"  # sg[clip(I)] * A * log pi
    SAPO = "sapo"  # (4/tau) * sigmoid(tau (I - 1)) * A
    VESPO = "vespo"  # sg[phi(w_i)] * A * log pi, phi the gamma weight of the sequence ratio w_i (TRL)


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


class SequenceTerms(_StrEnum):
    """How often a whole-sequence ratio's clipped term counts (objective ``sequence``, GCPO).

    - per_token: Table 1 read literally: every token t of completion i carries the term
      alpha_{i,t} * f(S_i) with the whole-sequence ratio S_i, so the completion's term counts
      |o_i| times: Omega_i = sum_t alpha_{i,t} (= |o_i| / (sigma G) for gcpo, a long-answer weighting).
    - once: the completion's term counts once, with the mean of its token weights:
      Omega_i = sum_t alpha_{i,t} / |o_i| (= 1 / (sigma G) for gcpo).
    """

    PER_TOKEN = "per_token"
    ONCE = "once"


class PruneOn(_StrEnum):
    """What CPPO's threshold gamma compares with."""

    CENTRED = "centred"  # |A_i| > gamma, A_i = r_i - mean_j r_j   (Table 1)
    STANDARDISED = "standardised"  # |A_i / (sigma + std_eps)| > gamma   (the CPPO paper, arXiv 2503.22342)


class RatioLevel(_StrEnum):
    """TRL's ``importance_sampling_level``: one ratio per token, or s_i = exp(mean_t log I) per completion.

    ``sequence`` applies to the ratio of ``ppo_clip``, ``cispo``'s stop-gradient weight, ``sapo``'s
    gate and the importance weight of the ``kl_importance`` regularizer, as TRL's (B, 1) ratio
    broadcast over the tokens (gradient through the mean). Objective ``gspo`` is always ``sequence``
    (its surrogate keeps Table 1's GSPO-token form; the level then sets the KL's importance weight).
    """

    TOKEN = "token"
    SEQUENCE = "sequence"


class MultiReward(_StrEnum):
    """How K reward functions (``rewards`` of shape [..., G, K]) become one reward per completion (TRL)."""

    SUM_THEN_NORMALIZE = "sum_then_normalize"  # r_i = sum_k w_k r_ik, then the usual advantages
    # GDPO: each reward group-normalised, (r_ik - mean_j r_jk) / (sigma_k + std_eps), summed with w_k;
    # then A_i = r_i - mean over the whole batch, scaled by 1 / (batch sigma + std_eps) (scale must be batch_std).
    NORMALIZE_THEN_SUM = "normalize_then_sum"


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
    "sequence_terms": SequenceTerms,
    "prune_on": PruneOn,
    "ratio_level": RatioLevel,
    "multi_reward": MultiReward,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """A frozen, hashable description of one GRPO-style objective (Eq. 1).

    Every field is a Python scalar, an enum or None, so a spec can be a static
    argument of ``jax.jit``. What a sweep sweeps belongs in traced arrays, not here.

    Attributes:
      name: preset name (informational).
      flavor: whose conventions the numbers follow.
      objective: the surrogate term / ratio s_{i,t}.
      advantage: centring of the rewards (Eq. 2).
      scale: per-group 1/sigma factor in alpha.
      std_ddof: degrees of freedom of sigma (0: population, 1: sample).
      std_eps: added to sigma before dividing (sigma + std_eps). A group whose
        reward spread is at rounding level (max - min <= G * eps(dtype) * max|r|)
        is a zero-variance group: A = 0 exactly and it contributes exactly zero.
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
      regularizer, kl, beta: R(theta) and its coefficient. beta > 0 needs a
        regularizer (``methods.get`` turns the flavour's KL on for a preset without one).
      kl_log_ratio_clamp: clamp of x = logp_ref - logp before the exp of the k3
        estimator, a documented bound: per-token k3 <= e^c - c - 1 (paper and
        verl: c = 20, 4.9e8; trl: 80, as TRL has none and float32 exp overflows at 88.7);
        k1, k2 and abs are never clamped, as in verl's ``kl_penalty``; None: off.
        ``aux["clamp_frac"]`` counts the tokens where any clamp is active.
      kl_value_clamp: clamp of the k3 value to [-c, c] (verl: 10); None: off.
      prune_gamma: CPPO's threshold, alpha *= 1{|A_i| > gamma}; None: off.
      prune_on: whether gamma compares with the centred A_i (Table 1) or A_i / sigma (CPPO paper).
      offpolicy_delta: DeepSeek-V3.2's off-policy sequence mask threshold; None: off.
      gtpo_w: GTPO's lambda for conflict tokens of positive completions.
      gtpo_conflicts: whether GTPO's conflict-token lambda is applied (needs tokens).
      entropy_threshold: GTPO's delta_i = 1{<H>_i <= threshold}; None: delta = 1.
      cispo_clip: CISPO's clip of the stop-gradient weight.
      gpg_rescale, f_norm: GPG's alpha-hat and F_norm.
      tau_pos, tau_neg: SAPO's temperatures.
      sequence_terms: GCPO: whether the whole-sequence ratio's term counts on every
        token (Table 1 literally) or once per completion (see :class:`SequenceTerms`).
      ratio_level: TRL's ``importance_sampling_level`` (see :class:`RatioLevel`);
        ``gspo`` is always ``sequence``.
      vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: VESPO's gamma weight
        phi(w) = exp(lambda + k log w - lambda w) for A >= 0 (pos) and A < 0 (neg) (TRL's defaults).
      top_entropy_quantile: TRL's rho: only tokens whose entropy is at least the
        (1 - rho)-quantile of the batch's completion-token entropies keep their policy
        term (the KL and the normalisers are unchanged); 1: off. Needs ``batch.entropy``.
      entropy_coef: TRL's entropy bonus: J += entropy_coef * (mean entropy over the
        batch's completion tokens kept by top_entropy_quantile). Needs ``batch.entropy``;
        its gradient flows through ``batch.entropy`` when that is a function of the parameters.
      multi_reward, reward_weights: how ``rewards`` of shape [..., G, K] (K reward
        functions) combine (see :class:`MultiReward`); weights w_k (None: all 1).
      prefix_debias: beyond the paper: every token of a shared-prefix node gets
        the node's mean weight, so a node's aggregate W_agg = mean(alpha) * sum_i s_i A_i
        no longer depends on the completions' lengths, and a prefix shared by
        the whole group gets exactly zero net gradient at the first inner step.
        Needs ``batch.tokens``. For objective ``sequence`` (GCPO) each completion
        then counts once (``sequence_terms='once'``): its length weighting enters
        through the whole-sequence ratio, which no per-token weight reaches.
        ``gmpo``'s 1/|o_i| lives inside its geometric-mean ratio (rejected).
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
    kl_log_ratio_clamp: float | None = 20.0
    kl_value_clamp: float | None = None
    prune_gamma: float | None = None
    prune_on: PruneOn = PruneOn.CENTRED
    offpolicy_delta: float | None = None
    gtpo_w: float = 2.0
    gtpo_conflicts: bool = False
    entropy_threshold: float | None = None
    cispo_clip: CispoClip = CispoClip.TWO_SIDED
    gpg_rescale: GpgRescale = GpgRescale.NONE
    f_norm: FNorm = FNorm.ONE
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    sequence_terms: SequenceTerms = SequenceTerms.PER_TOKEN
    ratio_level: RatioLevel = RatioLevel.TOKEN
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    top_entropy_quantile: float = 1.0
    entropy_coef: float = 0.0
    multi_reward: MultiReward = MultiReward.SUM_THEN_NORMALIZE
    reward_weights: tuple[float, ...] | None = None
    prefix_debias: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _coerce(self, field.name)
        if self.std_ddof not in (0, 1):
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
        for field in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"):
            _check(self, field, getattr(self, field) >= 0, ">= 0")
        _check(self, "top_entropy_quantile", 0 <= self.top_entropy_quantile <= 1, "in [0, 1] (1: off)")
        _check(self, "entropy_coef", math.isfinite(self.entropy_coef), "finite")
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
        if self.entropy_threshold is not None:
            _check(self, "entropy_threshold", not math.isnan(self.entropy_threshold), "a number (or None)")
        if self.reward_weights is not None:
            _check(self, "reward_weights", len(self.reward_weights) > 0, "a non-empty tuple of floats (or None)")
            _check(self, "reward_weights", all(math.isfinite(w) for w in self.reward_weights), "finite")
        if self.beta > 0 and self.regularizer == Regularizer.NONE:
            raise ValueError(
                f"MethodSpec.beta = {self.beta!r} has no effect with regularizer 'none' (method {self.name!r}): "
                "pass regularizer='kl' (k3 KL to batch.logp_ref) or 'kl_importance' (TRL's bias-corrected KL), "
                "or beta=0.0 (methods.get turns the flavour's KL on for you)"
            )
        if self.objective == Objective.GSPO and self.ratio_level != RatioLevel.SEQUENCE:
            object.__setattr__(self, "ratio_level", RatioLevel.SEQUENCE)  # GSPO's ratio is per sequence
        if self.ratio_level == RatioLevel.SEQUENCE and self.objective not in _SEQUENCE_LEVEL_OBJECTIVES:
            allowed = ", ".join(repr(o.value) for o in _SEQUENCE_LEVEL_OBJECTIVES)
            raise ValueError(
                f"MethodSpec.ratio_level 'sequence' applies to objectives {allowed}; got objective "
                f"{self.objective.value!r} (method {self.name!r})"
            )
        if self.sequence_terms == SequenceTerms.ONCE and self.objective != Objective.SEQUENCE:
            raise ValueError(
                f"MethodSpec.sequence_terms 'once' applies to objective 'sequence' (GCPO) only; got objective "
                f"{self.objective.value!r} (method {self.name!r})"
            )
        if self.multi_reward == MultiReward.NORMALIZE_THEN_SUM and self.scale != Scale.BATCH_STD:
            raise ValueError(
                "MethodSpec.multi_reward 'normalize_then_sum' centres and scales by the whole batch (TRL, GDPO): "
                f"it needs scale='batch_std'; got scale {self.scale.value!r} (method {self.name!r})"
            )
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

    @property
    def needs_entropy(self) -> bool:
        """Whether ``batch.entropy`` is read (GTPO's delta or R, TRL's entropy mask or bonus)."""
        gtpo_r = self.regularizer == Regularizer.GTPO_ENTROPY and self.beta > 0
        return self.entropy_threshold is not None or gtpo_r or self.top_entropy_quantile < 1 or self.entropy_coef != 0

    def replace(self, **overrides: Any) -> MethodSpec:
        """A copy with some fields replaced (validated again, like :func:`get`)."""
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)


_SEQUENCE_LEVEL_OBJECTIVES = (Objective.PPO_CLIP, Objective.GSPO, Objective.CISPO, Objective.SAPO)

_FLOAT_FIELDS = {f.name for f in dataclasses.fields(MethodSpec) if f.type in ("float", "float | None")}
_OPTIONAL_FIELDS = {f.name for f in dataclasses.fields(MethodSpec) if f.type.endswith("| None")}
_BOOL_FIELDS = {f.name for f in dataclasses.fields(MethodSpec) if f.type == "bool"}
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(MethodSpec))


def _type_name(value: Any) -> str:
    if isinstance(value, jax.Array):
        return "jax.Array"
    return "numpy.ndarray" if isinstance(value, np.ndarray) else type(value).__name__


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (np.generic,))


def _as_float(field: str, value: Any, spec_name: Any) -> float:
    if _is_array(value) or isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"MethodSpec.{field} must be a Python float, got a {_type_name(value)} (method {spec_name!r}): a "
            "MethodSpec is static under jit; sweep coefficients as traced arguments instead (e.g. "
            "analysis.reward_scale.scaled_loss's beta)"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"MethodSpec.{field} must be a float; got {value!r} ({type(value).__name__})")
    return float(value)


def _coerce(spec: MethodSpec, field: str) -> None:
    """Checks the type of one field (naming it) and stores it in its canonical form (enum, float, int)."""
    value = getattr(spec, field)
    if field in _ENUM_FIELDS:
        enum_type = _ENUM_FIELDS[field]
        try:
            value = enum_type(value)
        except ValueError:
            allowed = ", ".join(repr(e.value) for e in enum_type)
            raise ValueError(f"MethodSpec.{field} must be one of {allowed}; got {value!r}") from None
    elif field in _FLOAT_FIELDS:
        if value is not None or field not in _OPTIONAL_FIELDS:
            value = _as_float(field, value, spec.name)
    elif field in _BOOL_FIELDS:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"MethodSpec.{field} must be a bool; got {value!r} ({type(value).__name__})")
        value = bool(value)
    elif field == "std_ddof":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"MethodSpec.std_ddof must be an int (0 or 1); got {value!r} ({type(value).__name__})")
        value = int(value)
    elif field == "reward_weights":
        if value is not None:
            if _is_array(value) or not isinstance(value, (tuple, list)):
                raise TypeError(
                    f"MethodSpec.reward_weights must be a tuple of floats (or None); got {_type_name(value)}"
                )
            value = tuple(_as_float("reward_weights", w, spec.name) for w in value)
    elif field == "name":
        if not isinstance(value, str):
            raise TypeError(f"MethodSpec.name must be a str; got {value!r} ({type(value).__name__})")
    object.__setattr__(spec, field, value)


def _check(spec: MethodSpec, field: str, ok: bool, what: str) -> None:
    value = getattr(spec, field)
    if isinstance(value, float) and math.isnan(value):
        ok = False
    if not ok:
        raise ValueError(f"MethodSpec.{field} must be {what}; got {value!r} (method {spec.name!r})")


def _check_fields(overrides: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(_FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown MethodSpec field(s) {unknown}; known fields: {', '.join(sorted(_FIELD_NAMES))}")


# ---------------------------------------------------------------------------
# Presets. Each entry maps a flavour to the fields that differ from the defaults.

# GTPO (arXiv 2508.03772, Simoni et al.): the entropy threshold ln 2 is the paper's "provable threshold"
# (the official code, github winstonsmith1897/GTPO gtpo/gtpo_training.py, uses ENT_THRESHOLD = 0.7 ~ ln 2);
# the entropy coefficient 0.1 (gamma in the GTPO objective, ENT_SCALE there: A_i <- A_i - 0.1 <H>_i) and
# w = 2 (W_RAW) are the official code's values. See docs/conventions.md.
GTPO_ENTROPY_THRESHOLD = math.log(2.0)
GTPO_ENTROPY_COEF = 0.1
GTPO_W = 2.0

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
    kl_log_ratio_clamp=80.0,
)

_KL = dict(regularizer=Regularizer.KL, kl=KLEstimator.K3, beta=0.04)
# TRL >= 1.10 (use_bias_correction_kl=True): the KL term is beta * I * k3 with the ratio I carrying a gradient.
_TRL_KL = dict(regularizer=Regularizer.KL_IMPORTANCE, kl=KLEstimator.K3)

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
    "gtpo": dict(
        scale=Scale.NONE,
        gtpo_conflicts=True,
        gtpo_w=GTPO_W,
        entropy_threshold=GTPO_ENTROPY_THRESHOLD,
        regularizer=Regularizer.GTPO_ENTROPY,
        beta=GTPO_ENTROPY_COEF,
    ),
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
    # Table 1 literally: alpha = 1/(sigma G) on every token, each with the whole-sequence ratio,
    # so Omega_i = |o_i| / (sigma G). sequence_terms="once" counts each completion once.
    "gcpo": dict(objective=Objective.SEQUENCE, agg=Agg.SEQ_MEAN_TOKEN_SUM, sequence_terms=SequenceTerms.PER_TOKEN),
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
    # loss_type="grpo": mean over rows of sum_t / max(L_i, 1); scale_rewards="group";
    # use_bias_correction_kl=True (TRL >= 1.10): KL term beta * I * k3.
    "grpo": dict(_PAPER["grpo"], **_TRL_COMMON, **_TRL_KL),
    # loss_type="dr_grpo", scale_rewards="none": sum / (rows * max_completion_length); bias-corrected KL.
    "dr_grpo": dict(_PAPER["dr_grpo"], **_TRL_COMMON, **_TRL_KL, agg=Agg.SEQ_MEAN_TOKEN_SUM_NORM, norm_length=512.0),
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
# The KL a flavour adds when beta > 0 is asked of a preset without a regularizer (as verl's
# use_kl_loss + kl_loss_coef and TRL's beta do for any loss).
_FLAVOR_KL: dict[Flavor, Regularizer] = {
    Flavor.PAPER: Regularizer.KL,
    Flavor.VERL: Regularizer.KL,
    Flavor.TRL: Regularizer.KL_IMPORTANCE,
}


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
        any other :class:`MethodSpec` field replaces the preset's value. ``beta > 0``
        on a preset without a regularizer (gspo, dapo, ...) turns on the flavour's KL
        to ``batch.logp_ref`` (k3; in the trl flavour TRL's bias-corrected I * k3), as
        verl's ``kl_loss_coef`` and TRL's ``beta`` do; pass ``regularizer`` to choose.
        ``multi_reward='normalize_then_sum'`` sets ``scale='batch_std'`` unless given.

    Raises:
      ValueError: unknown name, flavour not available for this method, unknown
        field, or an invalid value (the message names the field).
      TypeError: a field of the wrong type (the message names the field).
    """
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str; got {name!r} ({type(name).__name__})")
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
    _check_fields(overrides)
    fields = dict(table[name])
    fields.update(overrides)
    fields["name"] = name
    fields["flavor"] = flavor
    beta = overrides.get("beta")
    if (
        "regularizer" not in overrides
        and fields.get("regularizer", Regularizer.NONE) == Regularizer.NONE
        and isinstance(beta, (int, float))
        and not isinstance(beta, bool)
        and beta > 0
    ):
        fields["regularizer"] = _FLAVOR_KL[flavor]
    if overrides.get("multi_reward") == MultiReward.NORMALIZE_THEN_SUM and "scale" not in overrides:
        fields["scale"] = Scale.BATCH_STD
    return MethodSpec(**fields)
