"""Prop. 4 / Appendix A: the surrogate loss is not a progress signal — tested cross-sectionally.

Everything runs on the exact tabular softmax policy (``jgrpo.policies.tabular_*``): V
tokens, completions of at most T tokens ending at EOS, reward 1 iff the completion
contains the TARGET token. Its expected reward E[r] is computed exactly
(``analysis.tabular``: the ``contains`` automaton), so the progress an update makes,
ΔE = E_{θ_new}[r] − E_{θ_old}[r], is known without sampling noise.

(a) First-step identities (Scenario A, Eqs. 8–11), kind "verification". On sampled
    groups (plus one hand-made group of G completions with a single success), for
    every preset and flavour: jgrpo.loss at logp = logp_old against
    ``analysis.proxy.first_step_objective`` (J = Σ_i A_i Ω_i − βR), and, for the
    paper flavour, against closed forms computed here in float64 NumPy from the
    rewards, lengths, logp_old and logp_ref alone (never from jgrpo):
    length-normalised weights J = −βR (Eq. 9); dr_grpo J = (1/G) Σ A_i|o_i| − βR
    (Eq. 10); the general case J = G·Cov(A, Ω) − βR (Eq. 11) with Ω from Table 1:
    dapo Ω_i = |o_i|/(σ Σ_j|o_j|), cppo Ω_i = 1{|A_i| > γ}/(Gσ) (the general case
    once pruning fires: G = 16 with one success gives a policy part of √15/16 =
    0.242), gcpo Ω_i = |o_i|/(σG) (Table 1 read literally) or 1/(σG) (counted once
    per completion), bnpo, sapo, gpg, cispo.

(b) Cross-sectional test (Scenarios A and B), kind "experiment". R independent
    training runs (grpo, AdamW, different initial policies and samples) give
    checkpoints θ_old early / middle / late in training; a unit is one (run,
    checkpoint). At each unit, K independent batches of B groups × G completions are
    sampled from π_old; for every preset, each batch gets μ AdamW inner steps from
    θ_old with a fresh optimizer state (so the K updates are independent given θ_old)
    and π_ref = the run's initial policy. G = 16, so that cppo's pruning (|A_i| ≤ γ = 0.1)
    fires in groups with one success or one failure. Per batch: J_first (the surrogate at the
    first inner step), J_after (after μ steps), the surrogate gain J_after − J_first,
    and the exact ΔE of the update. Per unit: Pearson correlations over the K
    batches; per preset: their mean over units (Fisher z, Student-t 95% interval
    over the U units). Two positive controls show the design's power: the exact
    first-order gain ∇E(θ_old)·Δθ, and the SNIS monitor below.

(c) A progress monitor that works (beyond the paper): ``analysis.proxy.snis_gain``
    on N fresh held-out completions from π_old per batch (not the batch trained
    on), with sequence weights π_θ/π_old — correlation with ΔE and calibration
    (slope of SNIS on ΔE, bias relative to the spread of ΔE) per preset.

Criteria (fixed here, before any run; ρ0 = ``RHO0``, δ = ``CAL_TOL``):

- Scenario A, per preset: reproduced when the 95% CI of the mean corr(J_first, ΔE)
  lies inside (−ρ0, ρ0) — a proxy that explains less than ρ0² = 9% of the variance
  of the progress across batches carries no useful signal; not reproduced when the
  CI lies entirely outside [−ρ0, ρ0]; otherwise inconclusive. When J_first is the
  same number for every batch (β = 0 and Ω constant in each group: gspo, gcpo counted
  once) there is nothing to correlate: Eq. 9 makes it −βR = 0, a verification.
- Scenario B, per preset: the same rule for corr(J_after − J_first, ΔE) ("changes
  in the surrogate loss primarily reflect off-policy drift and optimizer dynamics,
  rather than genuine reward improvement", Appendix A.2).
- Power: the positive control ∇E·Δθ must have a CI lower bound above ρ0 for the
  preset; otherwise a "reproduced" null for that preset is reported inconclusive.
- SNIS monitor, per preset: works when the CI of corr(SNIS, ΔE) lies above ρ0, the
  CI of the calibration slope cov(SNIS, ΔE)/var(ΔE) lies inside [1 − δ, 1 + δ] and
  the CI of the standardised bias mean(SNIS − ΔE)/sd(ΔE) inside [−δ, δ]; fails when
  any of the three CIs lies entirely outside its band (the correlation's: below ρ0);
  otherwise inconclusive.

History (reported so that the verdicts can be weighed): the first run of this design used
3 runs, B = 4 × G = 8 (cppo never prunes at G = 8), η = 0.05 for training and updates and
checkpoints at steps 4 / 15 / 40, the last on the plateau of E[r] (0.99); there
corr(J_after − J_first, ΔE) was +0.60 … +0.78 for 5 of 6 presets (Scenario B "not
reproduced"; gspo +0.35, inconclusive). G became 16 so that cppo's pruning fires, and
the training η 0.02 so that the checkpoints span the learning curve (E[r] ≈ 0.54 /
0.73 / 0.93) rather than its plateau; ρ0 and δ did not change. The by-phase breakdown
and the η sensitivity were added after the per-unit correlations of these runs showed
the phase dependence; they are reported, not claims.

The transformer part of earlier versions is gone: its only truth signal, the change
of a batch's mean reward, correlated with the exact ΔE at 0.12 on the tabular
policy, so a claim built on it could not fail.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import proxy as px
from analysis import tabular
from analysis.overshoot import simulate_inner_steps
from experiments import stats
from experiments.common import MIN_SEEDS, Claim, Context, finish, markdown_table, new_figure, save_figure, verdict
from jgrpo.policies import tabular_init, tabular_logits_fn, tabular_logprob, tabular_logprob_and_entropy

NAME = "loss_proxy"
EOS = 1  # token id that ends a completion
TARGET = 2  # reward 1 iff the completion contains this token
RHO0 = 0.3  # |corr| below this: "no useful signal" (less than 9% of the variance of ΔE explained)
CAL_TOL = 0.2  # SNIS calibration band: slope in [1 − δ, 1 + δ], standardised bias in [−δ, δ]
ULPS = 64  # identity tolerance: ULPS float32 epsilons times the size of the terms compared
PHASES = ("early", "middle", "late")
# Table 1 presets whose first-step policy part is Σ_i A_i · const = 0 (Eq. 9)
LENGTH_NORMALISED = ("grpo", "grpo_v32", "gspo", "gmpo", "rloo")
# jgrpo.MethodSpec field that selects gcpo's reading, and its value for "once per completion"
# (added by the 'core' branch; absent on older versions, where gcpo counts each completion once).
GCPO_FIELD = "sequence_terms"
GCPO_ONCE = "once"
# The programs are tiny and compile-bound on CPU: XLA's backend at -O0 compiles ~3x faster.
_COMPILER = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


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


# ----------------------------------------------------------------------------- the task, exactly


def _reward(tokens, mask):
    """1 iff the completion contains TARGET (``[..., G, T]`` → ``[..., G]``)."""
    return jnp.any((tokens == TARGET) & (mask > 0), axis=-1).astype(jnp.float32)


def exact_reward(params, *, length: int):
    """E_π[r] = P(the completion contains TARGET), exact (``analysis.tabular``, the ``contains`` automaton).

    Matches ``jgrpo.sample(tabular_logits_fn(1), ..., max_len=length, eos_id=EOS)`` and :func:`_reward`.
    """
    vocab = np.shape(params["logits"])[-1]
    value = jnp.array([[0.0] * (length + 1), [1.0] * (length + 1)])  # state 1: TARGET seen
    return tabular.expectation(params, tabular.contains(vocab, TARGET), value, eos=EOS, length=length)


def _sample(params, key, b: int, g: int, length: int):
    prompt = jnp.full((b, 1), TARGET, jnp.int32)  # ignored by the tabular policy
    return jgrpo.sample(tabular_logits_fn(1), params, prompt, key, group_size=g, max_len=length, eos_id=EOS)


def _batch(params, ref_params, key, b: int, g: int, length: int) -> jgrpo.GroupBatch:
    """A GroupBatch ``[B, G, T]`` sampled from π_old = ``params``, logp_ref from ``ref_params``."""
    s = _sample(params, key, b, g, length)
    logp_old, entropy = tabular_logprob_and_entropy(params, s.tokens)
    return jgrpo.GroupBatch(
        mask=s.mask,
        logp_old=jax.lax.stop_gradient(logp_old),
        rewards=_reward(s.tokens, s.mask),
        logp_ref=jax.lax.stop_gradient(tabular_logprob(ref_params, s.tokens)),
        tokens=s.tokens,
        entropy=jax.lax.stop_gradient(entropy),
    )


def _spec(name: str) -> jgrpo.MethodSpec:
    """The paper-flavour preset; "gcpo_once" is gcpo counted once per completion."""
    if name == "gcpo_once":
        return jgrpo.methods.get("gcpo", **({GCPO_FIELD: GCPO_ONCE} if _has_gcpo_field() else {}))
    return jgrpo.methods.get(name)


def _has_gcpo_field() -> bool:
    return GCPO_FIELD in {f.name for f in dataclasses.fields(jgrpo.MethodSpec)}


def _gcpo_reading(spec: jgrpo.MethodSpec) -> str:
    """The reading of a gcpo spec: "literal" (Ω_i = |o_i|/(σG)) or "once" (Ω_i = 1/(σG)), from its field."""
    if not _has_gcpo_field():
        return "once"  # jgrpo before the Table-1-literal gcpo: one term per completion
    value = getattr(spec, GCPO_FIELD)
    return "once" if str(getattr(value, "value", value)) == GCPO_ONCE else "literal"


def _methods(cfg: Config) -> tuple[str, ...]:
    """Part (b)'s presets; "gcpo_once" is dropped where jgrpo's gcpo already is that reading."""
    duplicate = not _has_gcpo_field() and "gcpo" in cfg.methods
    return tuple(m for m in cfg.methods if not (m == "gcpo_once" and duplicate))


# ----------------------------------------------------------------------------- (a) closed forms, float64 NumPy


def np_first_step(name: str, spec, rewards, mask, logp_old, logp_ref, *, reading: str = "once"):
    """The Prop. 4 closed form of J(θ_old) per group, float64 NumPy from the batch alone (paper flavour).

    Ω_i is Table 1's α summed over the tokens of completion i at ratio 1 (times log π_old for
    the objectives whose value is A log π), J = G·Cov(A, Ω) − βR (Eq. 11; = Σ_i A_i Ω_i because
    Σ_i A_i = 0), R the k3 KL with the policy normaliser without 1/σ.

    Returns:
      ``(case, policy [B], regularizer [B] or None, omega [B, G])``; ``case`` is "" when there is
      no closed form here (gtpo: conflict-token λ); regularizer None when not computed here.
    """
    r = np.asarray(rewards, np.float64)
    m = np.asarray(mask, np.float64)
    lengths = m.sum(-1)
    b, g = r.shape
    a = r - r.mean(-1, keepdims=True)
    sigma = np.sqrt((a**2).sum(-1, keepdims=True) / (g - spec.std_ddof)) + spec.std_eps
    inv_sigma = np.where(sigma > 0, 1.0 / np.where(sigma > 0, sigma, 1.0), 0.0)
    lp_sum = (np.asarray(logp_old, np.float64) * m).sum(-1)
    ones = np.ones_like(r)
    if name in LENGTH_NORMALISED or (name == "gcpo" and reading == "once"):
        case = "Eq. 9: Ω const, J = −βR"
        if name == "rloo":
            a = a * g / (g - 1)
        omega = ones / g if name in ("grpo_v32", "rloo") else ones * inv_sigma / g
    elif name == "dr_grpo":
        case, omega = "Eq. 10: J = (1/G) Σ A|o| − βR", lengths / g
    elif name == "gcpo":
        case, omega = "Eq. 11: Ω = |o|/(σG)", lengths * inv_sigma / g
    elif name == "dapo":
        case, omega = "Eq. 11: Ω = |o|/(σ Σ|o|)", lengths * inv_sigma / lengths.sum(-1, keepdims=True)
    elif name == "bnpo":  # batch-wide token count; jgrpo's per-prompt J carries a factor B (its mean is the sum)
        case, omega = "Eq. 11: Ω = B|o|/(σ N_tokens)", b * lengths * inv_sigma / lengths.sum()
    elif name == "cppo":
        case, omega = "Eq. 11: Ω = 1{|A|>γ}/(Gσ)", (np.abs(a) > spec.prune_gamma) * inv_sigma / g
    elif name == "sapo":
        tau = np.where(a > 0, spec.tau_pos, spec.tau_neg)
        case, omega = "Eq. 11: Ω = 2/(τ_i G σ)", 2.0 / tau * inv_sigma / g
    elif name == "cispo":
        case, omega = "Eq. 11: Ω = Σ_t log π_old/(σ Σ|o|)", lp_sum * inv_sigma / lengths.sum(-1, keepdims=True)
    elif name == "gpg":
        equal = np.ptp(r, axis=-1) == 0
        alpha_hat = b / (b - equal.sum()) if equal.sum() < b else 0.0
        case, omega = "Eq. 11: Ω = α̂ Σ_t log π_old/Σ|o|", alpha_hat * lp_sum / lengths.sum(-1, keepdims=True)
    else:
        return "", None, None, None
    policy = g * np.array([np.cov(a[k], omega[k], bias=True)[0, 1] for k in range(b)])
    reg = None
    if spec.beta == 0:
        reg = np.zeros(b)
    elif name in ("grpo", "cppo", "grpo_v32", "dr_grpo"):
        x = np.asarray(logp_ref, np.float64) - np.asarray(logp_old, np.float64)
        k3 = np.where(m > 0, np.exp(np.where(m > 0, x, 0.0)) - x - 1.0, 0.0)  # at ratio 1, V3.2's I·k3 = k3
        per_token = 1.0 / g if name == "dr_grpo" else 1.0 / (g * np.maximum(lengths, 1.0))  # [B, G] or scalar
        reg = (k3.sum(-1) * per_token).sum(-1)
    return case, policy, reg, omega


def _tolerance(*terms) -> np.ndarray:
    """ULPS float32 epsilons times the size of the terms compared (per group)."""
    return ULPS * float(np.finfo(np.float32).eps) * (1.0 + sum(np.abs(np.asarray(t, np.float64)) for t in terms))


def _identity_batch(cfg: Config, key):
    """Part (a)'s batch: sampled groups plus one hand-made group with a single success."""
    k_init, k_ref, k_s = jax.random.split(key, 3)
    params = tabular_init(k_init, vocab=cfg.vocab, max_len=cfg.length, scale=cfg.init_scale)
    ref = {"logits": params["logits"] + cfg.ref_noise * jax.random.normal(k_ref, params["logits"].shape)}
    batch = jax.jit(_batch, static_argnums=(3, 4, 5), compiler_options=_COMPILER)(
        params, ref, k_s, cfg.id_groups + 1, cfg.id_group_size, cfg.length
    )
    batch = jax.tree.map(np.asarray, batch)
    rewards = batch.rewards.copy()
    rewards[-1] = 0.0
    rewards[-1, 0] = 1.0  # hand-made: G completions, one success (cppo prunes every failure)
    return dataclasses.replace(batch, rewards=rewards)


def _first_step_values(specs: tuple, batch: jgrpo.GroupBatch):
    """jgrpo.loss at logp = logp_old (θ = θ_old: every ratio is 1) and Prop. 4's pieces, for every spec."""
    out = []
    for spec in specs:
        _, aux = jgrpo.loss(spec, batch.logp_old, batch)
        fs = px.first_step_objective(spec, batch)
        cov = px.advantage_weight_covariance(spec, batch)
        out.append((aux["objective"], fs.objective, fs.policy, fs.regularizer, fs.omega, fs.advantages, cov))
    return out


def part_a(cfg: Config, key) -> tuple[dict, dict]:
    batch = _identity_batch(cfg, key)
    names = cfg.presets if cfg.presets is not None else jgrpo.methods.names()
    labels = [(n, f) for n in names for f in (jgrpo.methods.flavors(n) if cfg.flavors else ("paper",))]
    if "gcpo" in names and _has_gcpo_field():
        labels.append(("gcpo_once", "paper"))  # the other reading of gcpo, next to the paper preset
    specs = tuple(_spec(n) if n == "gcpo_once" else jgrpo.methods.get(n, flavor=f) for n, f in labels)
    values = jax.jit(_first_step_values, static_argnums=0, compiler_options=_COMPILER)(specs, batch)
    out = {}
    for (name, flavor), spec, vals in zip(labels, specs, values, strict=True):
        j_loss, j_p4, pol, reg, omega, adv, cov = (np.asarray(v, np.float64) for v in vals)
        size = np.abs(adv * omega).sum(-1)
        tol = _tolerance(size, spec.beta * reg, j_loss)
        rec = {
            "beta": spec.beta,
            "objective_loss": j_loss,
            "policy": pol,
            "regularizer": reg,
            "identity_err": float(np.max(np.abs(j_loss - j_p4))),
            "cov_err": float(np.max(np.abs(cov - pol))),
            "identity_ok": bool(np.all(np.abs(j_loss - j_p4) <= tol) and np.all(np.abs(cov - pol) <= tol)),
            "case": "",
        }
        if flavor == "paper":
            base = "gcpo" if name == "gcpo_once" else name
            reading = _gcpo_reading(spec) if base == "gcpo" else "once"
            case, policy_np, reg_np, omega_np = np_first_step(
                base, spec, batch.rewards, batch.mask, batch.logp_old, batch.logp_ref, reading=reading
            )
            if case:
                j_np = policy_np - spec.beta * (reg_np if reg_np is not None else reg)
                err = np.abs(pol - policy_np)
                rec.update(
                    case=case + (f" ({reading})" if base == "gcpo" else ""),
                    closed_policy=policy_np,
                    closed_err=float(np.max(err)),
                    closed_ok=bool(np.all(err <= _tolerance(size, policy_np))),
                    closed_objective_err=float(np.max(np.abs(j_loss - j_np))),
                    closed_objective_ok=bool(np.all(np.abs(j_loss - j_np) <= tol)),
                    regularizer_closed=reg_np is not None,
                    omega_spread=float(np.max(np.ptp(omega_np, axis=-1))),
                )
        out[f"{name}-{flavor}" if flavor != "paper" else name] = rec
    lengths = np.asarray(batch.mask).sum(-1)
    r = np.asarray(batch.rewards)
    a = r - r.mean(-1, keepdims=True)
    gamma = jgrpo.methods.get("cppo").prune_gamma
    info = {
        "groups": int(r.shape[0]),
        "group_size": int(r.shape[1]),
        "length_min": int(lengths.min()),
        "length_max": int(lengths.max()),
        "length_mean": float(lengths.mean()),
        "reward_mean": float(r[:-1].mean()),
        "mixed_groups": int(np.sum(np.ptp(r, axis=-1) > 0)),
        "cppo_pruning_groups": int(np.sum((np.ptp(r, axis=-1) > 0) & np.any(np.abs(a) <= gamma, axis=-1))),
        "cppo_single_success_policy": float(out["cppo"]["policy"][-1]) if "cppo" in out else float("nan"),
        "gcpo_reading": _gcpo_reading(jgrpo.methods.get("gcpo")),
    }
    return out, info


# ----------------------------------------------------------------------------- (b, c) cross-sectional test


def _train_runs(cfg: Config, key):
    """R independent grpo training runs; returns (θ at every step [R, N+1, ...], θ_0 [R, ...], E[r] [R, N+1])."""
    spec = jgrpo.methods.get("grpo")
    opt = optax.adamw(cfg.learning_rate, b1=0.9, b2=0.999, eps=cfg.adam_eps, weight_decay=0.0)

    def run(key):
        k_init, k_steps = jax.random.split(key)
        theta0 = tabular_init(k_init, vocab=cfg.vocab, max_len=cfg.length, scale=cfg.init_scale)

        def outer(carry, k):
            theta, state = carry
            batch = _batch(theta, theta0, k, cfg.num_groups, cfg.group_size, cfg.length)

            def loss_fn(p):
                return jgrpo.loss(spec, tabular_logprob(p, batch.tokens), batch)[0], ()

            traj = simulate_inner_steps(loss_fn, theta, opt, cfg.inner_steps, opt_state=state)
            return (traj.final_params, traj.final_opt_state), traj.final_params

        _, thetas = jax.lax.scan(outer, (theta0, opt.init(theta0)), jax.random.split(k_steps, cfg.train_steps))
        thetas = jax.tree.map(lambda t0, ts: jnp.concatenate([t0[None], ts]), theta0, thetas)
        return thetas, theta0, jax.vmap(lambda p: exact_reward(p, length=cfg.length))(thetas)

    return jax.jit(jax.vmap(run), compiler_options=_COMPILER)(jax.random.split(key, cfg.runs))


def _make_evaluator(cfg: Config, specs: tuple):
    """``(θ_old [U], θ_ref [U], keys [U]) -> (per-batch records [U, K, H, P], E(θ_old) [U])``, one program.

    H = ``len(cfg.inner_lrs)``. The inner η is a traced array and the preset a one-hot selector
    (the loss is Σ_p sel_p loss_p; 0 · loss_p adds exactly 0): every (η, preset) lane of a batch is
    one member of a ``vmap`` of one compiled program.
    """
    n_p, n_h = len(specs), len(cfg.inner_lrs)
    lanes_sel = jnp.tile(jnp.eye(n_p, dtype=jnp.float32), (n_h, 1))  # [H*P, P]
    lanes_lr = jnp.repeat(jnp.asarray(cfg.inner_lrs, jnp.float32), n_p)  # [H*P]

    def energy(p):
        return exact_reward(p, length=cfg.length)

    def one_batch(theta, theta_ref, e_old, grad_e, key):
        k_b, k_h = jax.random.split(key)
        batch = _batch(theta, theta_ref, k_b, cfg.num_groups, cfg.group_size, cfg.length)
        held = _sample(theta, k_h, 1, cfg.heldout, cfg.length)
        held_r = _reward(held.tokens, held.mask)

        def per_lane(sel, lr):
            opt = optax.adamw(lr, b1=0.9, b2=0.999, eps=cfg.adam_eps, weight_decay=0.0)

            def pick(values):
                return sum(sel[k] * v for k, v in enumerate(values))

            def loss_fn(p):
                logp = tabular_logprob(p, batch.tokens)
                outs = [jgrpo.loss(s, logp, batch) for s in specs]
                return pick([v for v, _ in outs]), {"objective": pick([jnp.mean(a["objective"]) for _, a in outs])}

            traj = simulate_inner_steps(loss_fn, theta, opt, cfg.inner_steps)  # fresh optimizer state
            new = traj.final_params
            delta = jax.tree.map(jnp.subtract, new, theta)
            logp_h = tabular_logprob(new, held.tokens)
            sn = px.snis_gain(logp_h, held.logp_old, held_r, held.mask)
            plain = px.snis_gain(logp_h, held.logp_old, held_r, held.mask, normalize=False)
            j_first = traj.aux["objective"][0]
            return {
                "delta_e": energy(new) - e_old,
                "j_first": j_first,
                "j_after": traj.final_aux["objective"],
                "first_order": sum(
                    jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grad_e), jax.tree.leaves(delta), strict=True)
                ),
                "snis": sn.gain[0],
                "is": plain.gain[0],
                "ess": sn.ess[0],
                "update_norm": optax.tree.norm(delta),
            }

        recs = jax.vmap(per_lane)(lanes_sel, lanes_lr)
        return jax.tree.map(lambda x: x.reshape((n_h, n_p) + x.shape[1:]), recs)

    def unit(theta, theta_ref, key):
        e_old, grad_e = jax.value_and_grad(energy)(theta)
        recs = jax.vmap(one_batch, in_axes=(None, None, None, None, 0))(
            theta, theta_ref, e_old, grad_e, jax.random.split(key, cfg.batches)
        )
        return recs, e_old

    def units(theta, theta_ref, keys):  # one unit after the other: memory stays that of one unit
        return jax.lax.map(lambda args: unit(*args), (theta, theta_ref, keys))

    return jax.jit(units, compiler_options=_COMPILER)


def part_bc(cfg: Config, key, progress=lambda f, m: None):
    """Training runs, then the cross-sectional measurement at every unit; NumPy arrays out."""
    k_train, k_eval = jax.random.split(key)
    thetas, theta0, e_curve = _train_runs(cfg, k_train)
    ck = jnp.asarray(cfg.checkpoints)
    theta_old = jax.tree.map(lambda t: t[:, ck].reshape((cfg.units,) + t.shape[2:]), thetas)  # unit = run*C + c
    theta_ref = jax.tree.map(lambda t: jnp.repeat(t, len(cfg.checkpoints), axis=0), theta0)
    methods = _methods(cfg)
    progress(0.35, f"(b) {cfg.units} units x {cfg.batches} batches x {len(cfg.inner_lrs)} lr x {len(methods)} presets")
    evaluate = _make_evaluator(cfg, tuple(_spec(m) for m in methods))
    recs, e_old = evaluate(theta_old, theta_ref, jax.random.split(k_eval, cfg.units))
    recs = {k: np.asarray(v, np.float64) for k, v in jax.device_get(recs).items()}  # [U, K, H, P]
    return {
        "methods": methods,
        "records": recs,
        "e_old": np.asarray(e_old, np.float64),
        "e_curve": np.asarray(e_curve, np.float64),
    }


# ----------------------------------------------------------------------------- statistics (pure NumPy)


def _corr(x, y) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else float("nan")


def constant(x) -> bool:
    """True when a proxy takes one value on every batch (to float32 rounding of its size)."""
    x = np.asarray(x, np.float64)
    return bool(np.ptp(x) <= ULPS * float(np.finfo(np.float32).eps) * (1.0 + np.max(np.abs(x))))


def mean_corr_ci(rs) -> stats.Interval:
    """Mean of per-unit correlations in Fisher z, Student-t 95% interval over units, back in r."""
    z = np.arctanh(np.clip(np.asarray(rs, np.float64), -0.999999, 0.999999))
    ci = stats.mean_ci(z)
    return stats.Interval(math.tanh(ci.lo), math.tanh(ci.hi), math.tanh(ci.center), ci.n)


def summarise(records: dict, methods: tuple[str, ...]) -> dict:
    """Per preset: per-unit correlations with ΔE, SNIS calibration, and their CIs over units.

    Args:
      records: ``{field: [U, K, P]}`` (part (b)'s per-batch records).
    """
    de = records["delta_e"]
    u, _, n_p = de.shape
    proxies = {
        "j_first": records["j_first"],
        "gain": records["j_after"] - records["j_first"],
        "j_after": records["j_after"],
        "snis": records["snis"],
        "is": records["is"],
        "first_order": records["first_order"],
    }
    out = {}
    for p, name in enumerate(methods):
        rec = {"corr": {}, "ci": {}, "constant": {}}
        for key, x in proxies.items():
            const = all(constant(x[k, :, p]) for k in range(u))
            rs = np.array([np.nan if const else _corr(x[k, :, p], de[k, :, p]) for k in range(u)])
            rec["constant"][key] = const
            rec["corr"][key] = rs
            rec["ci"][key] = None if const or not np.all(np.isfinite(rs)) else mean_corr_ci(rs)
        sn, d = records["snis"][..., p], de[..., p]
        sd = d.std(axis=1, ddof=1)
        slope = np.array([np.cov(sn[k], d[k])[0, 1] / np.var(d[k], ddof=1) for k in range(u)])
        bias = (sn - d).mean(axis=1) / sd
        rec.update(
            slope=slope,
            slope_ci=stats.mean_ci(slope),
            bias=bias,
            bias_ci=stats.mean_ci(bias),
            delta_e_mean=float(d.mean()),
            delta_e_sd=float(sd.mean()),
            ess_mean=float(records["ess"][..., p].mean()),
            j_first_max_abs=float(np.max(np.abs(records["j_first"][..., p]))),
        )
        out[name] = rec
    return out


def by_phase(summary: dict, runs: int, checkpoints: int) -> dict:
    """Per preset and proxy: the mean correlation at each checkpoint over the runs (95% CI), or None.

    Units are ordered run-major (unit = run · C + checkpoint). A breakdown reported beside the claims,
    not a claim: it was added after the first look at the per-unit correlations.
    """
    out = {}
    for name, s in summary.items():
        out[name] = {}
        for key in ("j_first", "gain", "snis"):
            rs = s["corr"][key].reshape(runs, checkpoints)
            out[name][key] = [
                mean_corr_ci(rs[:, j]) if runs > 1 and np.all(np.isfinite(rs[:, j])) else None
                for j in range(checkpoints)
            ]
    return out


# ----------------------------------------------------------------------------- claims (pure: numbers in, Claims out)

_A_CRIT = (
    f"95% CI (t over units, Fisher z) of mean corr(J_first, ΔE) over K batches at fixed θ_old lies inside "
    f"(−{RHO0}, {RHO0}); a 'reproduced' needs the positive control's CI above {RHO0}"
)
_A_FALSE = f"the CI lies entirely outside [−{RHO0}, {RHO0}]: J_first predicts the progress of the update"
_B_CRIT = _A_CRIT.replace("corr(J_first, ΔE)", "corr(J_after − J_first, ΔE) (μ inner steps)")
_B_FALSE = f"the CI lies entirely outside [−{RHO0}, {RHO0}]: the inner-loop surrogate gain tracks the exact progress"


def null_decision(ci, control_ci) -> bool | None:
    """True (no useful signal), False (a signal beyond ρ0), None (undecided or the design lacks power)."""
    if ci is None:
        return None
    if ci.hi < -RHO0 or ci.lo > RHO0:
        return False
    if -RHO0 < ci.lo and ci.hi < RHO0:
        return True if control_ci is not None and control_ci.lo > RHO0 else None
    return None


def snis_decision(corr_ci, slope_ci, bias_ci) -> bool | None:
    """The SNIS monitor works (True), fails (False) or undecided (None); see the module docstring."""
    if corr_ci is None:
        return None
    bands = ((slope_ci, 1.0 - CAL_TOL, 1.0 + CAL_TOL), (bias_ci, -CAL_TOL, CAL_TOL))
    if corr_ci.hi < RHO0 or any(ci.hi < lo or ci.lo > hi for ci, lo, hi in bands):
        return False
    if corr_ci.lo > RHO0 and all(lo <= ci.lo and ci.hi <= hi for ci, lo, hi in bands):
        return True
    return None


def _decide(ok: bool | None, units: int) -> str:
    """An experiment's verdict: undecided below ``MIN_SEEDS`` units (a unit is a seed here)."""
    return verdict(ok if units >= MIN_SEEDS else None)


def _fmt(ci) -> str:
    return "undefined" if ci is None else f"{ci.center:+.3f} [{ci.lo:+.3f}, {ci.hi:+.3f}]"


def claims_a(a: dict, info: dict) -> list[Claim]:
    """Part (a)'s verifications from the measured errors."""
    out = []
    worst = max(a, key=lambda n: a[n]["identity_err"])
    ok = all(r["identity_ok"] for r in a.values())
    out.append(
        Claim(
            claim=f"Prop. 4 (Eqs. 8, 11): J(θ_old) = Σ_i A_i Ω_i − βR = G·Cov(A, Ω) − βR equals jgrpo.loss at "
            f"logp = logp_old, all {len(a)} presets × flavours",
            kind="verification",
            criterion=f"|J_loss − J_Prop4| and |Σ A Ω − G·Cov(A, Ω)| ≤ {ULPS} float32 eps × (1 + Σ|A Ω| + β|R| + |J|) "
            "in every group",
            falsified_if="any group exceeds the tolerance",
            measured=f"max error {a[worst]['identity_err']:.2e} ({worst}); max |Σ A Ω − G·Cov| "
            f"{max(r['cov_err'] for r in a.values()):.2e}",
            verdict=verdict(ok),
            proposition="Prop. 4",
        )
    )
    for what, names, label in (
        ("Eq. 9: length-normalised weights give J = −βR exactly (policy part 0)", None, "Eq. 9"),
        ("Eq. 10: dr_grpo J = (1/G) Σ_i A_i|o_i| − βR", ("dr_grpo",), "Eq. 10"),
        ("Eq. 11: J = G·Cov(A, Ω) − βR, Ω from Table 1 (dapo, cppo, gcpo, bnpo, sapo, gpg, cispo)", None, "Eq. 11"),
    ):
        rows = {n: r for n, r in a.items() if r["case"].startswith(label) and (names is None or n in names)}
        if not rows:
            continue
        ok = all(r["closed_ok"] and r["closed_objective_ok"] for r in rows.values())
        err = max(max(r["closed_err"], r["closed_objective_err"]) for r in rows.values())
        size = max(float(np.max(np.abs(r["closed_policy"]))) for r in rows.values())
        out.append(
            Claim(
                claim=f"{what}: {', '.join(rows)}; closed forms in float64 NumPy from rewards, lengths, logp",
                kind="verification",
                criterion=f"|policy part − closed form| and |J_loss − (closed form − βR)| ≤ {ULPS} float32 eps × size",
                falsified_if="any group exceeds the tolerance",
                measured=f"max error {err:.2e}; largest |closed-form policy part| {size:.3g}",
                verdict=verdict(ok),
                proposition="Prop. 4",
            )
        )
    if "cppo" in a and a["cppo"]["case"]:
        got = info["cppo_single_success_policy"]
        g = info["group_size"]
        expected = math.sqrt(g - 1) / g  # (1 − 1/G)/(G σ), σ = √(G−1)/G: only the success survives pruning
        out.append(
            Claim(
                claim=f"cppo is the general case (Eq. 11) once pruning fires: G = {g}, one success, γ = 0.1 → policy "
                f"part √(G−1)/G = {expected:.3f}, not 0 (−βR)",
                kind="verification",
                criterion="|policy part − √(G−1)/G| ≤ float32 tolerance",
                falsified_if="the policy part is 0 or differs from √(G−1)/G",
                measured=f"{got:.6f} ({info['cppo_pruning_groups']} of {info['mixed_groups']} mixed groups prune)",
                verdict=verdict(bool(abs(got - expected) <= _tolerance(expected))),
                proposition="Prop. 4",
            )
        )
    return out


def claims_bc(summary: dict, units: int) -> list[Claim]:
    """Scenario A, Scenario B, power and the SNIS monitor, per preset, from the measured correlations."""
    out = []
    for name, s in summary.items():
        control = s["ci"]["first_order"]
        if s["constant"]["j_first"]:
            out.append(
                Claim(
                    claim=f"Scenario A, {name}: J_first is one number on every batch (Eq. 9 with β = 0)",
                    kind="verification",
                    criterion="max |J_first| ≤ float32 tolerance on all batches",
                    falsified_if="J_first differs from 0 on some batch",
                    measured=f"max |J_first| = {s['j_first_max_abs']:.2e} over {units} units",
                    verdict=verdict(s["j_first_max_abs"] <= _tolerance(0.0)),
                    proposition="Prop. 4",
                )
            )
        else:
            ci = s["ci"]["j_first"]
            out.append(
                Claim(
                    claim=f"Scenario A, {name}: at a fixed θ_old the first-step surrogate J_first carries no useful "
                    "signal about the exact improvement ΔE of the update",
                    kind="experiment",
                    criterion=_A_CRIT,
                    falsified_if=_A_FALSE,
                    measured=f"corr(J_first, ΔE) {_fmt(ci)}; control corr(∇E·Δθ, ΔE) {_fmt(control)}",
                    verdict=_decide(null_decision(ci, control), units),
                    proposition="Prop. 4",
                    ci=(ci.lo, ci.hi) if ci is not None else (-1.0, 1.0),
                    seeds=units,
                )
            )
        ci = s["ci"]["gain"]
        out.append(
            Claim(
                claim=f"Scenario B, {name}: after μ inner steps the surrogate gain J_after − J_first reflects drift, "
                "not the exact improvement ΔE",
                kind="experiment",
                criterion=_B_CRIT,
                falsified_if=_B_FALSE,
                measured=f"corr(J_after − J_first, ΔE) {_fmt(ci)}; corr(J_after, ΔE) {_fmt(s['ci']['j_after'])}",
                verdict=_decide(null_decision(ci, control), units),
                proposition="Prop. 4",
                ci=(ci.lo, ci.hi) if ci is not None else (-1.0, 1.0),
                seeds=units,
            )
        )
        cc = s["ci"]["snis"]
        out.append(
            Claim(
                claim=f"SNIS monitor, {name}: the held-out self-normalised IS estimate tracks and is calibrated to ΔE",
                kind="experiment",
                criterion=f"CI of corr(SNIS, ΔE) above {RHO0}; CI of slope cov(SNIS, ΔE)/var(ΔE) inside "
                f"[{1 - CAL_TOL:g}, {1 + CAL_TOL:g}]; CI of mean(SNIS − ΔE)/sd(ΔE) inside [−{CAL_TOL:g}, {CAL_TOL:g}]",
                falsified_if=f"corr CI below {RHO0}, or the slope or bias CI entirely outside its band",
                measured=f"corr {_fmt(cc)}; slope {_fmt(s['slope_ci'])}; standardised bias {_fmt(s['bias_ci'])}",
                verdict=_decide(snis_decision(cc, s["slope_ci"], s["bias_ci"]), units),
                proposition="beyond",
                ci=(s["slope_ci"].lo, s["slope_ci"].hi),
                seeds=units,
            )
        )
    cis = {n: s["ci"]["first_order"] for n, s in summary.items()}
    known = {n: c for n, c in cis.items() if c is not None}
    if known:
        worst = min(known, key=lambda n: known[n].lo)
        ok = None if len(known) < len(cis) else known[worst].lo > RHO0
        out.append(
            Claim(
                claim="power: the same design detects a real signal — the exact first-order gain ∇E(θ_old)·Δθ "
                "correlates with ΔE for every preset",
                kind="experiment",
                criterion=f"the CI lower bound of corr(∇E·Δθ, ΔE) exceeds {RHO0} for every preset",
                falsified_if=f"some preset's CI lower bound is at or below {RHO0} (its null verdicts then say nothing)",
                measured=f"weakest {worst}: {_fmt(known[worst])}",
                verdict=_decide(ok, units),
                proposition="design check",
                ci=(known[worst].lo, known[worst].hi),
                seeds=units,
            )
        )
    return out


# ----------------------------------------------------------------------------- run


def run(ctx: Context):
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config):
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    k_a, k_bc = jax.random.split(jax.random.key(ctx.seed))
    ctx.progress(0.02, "(a) first-step identities")
    t0 = time.perf_counter()
    a, info = part_a(cfg, k_a)
    timings["a"] = time.perf_counter() - t0
    bc, summary, summaries = None, {}, []
    if cfg.cross:
        ctx.progress(0.2, f"(b) {cfg.runs} training runs")
        t0 = time.perf_counter()
        bc = part_bc(cfg, k_bc, ctx.progress)
        summaries = [
            summarise({k: v[:, :, h] for k, v in bc["records"].items()}, bc["methods"])
            for h in range(len(cfg.inner_lrs))
        ]
        summary = summaries[0]
        timings["bc"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    claims = claims_a(a, info) + (claims_bc(summary, cfg.units) if summary else [])
    return _report(ctx, cfg, a, info, bc, summaries, claims, timings)


# ----------------------------------------------------------------------------- report


def _reading(summary: dict, phase: dict, e_ck) -> str:
    """An interpretation paragraph written from the measured numbers (primary η)."""

    def names(pred):
        return ", ".join(n for n, s in summary.items() if pred(s)) or "none"

    def inside(ci):
        return ci is not None and -RHO0 < ci.lo and ci.hi < RHO0

    def above(ci):
        return ci is not None and ci.lo > RHO0

    def has_signal(s):
        return s["ci"]["j_first"] is not None and s["ci"]["j_first"].excludes(0)

    text = (
        f"Reading. Scenario A: corr(J_first, ΔE) lies inside ±{RHO0} for "
        f"{names(lambda s: inside(s['ci']['j_first']))}; J_first is constant (Eq. 9, β = 0) for "
        f"{names(lambda s: s['constant']['j_first'])}; its CI excludes 0 (a weak signal) for {names(has_signal)}. "
        f"Scenario B: corr(J_after − J_first, ΔE) lies above {RHO0} for {names(lambda s: above(s['ci']['gain']))} "
        f"and inside ±{RHO0} for {names(lambda s: inside(s['ci']['gain']))}. "
    )
    gains = [[v.center for v in p["gain"]] for p in phase.values() if all(v is not None for v in p["gain"])]
    if gains:
        mean = np.mean(gains, axis=0)
        text += (
            "By training phase, the gain's correlation (mean over presets) is "
            + ", ".join(f"{m:+.2f} at E[r] = {e:.2f}" for m, e in zip(mean, e_ck, strict=True))
            + ": the surrogate gain is an in-sample importance-sampling estimate of the batch's improvement, and how "
            "well it tracks the true improvement depends on where training is (the pooled verdict averages over "
            "phases; this experiment does not isolate the mechanism). "
        )
    known = [s for s in summary.values() if s["ci"]["snis"] is not None]
    if known:
        corr = [s["ci"]["snis"].center for s in known]
        slope = [s["slope_ci"].center for s in known]
        text += (
            f"The held-out SNIS monitor correlates with ΔE at {min(corr):+.2f} to {max(corr):+.2f}, calibration "
            f"slope {min(slope):.2f} to {max(slope):.2f}, over the presets: a progress signal that does not depend "
            "on the loss's weighting.\n\n"
        )
    return text


def _ci_json(ci):
    return None if ci is None else {"center": ci.center, "lo": ci.lo, "hi": ci.hi, "n": ci.n}


def _report(ctx, cfg, a, info, bc, summaries, claims, timings):
    summary = summaries[0] if summaries else {}
    rows = [
        (
            n,
            r["beta"],
            r["case"] or "general (Σ A Ω from jgrpo)",
            float(np.mean(r["objective_loss"])),
            float(np.mean(r["policy"])),
            float(np.mean(-r["beta"] * r["regularizer"])),
            r["identity_err"],
            r.get("closed_err", "—"),
            r.get("closed_objective_err", "—"),
        )
        for n, r in a.items()
    ]
    table = (
        f"### (a) first inner step (logp = logp_old), {info['groups'] - 1} sampled groups + 1 hand-made "
        f"(one success) × G = {info['group_size']}\n\n"
    )
    table += markdown_table(
        [
            "preset",
            "β",
            "Prop. 4 case",
            "J (jgrpo.loss, mean)",
            "Σ A Ω (mean)",
            "−βR (mean)",
            "max |J_loss − J_Prop4|",
            "max |Σ A Ω − NumPy|",
            "max |J − (NumPy − βR)|",
        ],
        rows,
    )
    fig_cols = 3 if summary else 1
    fig, axes = new_figure(ncols=fig_cols, nrows=2 if summary else 1, size=(5.4, 4.0))
    ax = axes[0, 0]
    names = list(a)
    x = np.arange(len(names))
    ax.bar(x, [max(a[n]["identity_err"], 1e-12) for n in names], 0.8)
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=80, fontsize=6)
    ax.set(ylabel="max |J_loss − ΣAΩ + βR| (0 shown as 1e-12)", title="(a) first-step identity, every preset")

    result = {"config": dataclasses.asdict(cfg), "first_step": a, "first_step_batch": info, "timings_s": timings}
    if summary:
        methods = bc["methods"]
        e = bc["e_curve"]
        rows = []
        for name, s in summary.items():
            rows.append(
                (
                    name,
                    _fmt(s["ci"]["j_first"]),
                    _fmt(s["ci"]["gain"]),
                    _fmt(s["ci"]["j_after"]),
                    _fmt(s["ci"]["snis"]),
                    _fmt(s["ci"]["is"]),
                    _fmt(s["ci"]["first_order"]),
                    _fmt(s["slope_ci"]),
                    _fmt(s["bias_ci"]),
                    f"{s['delta_e_mean']:+.4f} ± {s['delta_e_sd']:.4f}",
                    f"{s['ess_mean']:.0f}/{cfg.heldout}",
                )
            )
        table += (
            f"\n### (b, c) cross-sectional: corr(·, ΔE) over K = {cfg.batches} batches at fixed θ_old, mean over "
            f"U = {cfg.units} units (95% CI)\n\n"
        )
        table += markdown_table(
            [
                "preset",
                "J_first",
                "J_after − J_first",
                "J_after",
                "SNIS",
                "plain IS",
                "∇E·Δθ (control)",
                "SNIS slope",
                "SNIS bias / sd(ΔE)",
                "ΔE mean ± sd",
                "ESS",
            ],
            rows,
        )
        c = len(cfg.checkpoints)
        phases = [f"{PHASES[j] if c == 3 else j} (step {s_})" for j, s_ in enumerate(cfg.checkpoints)]
        e_ck = bc["e_old"].reshape(cfg.runs, c).mean(0)
        phase = by_phase(summary, cfg.runs, c)
        rows = []
        for name, s in summary.items():
            for key in ("j_first", "gain", "snis"):
                rs = s["corr"][key].reshape(cfg.runs, c)
                rows.append(
                    (
                        name,
                        key,
                        *[
                            f"{_fmt(phase[name][key][j])}; runs: {', '.join(f'{v:+.2f}' for v in rs[:, j])}"
                            for j in range(c)
                        ],
                    )
                )
        table += (
            f"\n### by training phase (η = {cfg.inner_lrs[0]:g}; a breakdown added after the first look at the data, "
            f"not a claim): corr(·, ΔE), mean over the {cfg.runs} runs [95% CI]; mean exact E[r] at the checkpoints: "
            f"{', '.join(f'{v:.2f}' for v in e_ck)}\n\n"
        )
        table += markdown_table(["preset", "proxy"] + phases, rows)
        if len(summaries) > 1:
            rows = [
                (
                    f"{lr:g}",
                    name,
                    _fmt(s["ci"]["j_first"]),
                    _fmt(s["ci"]["gain"]),
                    _fmt(s["ci"]["snis"]),
                    _fmt(s["slope_ci"]),
                    f"{s['delta_e_mean']:+.4f} ± {s['delta_e_sd']:.4f}",
                )
                for lr, summ in zip(cfg.inner_lrs, summaries, strict=True)
                for name, s in summ.items()
            ]
            table += "\n### sensitivity to the inner η (claims use the first, the training η)\n\n"
            table += markdown_table(
                [
                    "η",
                    "preset",
                    "corr(J_first, ΔE)",
                    "corr(J_after − J_first, ΔE)",
                    "corr(SNIS, ΔE)",
                    "SNIS slope",
                    "ΔE mean ± sd",
                ],
                rows,
            )

        ax = axes[0, 1]
        steps = np.arange(e.shape[1])
        ci = [stats.mean_ci(e[:, k]) if cfg.runs > 1 else stats.Interval(e[0, k], e[0, k], e[0, k], 1) for k in steps]
        ax.plot(steps, [v.center for v in ci], color="C0", label=f"mean of {cfg.runs} runs")
        ax.fill_between(steps, [v.lo for v in ci], [v.hi for v in ci], color="C0", alpha=0.25, label="95% CI")
        for s_ in cfg.checkpoints:
            ax.axvline(s_, color="k", ls=":", lw=0.8)
        ax.set(xlabel="outer step (grpo)", ylabel="exact E[r]", title="(b) training runs; θ_old checkpoints dotted")
        ax.legend(fontsize=7)

        ax = axes[0, 2]
        keys = (("j_first", "J_first"), ("gain", "J_after − J_first"), ("snis", "SNIS"), ("first_order", "∇E·Δθ"))
        xm = np.arange(len(methods))
        for j, (key, label) in enumerate(keys):
            cis = [summary[m]["ci"][key] for m in methods]
            cen = np.array([np.nan if v is None else v.center for v in cis])
            lo = np.array([np.nan if v is None else v.center - v.lo for v in cis])
            hi = np.array([np.nan if v is None else v.hi - v.center for v in cis])
            ax.errorbar(xm + 0.15 * (j - 1.5), cen, yerr=[lo, hi], fmt="o", ms=3, capsize=2, label=label)
        ax.axhspan(-RHO0, RHO0, color="0.85", label=f"|r| < {RHO0}: no useful signal")
        ax.set_xticks(xm, methods, rotation=45, fontsize=7)
        ax.set(ylabel="corr(·, ΔE), mean over units (95% CI)", title="(b, c) what tracks the exact progress")
        ax.legend(fontsize=6)

        rec = {k: v[:, :, 0] for k, v in bc["records"].items()}  # the primary η
        k0 = cfg.units - 1  # the last unit: late checkpoint of the last run

        for col, (key, label) in enumerate((("j_first", "J_first"), ("gain", "J_after − J_first"))):
            ax = axes[1, col]
            for p, m in enumerate(methods):
                cis = phase[m][key]
                if any(v is None for v in cis):
                    continue
                ax.plot(e_ck, [v.center for v in cis], "o-", ms=3, color=f"C{p}", label=m)
                ax.fill_between(e_ck, [v.lo for v in cis], [v.hi for v in cis], color=f"C{p}", alpha=0.15)
            ax.axhspan(-RHO0, RHO0, color="0.88", zorder=0)
            ax.set(
                xlabel="exact E[r] at θ_old (mean over runs at each checkpoint)",
                ylabel=f"corr({label}, ΔE), mean over runs (95% CI band)",
                title=f"(b) {label} vs ΔE by training phase",
            )
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        ax = axes[1, 2]
        for p, m in enumerate(methods):
            ax.scatter(rec["delta_e"][k0, :, p], rec["snis"][k0, :, p], s=4, alpha=0.5, color=f"C{p}", label=m)
        lim = np.array([rec["delta_e"][k0].min(), rec["delta_e"][k0].max()])
        ax.plot(lim, lim, color="k", lw=0.8, label="y = x (calibrated)")
        ax.set(
            xlabel="exact ΔE of the update",
            ylabel=f"SNIS estimate (N = {cfg.heldout} held-out)",
            title=f"(c) SNIS monitor vs ΔE, K = {cfg.batches} batches at one θ_old (late)",
        )
        ax.locator_params(axis="x", nbins=5)
        ax.legend(fontsize=6, markerscale=3)

        result["cross"] = {
            "methods": list(methods),
            "inner_lrs": list(cfg.inner_lrs),
            "e_curve": e,
            "e_old": bc["e_old"],
            "summary": [
                {
                    n: {
                        "corr_per_unit": s["corr"],
                        "ci": {k: _ci_json(v) for k, v in s["ci"].items()},
                        "constant": s["constant"],
                        "snis_slope": s["slope"],
                        "snis_slope_ci": _ci_json(s["slope_ci"]),
                        "snis_bias": s["bias"],
                        "snis_bias_ci": _ci_json(s["bias_ci"]),
                        "delta_e_mean": s["delta_e_mean"],
                        "delta_e_sd": s["delta_e_sd"],
                        "ess_mean": s["ess_mean"],
                    }
                    for n, s in summ.items()
                }
                for summ in summaries
            ],
        }
    fig.tight_layout()
    save_figure(fig, ctx.out / "loss_proxy.png")

    notes = (
        f"Tabular policy: V = {cfg.vocab}, completions of at most T = {cfg.length} tokens ending at EOS (id {EOS}), "
        f"reward 1 iff the completion contains token {TARGET}; E[r] exact (analysis.tabular). "
        f"(a) {info['groups'] - 1} sampled groups (mean length {info['length_mean']:.2f}, range "
        f"{info['length_min']}–{info['length_max']}, mean reward {info['reward_mean']:.3f}, {info['mixed_groups']} "
        f"mixed groups of which {info['cppo_pruning_groups']} have some |A_i| ≤ γ, where cppo prunes) and one "
        "hand-made group whose rewards are set to one success; π_ref = the policy's logits plus "
        f"N(0, {cfg.ref_noise:g}²). gcpo's reading in this jgrpo: {info['gcpo_reading']} "
        "(literal: Ω_i = |o_i|/(σG); once: Ω_i = 1/(σG)). Closed forms are written in float64 NumPy from the "
        "batch (never from jgrpo), for the paper flavour; other flavours are checked against the generic "
        "identity J = Σ A Ω − βR. gtpo's conflict-token λ has no closed form here.\n\n"
    )
    if summary:
        notes += (
            f"(b) {cfg.runs} grpo training runs of {cfg.train_steps} outer steps (B = {cfg.num_groups} groups × "
            f"G = {cfg.group_size}, μ = {cfg.inner_steps} AdamW steps, η = {cfg.learning_rate:g}, state carried), "
            f"each from its own initial policy; θ_old at steps {cfg.checkpoints}; U = {cfg.units} units. At each "
            f"unit, K = {cfg.batches} independent batches; per preset μ = {cfg.inner_steps} AdamW steps from θ_old "
            "with a fresh optimizer state (π_ref = the run's initial policy), ΔE exact. Correlations per unit over "
            "the K batches, averaged over units in Fisher z with a Student-t interval (units as seeds). "
            f"(c) SNIS on N = {cfg.heldout} fresh held-out completions from π_old per batch. ρ0 = {RHO0} and "
            f"δ = {CAL_TOL} were fixed in the code before the first run. History: a first run (3 runs, B = 4 × G = 8, "
            "η = 0.05, last checkpoint on the plateau of E[r], 0.99) gave corr(J_after − J_first, ΔE) +0.60 … +0.78 "
            "for 5 of 6 presets (Scenario B not reproduced); G became 16 (so that cppo prunes) and η 0.02 (so that "
            "the checkpoints span the learning curve). The by-phase table and the η sensitivity were added after "
            "these runs.\n\n"
        )
    if summary:
        notes += _reading(
            summary, by_phase(summary, cfg.runs, len(cfg.checkpoints)), bc["e_old"].reshape(cfg.runs, -1).mean(0)
        )
    notes += "Runtime: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "."
    return finish(
        ctx,
        NAME,
        "Prop. 4: the loss is not a progress signal (cross-sectional test, and a monitor that works)",
        result,
        table,
        claims,
        "loss_proxy.png",
        notes=notes,
    )
