"""Prop. 3/7: Adam's momentum carries the policy past its clip region — tested at matched progress.

Three parts, one figure:

(a) Closed forms against the real optax Adam (verifications): C_{T,k} of Eqs. 32/36
    in the paper's index (T − 1 gradient steps, the gradient vanishes at step T),
    the limits of Eqs. 33/37 against the paper's printed values, and Eq. 38 —
    the ε modulation from the actual v̂ before and after the clip — on a *varying*
    gradient history, next to the constant-gradient shortcut.
(b) Escape at matched progress. On the exact tabular policy (many seeds) and on
    the tiny NNX transformer, each optimizer — Adam β1 ∈ {0, 0.5, 0.9, 0.95},
    Adam reset per batch, RMSProp, SGD with momentum, and the momentum-aware
    transforms of ``jgrpo.optim`` (projection, strong gate, trust-region guard)
    — runs a short GRPO training (consecutive batches sampled from the current
    policy, μ inner steps each, optimizer state carried) for every learning rate
    η of a sweep. Per batch: escape (fraction of tokens beyond the bound in the
    advantage-favoured direction, max excess, post-crossing travel) and progress
    (surrogate gain ΔJ; KL(π_old‖π) — exact on the tabular policy, held-out
    estimate on the transformer; the expected-reward gain ΔE — exact on the
    tabular policy, a held-out importance-sampling estimate on the transformer).
    Optimizers are compared at equal progress: each seed's escape is
    interpolated at common progress levels along its η sweep and the paired
    differences go into a Student-t interval over seeds. Where progress is only
    estimated (the transformer's held-out KL and ΔE), the progress curve is the
    mean over seeds, and a comparison is decisive only where that mean is
    resolved from 0 (``matched``).
(c) Exact attribution. For each token while it is beyond the bound, each inner
    step's change of z = sign(A)·log(π/π_old) is split into the stale-momentum
    part, the fresh-gradient part, the transform's correction (projection, gate,
    guard) and the linearisation residual — JVPs of the update's components at
    the step's own preconditioner (``analysis.overshoot.adam_update_split``,
    ``log_ratio_jvps``). The fresh-gradient part of the token's *own* term is
    c_j·(∇z_j P ∇z_j) with c_j = ∂loss/∂log π_j, exactly 0 once clipped: checked
    (max |c_j| over clipped tokens), so the whole fresh part is driven by other
    tokens.

One compile per policy: the sweep function is vmapped over (η, seed) and takes
the optimizer's switches (kind, β1, reset, gate, projection, guard, clip, μ) as
unbatched traced scalars, so ``lax.cond``/``lax.switch`` run only the chosen
branch and every optimizer reuses the same executable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import overshoot as ov
from analysis import tabular
from experiments import stats
from experiments.common import Claim, Context, finish, markdown_table, new_figure, save_figure, verdict

NAME = "overshoot"

# ----------------------------------------------------------------------------- optimizers of the sweep

KIND_ADAM, KIND_RMS, KIND_SGD = 0, 1, 2


class Opt(NamedTuple):
    """One optimizer of the sweep (static description).

    Attributes:
      name, label: key and display name.
      kind: KIND_ADAM (optax.scale_by_adam, β1 below), KIND_RMS (optax.scale_by_rms, no
        momentum, no bias correction: optax.rmsprop) or KIND_SGD (optax.trace, momentum β1).
      beta1: Adam's β1 or SGD's momentum.
      reset: Adam state restarted at every batch (``jgrpo.optim.reset_on_new_batch``).
      gate: the strong gate (``jgrpo.optim.scale_by_clip_gated_adam``, per parameter).
      proj: ``jgrpo.optim.project_clipped`` after the learning rate.
      guard: ``jgrpo.optim.trust_region_guard`` last.
    """

    name: str
    label: str
    kind: int
    beta1: float
    reset: bool = False
    gate: bool = False
    proj: bool = False
    guard: bool = False


OPTIMIZERS = (
    Opt("adam_b0", "Adam β1 = 0", KIND_ADAM, 0.0),
    Opt("adam_b0.5", "Adam β1 = 0.5", KIND_ADAM, 0.5),
    Opt("adam_b0.9", "Adam β1 = 0.9", KIND_ADAM, 0.9),
    Opt("adam_b0.95", "Adam β1 = 0.95", KIND_ADAM, 0.95),
    Opt("reset", "Adam 0.9 + reset per batch", KIND_ADAM, 0.9, reset=True),
    Opt("rmsprop", "RMSProp", KIND_RMS, 0.0),
    Opt("sgdm", "SGD + momentum 0.9", KIND_SGD, 0.9),
    Opt("projection", "Adam 0.9 + projection", KIND_ADAM, 0.9, proj=True),
    Opt("gate", "Adam 0.9 + strong gate", KIND_ADAM, 0.9, gate=True),
    Opt("guard", "Adam 0.9 + trust-region guard", KIND_ADAM, 0.9, guard=True),
)
BY_NAME = {o.name: o for o in OPTIMIZERS}
BASELINE = "adam_b0.9"
NO_MOMENTUM = "adam_b0"
TRANSFORMS = ("projection", "gate", "reset")  # judged against the ≥ 50% target; the guard by its cost


class Group(NamedTuple):
    """The switches of one optimizer as traced scalars (unbatched: one executable serves all)."""

    kind: jax.Array  # int32
    beta1: jax.Array  # float32
    reset: jax.Array  # bool
    gate: jax.Array  # bool
    proj: jax.Array  # bool
    guard: jax.Array  # bool
    clip: jax.Array  # bool: the clipped GRPO loss (False: the unclipped importance-sampling surrogate)
    mu: jax.Array  # int32: inner steps per batch


def group_of(opt: Opt, *, mu: int, clip: bool = True) -> Group:
    return Group(
        kind=jnp.int32(opt.kind),
        beta1=jnp.float32(opt.beta1),
        reset=jnp.bool_(opt.reset),
        gate=jnp.bool_(opt.gate),
        proj=jnp.bool_(opt.proj),
        guard=jnp.bool_(opt.guard),
        clip=jnp.bool_(clip),
        mu=jnp.int32(mu),
    )


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """One policy's sweep (frozen).

    Attributes:
      kind: "tabular" (the exact softmax table of ``jgrpo.policies``; reward 1 iff the
        completion contains token 0, exact E[reward] and KL from ``analysis.tabular``) or
        "transformer" (the NNX transformer; reward 1 iff the completion contains the
        prompt's first token; held-out estimates of ΔE and KL).
      model: "tiny" or "small" (transformer preset).
      vocab, prompt_len, completion_len: V, P, T.
      num_prompts, group_size: B groups of G completions per batch.
      num_batches, burn_in: consecutive batches; the first ``burn_in`` are not measured
        (every optimizer starts fresh there, so a reset per batch changes nothing).
      mu: inner steps per batch.
      seeds: independent repetitions (initial policy and samples).
      learning_rates: Adam's η sweep (RMSProp uses the same; SGD ``sgd_lr_scale`` ×).
      sgd_lr_scale: SGD's η grid relative to Adam's (its gradient is not normalised).
      optimizers: names from ``OPTIMIZERS``.
      init_scale: std of the tabular initial logits.
    """

    kind: str
    model: str = "tiny"
    vocab: int = 16
    prompt_len: int = 1
    completion_len: int = 8
    num_prompts: int = 4
    group_size: int = 8
    num_batches: int = 4
    burn_in: int = 1
    mu: int = 8
    seeds: int = 8
    learning_rates: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.08)
    sgd_lr_scale: float = 100.0
    optimizers: tuple[str, ...] = tuple(o.name for o in OPTIMIZERS)
    init_scale: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("tabular", "transformer"):
            raise ValueError(f"PolicyConfig.kind must be 'tabular' or 'transformer', got {self.kind!r}")
        if self.model not in ("tiny", "small"):
            raise ValueError(f"PolicyConfig.model must be 'tiny' or 'small', got {self.model!r}")
        unknown = [n for n in self.optimizers if n not in BY_NAME]
        if unknown:
            raise ValueError(f"PolicyConfig.optimizers has unknown names {unknown}; known: {list(BY_NAME)}")
        for need in (BASELINE, NO_MOMENTUM):
            if need not in self.optimizers:
                raise ValueError(f"PolicyConfig.optimizers must contain {need!r}, got {self.optimizers}")
        if not 0 <= self.burn_in < self.num_batches:
            raise ValueError(f"PolicyConfig.burn_in must be in [0, num_batches), got {self.burn_in}")
        if len(self.learning_rates) < 3 or list(self.learning_rates) != sorted(self.learning_rates):
            raise ValueError(f"PolicyConfig.learning_rates must be >= 3 increasing values, got {self.learning_rates}")
        for name in ("mu", "seeds", "num_prompts", "group_size", "completion_len", "vocab", "prompt_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"PolicyConfig.group_size must be >= 2, got {self.group_size}")


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


# ----------------------------------------------------------------------------- (a) closed forms vs optax

_F32_TOL = 64 * float(np.finfo(np.float32).eps)  # ~7.6e-6: float32 rounding over a few dozen Adam steps


def _part_a(cfg: Config) -> dict:
    """Eqs. 32-38 against optax Adam (β1 0.9, β2 0.95), T = 2..closed_T, k < closed_K; Eq. 38 on a varying history."""
    b1, b2, K = 0.9, 0.95, cfg.closed_K
    Ts = np.arange(2, cfg.closed_T + 1)
    ks = jnp.arange(K)
    g = jnp.float32(0.37)
    sim = np.stack([np.asarray(ov.simulate_adam_after_clip(g, b1, b2, 0.0, int(T), K).c) for T in (2, cfg.closed_T)])
    closed = np.asarray(jax.vmap(lambda T: ov.c_coefficient(b1, b2, T, ks))(jnp.asarray(Ts, jnp.float32)))
    # every T in one scan: T − 1 gradient steps then zeros, T traced
    opt = optax.adam(1.0, b1=b1, b2=b2, eps=0.0)

    def simulate(T):
        grads = jnp.where(jnp.arange(cfg.closed_T - 1 + K) < T - 1, g, 0.0)

        def step(state, grad):
            u, state = opt.update(grad, state)
            return state, u

        _, u = jax.lax.scan(step, opt.init(g), grads)
        return jax.lax.dynamic_slice(u, (T - 1,), (K,)) / u[T - 2]

    simulated = np.asarray(jax.jit(jax.vmap(simulate))(jnp.asarray(Ts)))
    lib_err = max(float(np.max(np.abs(sim[0] - simulated[0]))), float(np.max(np.abs(sim[1] - simulated[-1]))))
    # Eq. 38 on a varying gradient history, ε comparable to the gradients
    T38, eps38 = cfg.eq38_T, 2e-3
    hist = 0.01 * (1.0 + 0.6 * np.sin(np.arange(1, T38)))  # T − 1 gradients, |g| from 0.004 to 0.016
    h = ov.simulate_adam_history(jnp.asarray(hist, jnp.float32), b1, b2, eps38, K)
    v_before = h.v_hat[T38 - 2]
    exact = np.asarray(ov.c_coefficient_eps(b1, b2, T38, ks, v_hat_before=v_before, eps=eps38))
    literal = np.asarray(ov.first_moment_decay(b1, T38, ks) * ov.eps_modulation(v_before, h.v_hat[T38 - 1 :], eps38))
    shortcut = np.asarray(ov.c_coefficient(b1, b2, T38, ks) * ov.eps_factor(abs(hist[-1]), b2, T38, ks, eps38))
    h_const = ov.simulate_adam_after_clip(jnp.float32(hist[-1]), b1, b2, eps38, T38, K)
    shortcut_const = np.asarray(ov.c_coefficient(b1, b2, T38, ks) * ov.eps_factor(abs(hist[-1]), b2, T38, ks, eps38))
    return {
        "beta1": b1,
        "beta2": b2,
        "T": Ts,
        "k": np.arange(K),
        "closed": closed,
        "simulated": simulated,
        "max_abs_err": float(np.max(np.abs(closed - simulated))),
        "library_simulator_max_abs_diff": lib_err,
        "C_2": float(closed[0, 0]),
        "limit": float(ov.c_limit(b1, b2)),
        "limit_k": np.asarray(ov.c_limit(b1, b2, ks)),
        "limit_4": float(ov.c_limit(b1, b2, 4)),
        "C_large_T": float(ov.c_coefficient(b1, b2, 100_000)),
        "eq38": {
            "T": T38,
            "eps": eps38,
            "history": hist,
            "simulated": np.asarray(h.c),
            "exact": exact,
            "literal": literal,
            "shortcut": shortcut,
            "max_abs_err_exact": float(np.max(np.abs(exact - np.asarray(h.c)))),
            "max_abs_err_literal": float(np.max(np.abs(literal - np.asarray(h.c)))),
            "max_abs_err_shortcut": float(np.max(np.abs(shortcut - np.asarray(h.c)))),
            "max_abs_err_shortcut_constant_history": float(np.max(np.abs(shortcut_const - np.asarray(h_const.c)))),
        },
    }


# ----------------------------------------------------------------------------- (b, c) the sweep


class Policy(NamedTuple):
    """A policy and its data for every seed."""

    logits_fn: Any
    logprob3: Any  # (params, tokens [B, G, T], prompt [B, P]) -> logp
    params0: Any  # stacked over seeds
    prompts: jax.Array  # [S, N, B, P]
    keys: jax.Array  # [S, N] keys
    description: dict
    text: str


def _tabular_kl(logits_old, logits_new, length: int):
    """Exact KL(π_old ‖ π) between the tabular policies' distributions over completions of ``length`` tokens.

    KL = Σ_t E_{c ~ q_t}[KL(π_old(·|t, c) ‖ π(·|t, c))], q_t the law of the previous token
    at position t under π_old (q_0 = the start context).
    """
    lp_old = jax.nn.log_softmax(logits_old[:length], axis=-1)  # [T, V+1, V]
    lp_new = jax.nn.log_softmax(logits_new[:length], axis=-1)
    vocab = logits_old.shape[-1]
    kl_cells = jnp.sum(jnp.exp(lp_old) * (lp_old - lp_new), axis=-1)  # [T, V+1]

    def step(q, xs):
        kl_t, lp_t = xs
        nxt = q @ jnp.exp(lp_t)  # [V]
        return jnp.concatenate([nxt, jnp.zeros((1,), nxt.dtype)]), q @ kl_t

    q0 = jnp.zeros((vocab + 1,), lp_old.dtype).at[vocab].set(1.0)
    _, kl = jax.lax.scan(step, q0, (kl_cells, lp_old))
    return jnp.sum(kl)


def _setup_policy(pcfg: PolicyConfig, seed: int) -> Policy:
    S, N, B, P = pcfg.seeds, pcfg.num_batches, pcfg.num_prompts, pcfg.prompt_len
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), S * (N + 1)).reshape(S, N + 1, -1)
    if pcfg.kind == "tabular":
        table = pcfg.init_scale * rng.standard_normal((S, pcfg.completion_len, pcfg.vocab + 1, pcfg.vocab))
        params0 = {"logits": jnp.asarray(table, jnp.float32)}
        prompts = np.zeros((S, N, B, P), np.int32)
        desc = {"kind": "tabular", "vocab": pcfg.vocab, "length": pcfg.completion_len, "init_scale": pcfg.init_scale}
        text = (
            f"exact tabular softmax policy (V = {pcfg.vocab}, T = {pcfg.completion_len}, logits ~ "
            f"N(0, {pcfg.init_scale}²)); reward 1 iff the completion contains token 0"
        )
        return Policy(
            jgrpo.policies.tabular_logits_fn(P),
            jgrpo.policies.tabular_logprob,
            params0,
            prompts,
            keys[:, 1:],
            desc,
            text,
        )
    preset = jgrpo.TransformerConfig.tiny if pcfg.model == "tiny" else jgrpo.TransformerConfig.small
    mcfg = preset(vocab=pcfg.vocab, max_len=P + pcfg.completion_len)
    graphdef, _ = jgrpo.make_transformer(keys[0, 0], mcfg)
    params0 = jax.tree.map(lambda *xs: jnp.stack(xs), *[jgrpo.make_transformer(keys[s, 0], mcfg)[1] for s in range(S)])
    prompts = rng.integers(0, pcfg.vocab, size=(S, N, B, P)).astype(np.int32)
    desc = {"kind": "transformer", **dataclasses.asdict(mcfg)}
    text = (
        f"{pcfg.model} NNX transformer ({mcfg.n_layers} layers, d_model {mcfg.d_model}, V = {pcfg.vocab}); "
        "reward 1 iff the completion contains the prompt's first token"
    )
    return Policy(
        jgrpo.policies.nnx_logits_fn(graphdef),
        jgrpo.policies.nnx_logprob_fn(graphdef),
        params0,
        jnp.asarray(prompts),
        keys[:, 1:],
        desc,
        text,
    )


class OptState(NamedTuple):
    adam: Any
    rms: Any
    sgd: Any
    proj: Any
    guard: Any


class _Prev(NamedTuple):
    """The previous inner step's predictions, settled once the next log-ratios are known."""

    z: jax.Array
    stale: jax.Array
    fresh: jax.Array
    corr: jax.Array
    beyond: jax.Array
    own: jax.Array


class _Acc(NamedTuple):
    """Sums over (token, step) pairs taken while the token is beyond the bound."""

    pairs: jax.Array
    dz: jax.Array
    stale: jax.Array
    fresh: jax.Array
    corr: jax.Array
    resid: jax.Array
    own_max: jax.Array


def _settle(acc: _Acc, prev: _Prev, z_new) -> _Acc:
    m = prev.beyond
    dz = z_new - prev.z
    resid = dz - (prev.stale + prev.fresh + prev.corr)
    s = lambda x: jnp.sum(jnp.where(m, x, 0.0))
    return _Acc(
        pairs=acc.pairs + jnp.sum(m),
        dz=acc.dz + s(dz),
        stale=acc.stale + s(prev.stale),
        fresh=acc.fresh + s(prev.fresh),
        corr=acc.corr + s(prev.corr),
        resid=acc.resid + s(resid),
        own_max=jnp.maximum(acc.own_max, jnp.max(jnp.where(m, prev.own, 0.0))),
    )


def _maybe_gated_adam(beta1, b2, eps, spec) -> optax.GradientTransformationExtraArgs:
    """``scale_by_clip_gated_adam`` when the extra arg ``gate`` is true, else optax's Adam (same state)."""
    gated = jgrpo.optim.scale_by_clip_gated_adam(b1=beta1, b2=b2, eps=eps, eps_low=spec.eps_low, eps_high=spec.eps_high)
    plain = optax.scale_by_adam(b1=beta1, b2=b2, eps=eps)

    def update_fn(updates, state, params=None, *, gate=False, ratio_fn=None, **extra):
        del extra

        def on():
            return gated.update(updates, state, params, ratio_fn=ratio_fn)

        def off():
            u, s = plain.update(updates, state.adam, params)
            zero = jnp.zeros([], jnp.float32)
            return u, state._replace(adam=s, gated_frac=zero, gated_mass=zero)

        return jax.lax.cond(jnp.asarray(gate, jnp.bool_), on, off)

    return optax.GradientTransformationExtraArgs(gated.init, update_fn)


def make_optimizer(group: Group, learning_rate, *, beta2: float, eps: float, spec):
    """(init, step) of the switched optimizer: ``step(g, state, params, ratio_fn, new_batch) -> (u, state, split)``.

    kind → Adam (``reset_on_new_batch`` ∘ optional strong gate), RMSProp
    (``optax.scale_by_rms(β2, ε)``) or SGD momentum (``optax.trace(β1)``); then −η; then
    optional ``project_clipped`` and ``trust_region_guard``. With every switch off the
    Adam kind is ``optax.adam(η, β1, β2, ε)`` exactly (tests). ``split`` is the
    (stale, fresh) :class:`analysis.overshoot.UpdateSplit` of the step before the
    projection/guard, at the step's own preconditioner.
    """
    adam = jgrpo.optim.reset_on_new_batch(_maybe_gated_adam(group.beta1, beta2, eps, spec))
    rms = optax.scale_by_rms(decay=beta2, eps=eps)
    sgd = optax.trace(decay=group.beta1)
    proj = jgrpo.optim.project_clipped(eps_low=spec.eps_low, eps_high=spec.eps_high)
    guard = jgrpo.optim.trust_region_guard(eps_low=spec.eps_low, eps_high=spec.eps_high)
    lr = jnp.asarray(learning_rate, jnp.float32)

    def init(params):
        return OptState(adam.init(params), rms.init(params), sgd.init(params), proj.init(params), guard.init(params))

    def step(g, state: OptState, params, ratio_fn, new_batch):
        def adam_branch():
            nb = jnp.asarray(new_batch, jnp.bool_) & group.reset
            pre = state.adam.inner_state.adam
            pre = jax.tree.map(lambda a: jnp.where(nb, jnp.zeros_like(a), a), pre)
            split = ov.adam_update_split(g, pre, b1=group.beta1, b2=beta2, eps=eps, learning_rate=lr)
            u, s = adam.update(g, state.adam, params, new_batch=nb, gate=group.gate, ratio_fn=ratio_fn)
            return u, state._replace(adam=s), split

        def rms_branch():
            u, s = rms.update(g, state.rms, params)
            zero = jax.tree.map(jnp.zeros_like, g)
            fresh = jax.tree.map(lambda x: -lr * x, u)
            return u, state._replace(rms=s), ov.UpdateSplit(stale=zero, fresh=fresh, precond=zero)

        def sgd_branch():
            split = ov.momentum_update_split(g, state.sgd, decay=group.beta1, learning_rate=lr)
            u, s = sgd.update(g, state.sgd, params)
            return u, state._replace(sgd=s), split

        u, state, split = jax.lax.switch(group.kind, (adam_branch, rms_branch, sgd_branch))
        u = jax.tree.map(lambda x: -lr * x, u)

        def proj_on():
            return proj.update(u, state.proj, params, ratio_fn=ratio_fn)

        u, s_proj = jax.lax.cond(group.proj, proj_on, lambda: (u, state.proj))

        def guard_on():
            return guard.update(u, state.guard, params, ratio_fn=ratio_fn)

        u, s_guard = jax.lax.cond(group.guard, guard_on, lambda: (u, state.guard))
        return u, state._replace(proj=s_proj, guard=s_guard), split

    return init, step


def _escape_stats(ratio, adv, mask, spec):
    e = ov.escape(ratio, adv, mask, eps_low=spec.eps_low, eps_high=spec.eps_high)
    return e.frac, jnp.maximum(e.max_excess_high, e.max_excess_low)


def spec_pair(eps_low: float = 0.2, eps_high: float = 0.2):
    """(clipped GRPO, unclipped GRPO) with β = 0: the unclipped one has ε_low = 1, ε_up = ∞ (s·A for every token)."""
    return (
        jgrpo.methods.get("grpo", beta=0.0, eps_low=eps_low, eps_high=eps_high),
        jgrpo.methods.get("grpo", beta=0.0, eps_low=1.0, eps_high=math.inf),
    )


def make_sweep(pcfg: PolicyConfig, policy: Policy, *, beta2: float, eps: float, spec, spec_noclip=None):
    """``run(group, lrs [M], params0 [M, ...], prompts [M, N, B, P], keys [M, N]) -> records [M, N]``, jitted.

    One member: N consecutive batches of a short GRPO run, each sampled from the
    current policy (logp_old recomputed, ratios start at 1), ``group.mu`` inner steps
    of the switched optimizer, state carried across batches. Per batch it records
    escape, progress and the attribution sums (see the module docstring). The loss
    is ``spec`` when ``group.clip`` else ``spec_noclip`` (default: ``spec_pair``'s).

    The jitted function is cached on everything static (policy functions, sizes,
    specs), so experiments of one process with equal shapes share one compile.
    """
    if spec_noclip is None:
        spec_noclip = spec_pair()[1]
    return _sweep_fn(
        pcfg.kind,
        pcfg.vocab,
        pcfg.completion_len,
        pcfg.group_size,
        policy.logits_fn,
        policy.logprob3,
        float(beta2),
        float(eps),
        spec,
        spec_noclip,
    )


@functools.cache
def _sweep_fn(kind, vocab, T, G, logits_fn, logprob3, beta2, eps, spec, spec_noclip):
    tab = kind == "tabular"
    policy = Policy(logits_fn, logprob3, None, None, None, {}, "")
    auto = tabular.contains(vocab, 0) if tab else None
    reward_value = jnp.asarray([[0.0] * (T + 1), [1.0] * (T + 1)], jnp.float32)
    n_sample = G if tab else 2 * G

    def one(group: Group, lr, params0, prompts_NBP, keys_N):
        init, opt_step = make_optimizer(group, lr, beta2=beta2, eps=eps, spec=spec)

        def batch_step(carry, xs):
            params, opt_state = carry
            prompt_BP, key = xs
            smp = jgrpo.sample(policy.logits_fn, params, prompt_BP, key, group_size=n_sample, max_len=T)
            target = jnp.zeros_like(prompt_BP[:, :1]) if tab else prompt_BP[:, :1]
            rewards_all = jnp.any(smp.tokens == target[:, :, None], axis=-1).astype(jnp.float32)
            tokens, rewards = smp.tokens[:, :G], rewards_all[:, :G]

            def logprob_fn(p):
                return policy.logprob3(p, tokens, prompt_BP)

            logp_old = jax.lax.stop_gradient(logprob_fn(params))
            mask = jnp.ones_like(logp_old)
            batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=rewards, tokens=tokens)
            adv = jgrpo.advantages(spec, batch)
            sgn = jnp.sign(adv)[..., None] * mask

            def loss_of_logp(lp):
                return jax.lax.cond(
                    group.clip,
                    lambda: jgrpo.loss(spec, lp, batch)[0],
                    lambda: jgrpo.loss(spec_noclip, lp, batch)[0],
                )

            def ratio_fn(p):
                return jnp.exp(logprob_fn(p) - logp_old), adv[..., None], mask

            def beyond_of(logp):
                w = jgrpo.optim.clipped_weights(
                    jnp.exp(logp - logp_old), adv[..., None], mask, eps_low=spec.eps_low, eps_high=spec.eps_high
                )
                return w != 0

            def inner(t, carry):
                p, s, prev, acc = carry
                logp, jvp = jax.linearize(logprob_fn, p)
                vjp = jax.linear_transpose(jvp, p)
                loss, c = jax.value_and_grad(loss_of_logp)(logp)
                (g,) = vjp(c)
                z = sgn * (logp - logp_old)
                acc = _settle(acc, prev, z)
                u, s, split = opt_step(g, s, p, ratio_fn, t == 0)
                corr = jax.tree.map(lambda a, b, d: a - b - d, u, split.stale, split.fresh)
                prev = _Prev(
                    z=z,
                    stale=sgn * jvp(split.stale),
                    fresh=sgn * jvp(split.fresh),
                    corr=sgn * jvp(corr),
                    beyond=beyond_of(logp),
                    own=jnp.abs(c),
                )
                return optax.apply_updates(p, u), s, prev, acc

            zeros = jnp.zeros_like(logp_old)
            prev0 = _Prev(zeros, zeros, zeros, zeros, jnp.zeros(zeros.shape, jnp.bool_), zeros)
            f0 = jnp.zeros([], jnp.float32)
            acc0 = _Acc(jnp.zeros([], jnp.int32), f0, f0, f0, f0, f0, f0)
            new_params, new_state, prev, acc = jax.lax.fori_loop(0, group.mu, inner, (params, opt_state, prev0, acc0))
            logp_end = logprob_fn(new_params)
            acc = _settle(acc, prev, sgn * (logp_end - logp_old))
            ratio_end = jnp.exp(logp_end - logp_old)
            frac, excess = _escape_stats(ratio_end, adv, mask, spec)
            rec = {
                "escape_frac": frac,
                "max_excess": excess,
                "travel": acc.dz / jnp.sum(mask),
                "pairs": acc.pairs,
                "dz": acc.dz,
                "stale": acc.stale,
                "fresh": acc.fresh,
                "corr": acc.corr,
                "resid": acc.resid,
                "own_max": acc.own_max,
                "dJ": loss_of_logp(logp_old) - loss_of_logp(logp_end),
                "reward": jnp.mean(rewards),
                "mixed_groups": jnp.mean(jnp.std(rewards, axis=-1) > 0),
            }
            if tab:
                e0 = tabular.expectation(params, auto, reward_value, eos=None, length=T)
                e1 = tabular.expectation(new_params, auto, reward_value, eos=None, length=T)
                rec["E_start"], rec["dE"] = e0, e1 - e0
                rec["kl"] = _tabular_kl(params["logits"], new_params["logits"], T)
            else:
                ho = smp.tokens[:, G:]
                lp0 = policy.logprob3(params, ho, prompt_BP)
                lp1 = policy.logprob3(new_params, ho, prompt_BP)
                w = jnp.exp(jnp.sum(lp1 - lp0, axis=-1))  # [B, G] sequence ratio π/π_old
                base = jnp.mean(rewards, axis=-1, keepdims=True)
                rec["dE"] = jnp.mean((rewards_all[:, G:] - base) * (w - 1.0))  # unbiased IS estimate of ΔE
                rec["kl"] = jnp.mean(jnp.sum(lp0 - lp1, axis=-1))  # unbiased estimate of KL(π_old‖π)
            return (new_params, new_state), rec

        (_, _), recs = jax.lax.scan(batch_step, (params0, init(params0)), (prompts_NBP, keys_N))
        return recs

    # CPU: XLA's backend optimisation level 0 compiles this graph ~2.5x faster and runs it about as fast
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)), compiler_options=options)


def _learning_rates(pcfg: PolicyConfig, opt: Opt) -> np.ndarray:
    scale = pcfg.sgd_lr_scale if opt.kind == KIND_SGD else 1.0
    return scale * np.asarray(pcfg.learning_rates, np.float32)


def run_sweep(pcfg: PolicyConfig, policy: Policy, cfg: Config, spec, progress=lambda f, m: None) -> dict:
    """Every optimizer of ``pcfg`` over its η sweep and the seeds: {name: {metric: [n_lr, S, N]}} (numpy)."""
    S, L = pcfg.seeds, len(pcfg.learning_rates)
    sweep = make_sweep(pcfg, policy, beta2=cfg.beta2, eps=cfg.adam_eps, spec=spec)
    seed_idx = np.tile(np.arange(S), L)  # member m = (lr index m // S, seed m % S)
    params = jax.tree.map(lambda x: x[seed_idx], policy.params0)
    prompts, keys = policy.prompts[seed_idx], policy.keys[seed_idx]
    out = {}
    for i, name in enumerate(pcfg.optimizers):
        opt = BY_NAME[name]
        progress(i / len(pcfg.optimizers), f"{pcfg.kind}: {opt.label}")
        lrs = jnp.asarray(np.repeat(_learning_rates(pcfg, opt), S))
        recs = sweep(group_of(opt, mu=pcfg.mu), lrs, params, prompts, keys)
        recs = jax.tree.map(lambda x: np.asarray(x).reshape((L, S) + x.shape[1:]), recs)
        out[name] = {**recs, "lr": _learning_rates(pcfg, opt)}
    return out


# ----------------------------------------------------------------------------- matched progress (pure numpy)


def measured(rec: dict, burn_in: int) -> dict:
    """Per (η, seed) means over the measured batches (after ``burn_in``): {metric: [n_lr, S]}."""
    keys = ("escape_frac", "max_excess", "travel", "dJ", "dE", "kl", "reward")
    out = {k: np.asarray(rec[k], np.float64)[..., burn_in:].mean(-1) for k in keys if k in rec}
    for k in ("pairs", "dz", "stale", "fresh", "corr", "resid"):
        out[k + "_sum"] = np.asarray(rec[k], np.float64)[..., burn_in:].sum(-1)
    out["own_max"] = np.asarray(rec["own_max"], np.float64)[..., burn_in:].max(-1)
    return out


def at_level(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """y where x first reaches ``level`` along the sweep (linear interpolation); NaN if it never does.

    ``x``, ``y``: one seed's progress and escape over the η sweep, in η order. The first
    crossing is on the rising branch of the progress curve: the least η (and, escape
    rising with η, the least escape) that achieves the level.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size == 0 or not np.isfinite(level):
        return float("nan")
    if x[0] >= level:
        return float(y[0]) if x[0] == level else float("nan")
    for k in range(1, x.size):
        if x[k] >= level:
            w = (level - x[k - 1]) / (x[k] - x[k - 1])
            return float(y[k - 1] + w * (y[k] - y[k - 1]))
    return float("nan")


def common_levels(xs: list[np.ndarray], n: int) -> np.ndarray:
    """n progress levels every curve reaches: strictly inside [max of the minima, min of the maxima].

    Each array in ``xs`` is [n_lr, S] (one optimizer's progress over η and seeds); every
    (optimizer, seed) curve is one curve. Levels are evenly spaced (geometrically when
    the range is positive) at fractions (k + 1)/(n + 1). Empty when the curves share no range.
    """
    curves = [np.asarray(x, np.float64)[:, s] for x in xs for s in range(np.shape(x)[1])]
    lo = max(float(np.nanmin(c)) for c in curves)
    hi = min(float(np.nanmax(c)) for c in curves)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.zeros((0,))
    f = (np.arange(n) + 1.0) / (n + 1.0)
    if lo > 0:
        return np.exp(np.log(lo) + f * (np.log(hi) - np.log(lo)))
    return lo + f * (hi - lo)


def curves_at(x: np.ndarray, y: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[n_levels, S]: each seed's y at each level (``at_level``)."""
    return np.array([[at_level(x[:, s], y[:, s], L) for s in range(x.shape[1])] for L in levels]).reshape(
        len(levels), x.shape[1]
    )


class Matched(NamedTuple):
    """A paired comparison of optimizers a and b at common progress levels."""

    levels: np.ndarray  # [n]
    a: np.ndarray  # [n, S] escape of a
    b: np.ndarray  # [n, S] escape of b
    diff: np.ndarray  # [S'] per-seed mean over levels of a − b (seeds with every level defined)
    reduction: np.ndarray  # [S'] per-seed 1 − Σ_L a / Σ_L b (NaN where Σ b = 0)
    base: float  # mean of b over levels and seeds
    pooled: bool = False  # progress curves averaged over seeds before matching
    resolved: bool = True  # pooled progress curves resolved from 0 where used (see ``matched``)


def matched(ma: dict, mb: dict, progress: str, metric: str, n_levels: int, *, pooled: bool = False) -> Matched:
    """Compare optimizer a with b at equal ``progress`` ("dJ", "kl" or "dE") on ``metric``.

    ``pooled``: the progress curve of an optimizer is its mean over seeds (for progress
    that is only estimated, e.g. the held-out IS reward gain, whose per-seed noise would
    make per-seed crossings meaningless); the metric stays per seed, so the comparison
    is still paired over seeds. The pooled curve must then be *resolved* where it is
    used — the 95% CI over seeds of its mean excludes 0 at every η from the one before
    the lowest level's crossing to the highest level's — else ``resolved`` is False and
    the claims built on it are inconclusive (the progress axis is noise).
    """
    xa, xb = np.asarray(ma[progress], np.float64), np.asarray(mb[progress], np.float64)
    raw = (xa, xb)
    if pooled:
        xa = np.broadcast_to(xa.mean(1, keepdims=True), xa.shape)
        xb = np.broadcast_to(xb.mean(1, keepdims=True), xb.shape)
    levels = common_levels([xa, xb], n_levels)
    resolved = not pooled or (levels.size > 0 and all(_resolved(x, levels) for x in raw))
    ya = curves_at(xa, ma[metric], levels)
    yb = curves_at(xb, mb[metric], levels)
    ok = np.all(np.isfinite(ya) & np.isfinite(yb), axis=0) if levels.size else np.zeros(0, bool)
    diff = (ya - yb)[:, ok].mean(0) if levels.size else np.zeros(0)
    sa, sb = ya[:, ok].sum(0), yb[:, ok].sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        red = np.where(sb > 0, 1.0 - sa / np.where(sb > 0, sb, 1.0), np.nan)
    base = float(np.nanmean(yb[:, ok])) if ok.any() else float("nan")
    return Matched(
        levels=levels, a=ya, b=yb, diff=diff, reduction=red, base=base, pooled=pooled, resolved=bool(resolved)
    )


def _resolved(x: np.ndarray, levels: np.ndarray) -> bool:
    """The seed-mean of ``x`` [n_lr, S] has a 95% CI excluding 0 wherever ``levels`` are interpolated."""
    mean = x.mean(1)
    n = x.shape[1]
    if n < 2:
        return False
    lo = mean - stats.t_quantile(n - 1) * x.std(1, ddof=1) / math.sqrt(n)
    cross = [int(np.argmax(mean >= L)) if np.any(mean >= L) else mean.size - 1 for L in levels]
    first, last = max(min(cross) - 1, 0), max(cross)
    return bool(np.all(lo[first : last + 1] > 0))


# ----------------------------------------------------------------------------- claims (pure functions of numbers)

MOMENTUM_MARGIN = 0.2  # a null verdict needs the CI to exclude an effect of 20% of the larger mean escape
TARGET = 0.5  # ≥ 50% less escape than Adam at equal progress
STALE_SHARE = 0.5  # "mostly stale momentum"
METRICS = {"escape_frac": "escaped-token fraction", "travel": "post-crossing travel per token"}
PROGRESS = {"dJ": "surrogate gain ΔJ", "kl": "KL(π_old‖π)", "dE": "reward gain ΔE"}


def _ci(values) -> stats.Interval | None:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return stats.mean_ci(v) if v.size else None


def _nan_ci() -> tuple[float, float]:
    return (float("nan"), float("nan"))


def _pooled_note(m: Matched) -> str:
    if not m.pooled:
        return ""
    return (
        " (progress curves: mean over seeds, a held-out estimate; decisive only if its 95% CI excludes 0 at "
        "every η used)"
    )


def _unresolved(m: Matched) -> str | None:
    """The measured text of a comparison that cannot decide, or None."""
    if m.levels.size == 0:
        return "the η sweeps share no progress range"
    if not m.resolved:
        return "the held-out progress estimate is not resolved from 0 (95% CI) where the levels lie"
    return None


def _decide(ci: stats.Interval | None, ok: bool | None) -> str:
    """The verdict: decisive only with ≥ 5 seeds behind the interval."""
    return verdict(ok) if ci is not None and ci.n >= 5 else "inconclusive"


def momentum_claim(m: Matched, *, policy: str, progress: str, metric: str = "escape_frac") -> Claim:
    """Prop. 3 implied: at equal progress, Adam β1 = 0.9 escapes more than β1 = 0 (``m``: a = 0.9, b = 0)."""
    what, prog = METRICS[metric], PROGRESS[progress]
    criterion = (
        f"paired over seeds, {what} of β1 = 0.9 minus β1 = 0 at common {prog} levels{_pooled_note(m)} (each "
        f"seed's value at the first crossing along its η sweep, mean over levels): reproduced if the 95% CI "
        f"lies above 0; not reproduced if it lies below 0, or below +{MOMENTUM_MARGIN:.0%} of the larger mean "
        "(no effect that size); inconclusive otherwise"
    )
    claim = f"Prop. 3 ({policy}): at equal {prog}, momentum (β1 = 0.9) increases the {what} over β1 = 0"
    falsified = f"the CI lies below 0, or excludes an increase of {MOMENTUM_MARGIN:.0%} of the larger mean"
    ci = _ci(m.diff)
    why = _unresolved(m)
    if ci is None or why is not None:
        return Claim(
            claim=claim,
            kind="experiment",
            criterion=criterion,
            falsified_if=falsified,
            measured=why or "no seed reaches every level",
            verdict="inconclusive",
            proposition="Prop. 3",
            ci=_nan_ci(),
            seeds=max(int(m.diff.size), 1),
        )
    mean_a = float(np.nanmean(m.a)) if np.isfinite(m.a).any() else 0.0
    margin = MOMENTUM_MARGIN * max(abs(m.base), abs(mean_a))
    ok = True if ci.lo > 0 else (False if ci.hi < margin else None)
    measured_ = (
        f"difference {ci.fmt('.4g')} (β1 = 0.9: {mean_a:.4g}, β1 = 0: {m.base:.4g}; margin {margin:.3g}); "
        f"levels {', '.join(f'{x:.3g}' for x in m.levels)}"
    )
    return Claim(
        claim=claim,
        kind="experiment",
        criterion=criterion,
        falsified_if=falsified,
        measured=measured_,
        verdict=_decide(ci, ok),
        proposition="Prop. 3",
        ci=(ci.lo, ci.hi),
        seeds=ci.n,
    )


def _travel_per_pair(m: dict) -> np.ndarray:
    pairs = m["pairs_sum"].sum(0)
    return np.where(pairs > 0, m["dz_sum"].sum(0) / np.maximum(pairs, 1), np.nan)


def travel_claim(m9: dict, *, policy: str, m0: dict | None = None) -> Claim:
    """Prop. 3: clipped tokens keep moving outward — mean Δz per (token, step) pair beyond the bound > 0.

    ``m0`` (Adam β1 = 0, no stale momentum) is reported beside it: the same statistic
    comes out negative there, so the criterion can fail on this policy.
    """
    ci = _ci(_travel_per_pair(m9))
    control = "" if m0 is None else _ci(_travel_per_pair(m0))
    criterion = (
        "Adam β1 = 0.9: mean change of z = sign(A)·log(π/π_old) per inner step taken while the token is beyond "
        "the bound, pooled over the η sweep, per seed; reproduced if the 95% CI lies above 0, not reproduced if "
        "it lies below 0"
    )
    ok = None if ci is None else (True if ci.lo > 0 else (False if ci.hi < 0 else None))
    measured = "no token crossed" if ci is None else f"Δz per clipped step {ci.fmt('.4g')}"
    if control:
        measured += f" (β1 = 0: {control.fmt('.4g')})"
    return Claim(
        claim=f"Prop. 3 ({policy}): once beyond the bound, tokens keep moving further out under Adam",
        kind="experiment",
        criterion=criterion,
        falsified_if="the CI lies below 0 (clipped tokens move back)",
        measured=measured,
        verdict=_decide(ci, ok),
        proposition="Prop. 3",
        ci=_nan_ci() if ci is None else (ci.lo, ci.hi),
        seeds=1 if ci is None else ci.n,
    )


def stale_share_claim(m9: dict, *, policy: str) -> Claim:
    """Attribution: share of post-crossing travel that is stale momentum (pooled over η and batches, per seed)."""
    dz, stale = m9["dz_sum"].sum(0), m9["stale_sum"].sum(0)
    share = np.where(np.abs(dz) > 0, stale / np.where(np.abs(dz) > 0, dz, 1.0), np.nan)
    ci = _ci(share)
    criterion = (
        f"Adam β1 = 0.9: Σ stale-momentum part / Σ change of z over (token, step) pairs beyond the bound, pooled "
        f"over the η sweep, per seed; reproduced if the 95% CI lies above {STALE_SHARE}, not reproduced if below"
    )
    ok = None if ci is None else (True if ci.lo > STALE_SHARE else (False if ci.hi < STALE_SHARE else None))
    return Claim(
        claim=f"Prop. 3's mechanism ({policy}): stale momentum drives most of the post-crossing travel",
        kind="experiment",
        criterion=criterion,
        falsified_if=f"the CI lies below {STALE_SHARE} (other tokens' fresh gradients drive it)",
        measured="no travel" if ci is None else f"stale share {ci.fmt('.3f')} (> 1: the fresh part pulls back)",
        verdict=_decide(ci, ok),
        proposition="Prop. 3",
        ci=_nan_ci() if ci is None else (ci.lo, ci.hi),
        seeds=1 if ci is None else ci.n,
    )


def target_claim(m: Matched, *, name: str, policy: str, progress_name: str, metric: str = "escape_frac") -> Claim:
    """Beyond the paper: transform ``name`` has ≥ 50% less escape than Adam at equal progress (a = it, b = Adam)."""
    ci = _ci(m.reduction)
    why = _unresolved(m)
    what = METRICS[metric]
    criterion = (
        f"per seed, 1 − Σ_L {what}({name}) / Σ_L {what}(Adam β1 0.9) at common {progress_name} levels L"
        f"{_pooled_note(m)}; target "
        f"met (reproduced) if the 95% CI lies above {TARGET:.0%}, missed (not reproduced) if it lies below"
    )
    ok = None if ci is None or why else (True if ci.lo > TARGET else (False if ci.hi < TARGET else None))
    return Claim(
        claim=f"beyond ({policy}): {BY_NAME[name].label}: ≥ {TARGET:.0%} less {what} than Adam at equal "
        f"{progress_name}",
        kind="experiment",
        criterion=criterion,
        falsified_if=f"the CI of the reduction lies below {TARGET:.0%}",
        measured=(why or "no seed reaches every level")
        if ci is None or why
        else f"reduction {ci.fmt('.2f')} (Adam: {m.base:.4g}); levels {', '.join(f'{x:.3g}' for x in m.levels)}",
        verdict=_decide(ci, ok),
        proposition="beyond",
        ci=_nan_ci() if ci is None else (ci.lo, ci.hi),
        seeds=1 if ci is None else ci.n,
    )


def guard_cost_claim(mg: dict, ma: dict, *, policy: str, progress_name: str) -> Claim:
    """The guard's zero escape is by construction; its cost is the progress it gives up at equal η."""
    a, g = ma["dE"], mg["dE"]  # [n_lr, S]
    ci = _ci((a - g).mean(0))
    rel = float(np.mean(g) / np.mean(a)) if np.mean(a) != 0 else float("nan")
    esc = float(np.max(mg["escape_frac"]))
    best_a, best_g = float(np.max(a.mean(1))), float(np.max(g.mean(1)))
    ok = None if ci is None else (True if ci.lo > 0 else (False if ci.hi < 0 else None))
    return Claim(
        claim=f"beyond ({policy}): the trust-region guard's zero escape (by construction) costs {progress_name}",
        kind="experiment",
        criterion=(
            f"paired over seeds, {progress_name} per batch of Adam β1 0.9 minus the guard's at equal η, mean over "
            "the η sweep: the guard costs progress (reproduced) if the 95% CI lies above 0, gains (not "
            "reproduced) if below 0"
        ),
        falsified_if="the CI lies below 0 (the guard gains progress)",
        measured=(
            "no data"
            if ci is None
            else f"loss {ci.fmt('.4g')} per batch (guard / Adam = {rel:.2f}; best over η: guard {best_g:.4g}, "
            f"Adam {best_a:.4g}); max guard escape {esc:.3g}"
        ),
        verdict=_decide(ci, ok),
        proposition="beyond",
        ci=_nan_ci() if ci is None else (ci.lo, ci.hi),
        seeds=1 if ci is None else ci.n,
    )


def own_term_claim(own_max: float, pairs: int) -> Claim:
    return Claim(
        claim="attribution check: a clipped token's own term contributes no fresh gradient (Eq. 28)",
        kind="verification",
        criterion="max |∂loss/∂log π_j| over every (token, step) pair beyond the bound, all optimizers, is exactly 0",
        falsified_if="any non-zero value",
        measured=f"{own_max:.3g} over {pairs} pairs",
        verdict=verdict(own_max == 0.0 if pairs > 0 else None),
        proposition="Eq. 28",
    )


def closed_form_claims(a: dict) -> list[Claim]:
    """Verifications of part (a); tolerances are float32 rounding, printed values at their printed precision."""
    e = a["eq38"]
    c4 = a["limit_4"]
    return [
        Claim(
            claim=f"Eqs. 32/36 (paper's index) = optax Adam, T = 2..{int(a['T'][-1])}, k < {len(a['k'])}",
            kind="verification",
            criterion=f"max |closed form − simulation| ≤ {_F32_TOL:.1e} (64 float32 ulps)",
            falsified_if="a larger difference",
            measured=f"{a['max_abs_err']:.1e}; C_2 = {a['C_2']:.5f}",
            verdict=verdict(a["max_abs_err"] <= _F32_TOL and a["library_simulator_max_abs_diff"] <= _F32_TOL),
            proposition="Eqs. 32, 36",
        ),
        Claim(
            claim="Eq. 33: lim C_T = β1/√β2 ≈ 0.923 (β1 0.9, β2 0.95)",
            kind="verification",
            criterion="|β1/√β2 − 0.923| ≤ 5e-4 (the printed precision) and C_T at T = 1e5 equal to it to float32",
            falsified_if="either fails",
            measured=f"β1/√β2 = {a['limit']:.5f}, C_100000 = {a['C_large_T']:.5f}",
            verdict=verdict(abs(a["limit"] - 0.923) <= 5e-4 and abs(a["C_large_T"] - a["limit"]) <= _F32_TOL),
            proposition="Eq. 33",
        ),
        Claim(
            claim="Eq. 37: C_{T,4} ≈ (β1/√β2)^5 ≈ 0.66 (β1 0.9, β2 0.95), as printed",
            kind="verification",
            criterion="|(β1/√β2)^5 − 0.66| ≤ 5e-3 (the printed precision)",
            falsified_if="a larger difference",
            measured=f"(β1/√β2)^5 = {c4:.4f} (0.92^5 = {0.92**5:.4f}: the printed value rounds β1/√β2 to 0.92)",
            verdict=verdict(abs(c4 - 0.66) <= 5e-3),
            proposition="Eq. 37",
        ),
        Claim(
            claim="Eq. 38 exactly: first bracket of Eq. 36 × (√v̂_{T−1} + ε)/(√v̂_{T+k} + ε) = optax Adam with ε",
            kind="verification",
            criterion=(
                f"varying gradient history (T = {e['T']}, ε = {e['eps']:g}): max |exact − simulation| ≤ "
                f"{_F32_TOL:.1e}; the constant-gradient shortcut is exact on a constant history"
            ),
            falsified_if="a larger difference",
            measured=(
                f"exact {e['max_abs_err_exact']:.1e}; shortcut (√v̂ = |g_(T−1)|) {e['max_abs_err_shortcut']:.1e} on "
                f"the varying history (C_(T,0) {e['exact'][0]:.4f} vs {e['shortcut'][0]:.4f}), "
                f"{e['max_abs_err_shortcut_constant_history']:.1e} on a constant one"
            ),
            verdict=verdict(
                e["max_abs_err_exact"] <= _F32_TOL
                and e["max_abs_err_literal"] <= _F32_TOL
                and e["max_abs_err_shortcut_constant_history"] <= _F32_TOL
            ),
            proposition="Eq. 38",
        ),
    ]


def policy_claims(meas: dict, pcfg: PolicyConfig, n_levels: int) -> tuple[list[Claim], dict]:
    """Every experiment claim of one policy from its measured numbers ({name: ``measured(...)``})."""
    policy = pcfg.kind
    m9, m0 = meas[BASELINE], meas[NO_MOMENTUM]
    progress_e = "exact ΔE" if policy == "tabular" else "held-out IS reward gain"
    claims = [travel_claim(m9, policy=policy, m0=m0)]
    extra = {}
    estimated = policy != "tabular"  # KL and ΔE are held-out estimates on the transformer: pooled progress curves
    for metric in METRICS:
        for p in ("dJ", "kl"):
            mm = matched(m9, m0, p, metric, n_levels, pooled=estimated and p == "kl")
            extra[f"momentum_{metric}_{p}"] = mm
            claims.append(momentum_claim(mm, policy=policy, progress=p, metric=metric))
    claims.append(stale_share_claim(m9, policy=policy))
    for name in TRANSFORMS:
        if name in meas:
            for metric in METRICS:
                mt = matched(meas[name], m9, "dE", metric, n_levels, pooled=estimated)
                extra[f"target_{name}_{metric}"] = mt
                claims.append(target_claim(mt, name=name, policy=policy, progress_name=progress_e, metric=metric))
    if "guard" in meas:
        claims.append(guard_cost_claim(meas["guard"], m9, policy=policy, progress_name=progress_e))
    return claims, extra


# ----------------------------------------------------------------------------- run


def run(ctx: Context):
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config):
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    spec = spec_pair()[0]
    ctx.progress(0.02, "(a) closed forms vs optax")
    t0 = time.perf_counter()
    a = _part_a(cfg)
    timings["a"] = time.perf_counter() - t0
    sweeps, meas, policies = {}, {}, {}
    n = len(cfg.policies)
    for i, pcfg in enumerate(cfg.policies):
        t0 = time.perf_counter()
        policy = _setup_policy(pcfg, ctx.seed + 1000 * i)
        base, span = 0.05 + 0.85 * i / n, 0.85 / n
        sweeps[pcfg.kind] = run_sweep(pcfg, policy, cfg, spec, lambda f, m, b=base, s=span: ctx.progress(b + s * f, m))
        meas[pcfg.kind] = {k: measured(v, pcfg.burn_in) for k, v in sweeps[pcfg.kind].items()}
        policies[pcfg.kind] = (pcfg, policy)
        timings[pcfg.kind] = time.perf_counter() - t0
    ctx.progress(0.95, "report")
    timings["total"] = time.perf_counter() - t_start
    return _report(ctx, cfg, spec, a, sweeps, meas, policies, timings)


# ----------------------------------------------------------------------------- report


def _attribution_rows(meas: dict, pcfg: PolicyConfig) -> list:
    """Per optimizer: (token, step) pairs beyond the bound and the mean Δz per pair of each part (× 1e3)."""
    rows = []
    for name in pcfg.optimizers:
        m = meas[name]
        n = float(m["pairs_sum"].sum())
        per = [
            1e3 * float(m[k + "_sum"].sum()) / n if n else float("nan")
            for k in ("dz", "stale", "fresh", "corr", "resid")
        ]
        rows.append((BY_NAME[name].label, int(n), *per, float(m["own_max"].max())))
    return rows


def _sweep_rows(meas: dict, pcfg: PolicyConfig) -> list:
    rows = []
    for name in pcfg.optimizers:
        m = meas[name]
        for j, lr in enumerate(_learning_rates(pcfg, BY_NAME[name])):
            rows.append(
                (
                    BY_NAME[name].label,
                    f"{lr:.3g}",
                    float(m["dJ"][j].mean()),
                    float(m["dE"][j].mean()),
                    float(m["kl"][j].mean()),
                    f"{m['escape_frac'][j].mean():.4f} ± {_se(m['escape_frac'][j]):.4f}",
                    float(m["max_excess"][j].mean()),
                    float(m["travel"][j].mean()),
                )
            )
    return rows


def _se(x) -> float:
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0


def _tables(cfg: Config, a: dict, meas: dict, policies: dict) -> str:
    rows = [
        (int(T), *[float(x) for x in a["closed"][i]]) for i, T in enumerate(a["T"]) if T in (2, 3, 5, 10, 20, 50, 100)
    ]
    rows.append(("∞", *[float(x) for x in a["limit_k"]]))
    text = "### (a) C_(T,k) (Eq. 36, paper's index), β1 0.9, β2 0.95\n\n"
    text += markdown_table(["T"] + [f"C_(T,{k})" for k in range(len(a["k"]))], rows) + "\n"
    e = a["eq38"]
    text += (
        f"Eq. 38 on a varying history (T = {e['T']}, ε = {e['eps']:g}): simulated C_(T,k) "
        f"{', '.join(f'{x:.4f}' for x in e['simulated'])}; exact {', '.join(f'{x:.4f}' for x in e['exact'])}; "
        f"constant-gradient shortcut {', '.join(f'{x:.4f}' for x in e['shortcut'])}.\n\n"
    )
    for kind, (pcfg, _) in policies.items():
        progress_e = "ΔE (exact)" if kind == "tabular" else "ΔE (held-out IS)"
        text += f"### (b) {kind}: per optimizer and η, mean over seeds and measured batches\n\n"
        text += markdown_table(
            ["optimizer", "η", "ΔJ", progress_e, "KL(π_old‖π)", "escape frac ± s.e.", "max excess", "travel/token"],
            _sweep_rows(meas[kind], pcfg),
        )
        text += (
            f"\n### (c) {kind}: attribution of Δz per (token, step) pair beyond the bound (mean × 1e3; "
            "Δz = stale + fresh + transform + residual)\n\n"
        )
        text += markdown_table(
            [
                "optimizer",
                "pairs",
                "Δz",
                "stale momentum",
                "fresh (other tokens)",
                "transform",
                "residual",
                "max |c_j|",
            ],
            _attribution_rows(meas[kind], pcfg),
        )
        text += "\n"
    return text


def _curve_panel(ax, meas, names, progress, metric):
    """One curve per optimizer, parametric in η: x = seed-mean progress, y = seed-mean metric ± 95% CI (band)."""
    for name in names:
        m = meas[name]
        x, y = m[progress].mean(1), m[metric]
        n = y.shape[1]
        half = stats.t_quantile(n - 1) * y.std(1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(y.shape[0])
        (line,) = ax.plot(x, y.mean(1), "o-", ms=2.5, lw=1.2, label=BY_NAME[name].label)
        ax.fill_between(x, y.mean(1) - half, y.mean(1) + half, color=line.get_color(), alpha=0.18, lw=0)


def _attribution_panel(ax, meas, names, kind):
    """Mean Δz per (token, step) pair beyond the bound, split into its parts, per optimizer (pooled over η, seeds)."""
    parts = (
        ("stale", "stale momentum"),
        ("fresh", "fresh (other tokens)"),
        ("corr", "transform"),
        ("resid", "residual"),
    )
    x = np.arange(len(names))
    width = 0.8 / (len(parts) + 1)
    for k, (key, label) in enumerate((("dz", "Δz (total)"),) + parts):
        vals = []
        for name in names:
            m = meas[name]
            n = float(m["pairs_sum"].sum())
            vals.append(1e3 * float(m[key + "_sum"].sum()) / n if n else 0.0)
        ax.bar(x + k * width, vals, width, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x + width * len(parts) / 2, [BY_NAME[n].label.replace("Adam 0.9 + ", "+") for n in names], fontsize=6)
    ax.tick_params(axis="x", rotation=30)
    ax.set(ylabel="Δz per clipped (token, step) × 1e3", title=f"(c) {kind}: attribution of Δz beyond the bound")
    ax.legend(fontsize=6)


def _figure(cfg: Config, a: dict, meas: dict, policies: dict, path) -> None:
    kinds = list(policies)
    fig, axes = new_figure(ncols=5, nrows=1 + 2 * len(kinds), size=(4.6, 3.5))
    ax = axes[0, 0]
    for k in range(len(a["k"])):
        (line,) = ax.plot(a["T"], a["closed"][:, k], lw=1.2, label=f"k = {k}")
        ax.plot(a["T"], a["simulated"][:, k], "o", ms=2.0, color=line.get_color())
    ax.axhline(a["limit"], color="k", ls="--", lw=1, label=f"β1/√β2 = {a['limit']:.3f}")
    ax.set(
        xlabel="T (step at which the gradient vanishes)", ylabel="C_(T,k)", title="(a) Eq. 36 (lines) vs optax (dots)"
    )
    ax.legend(fontsize=6, ncol=2)
    ax = axes[0, 1]
    e = a["eq38"]
    ks = np.arange(len(e["simulated"]))
    ax.plot(ks, e["simulated"], "ko", ms=5, label="optax Adam (varying history)")
    ax.plot(ks, e["exact"], "x-", label="Eq. 38 exact (v̂ before/after)")
    ax.plot(ks, e["shortcut"], "--", label="constant-gradient shortcut")
    ax.set(xlabel="k (zero-gradient steps)", ylabel="C^ε_(T,k)", title=f"(a) Eq. 38, ε = {e['eps']:g}, T = {e['T']}")
    ax.legend(fontsize=6)
    ax = axes[0, 2]
    hist = e["history"]
    ax.plot(np.arange(1, len(hist) + 1), hist, "o-", ms=3)
    ax.axhline(e["eps"], color="k", ls=":", lw=1, label="ε")
    ax.set(xlabel="step", ylabel="|g_t|", title="(a) the varying gradient history of Eq. 38")
    ax.legend(fontsize=6)
    axes[0, 3].axis("off")
    axes[0, 4].axis("off")
    for i, kind in enumerate(kinds):
        mk = meas[kind]
        adam_family = [n for n in ("adam_b0", "adam_b0.5", "adam_b0.9", "adam_b0.95", "rmsprop", "sgdm") if n in mk]
        transforms = [n for n in (BASELINE, "reset", "projection", "gate", "guard") if n in mk]
        progress_e = "exact ΔE" if kind == "tabular" else "held-out IS reward gain"
        labels = {"dJ": "surrogate gain ΔJ / batch", "kl": "KL(π_old‖π) / batch", "dE": f"{progress_e} / batch"}
        ylabels = {
            "escape_frac": "escaped fraction",
            "max_excess": "max excess beyond bound",
            "travel": "travel / token",
        }
        short = {"escape_frac": "escape", "max_excess": "max excess", "travel": "travel"}
        for j, prog in enumerate(("dJ", "kl")):
            r = 1 + 2 * i + j
            for c, metric in enumerate(("escape_frac", "max_excess", "travel")):
                ax = axes[r, c]
                _curve_panel(ax, mk, adam_family, prog, metric)
                vs = "ΔJ" if prog == "dJ" else "KL"
                ax.set(xlabel=labels[prog], ylabel=ylabels[metric], title=f"(b) {kind}: {short[metric]} vs {vs}")
                ax.legend(fontsize=6)
        for c, metric in ((3, "escape_frac"), (4, "travel")):
            ax = axes[1 + 2 * i, c]
            _curve_panel(ax, mk, transforms, "dE", metric)
            ax.set(xlabel=labels["dE"], ylabel=ylabels[metric], title=f"(b) {kind}: Pareto, {short[metric]} vs ΔE")
            ax.legend(fontsize=6)
        _attribution_panel(axes[2 + 2 * i, 3], mk, [n for n in (NO_MOMENTUM,) + tuple(transforms) if n in mk], kind)
        axes[2 + 2 * i, 4].axis("off")
    fig.text(
        0.5, 0.005, "curves: one point per η (mean over seeds); bands: 95% CI over seeds of the y value", ha="center"
    )
    fig.subplots_adjust(hspace=0.6, wspace=0.4)
    save_figure(fig, path)


def _report(ctx, cfg, spec, a, sweeps, meas, policies, timings):
    claims = closed_form_claims(a)
    own = max(float(m["own_max"].max()) for mk in meas.values() for m in mk.values())
    pairs = int(sum(float(m["pairs_sum"].sum()) for mk in meas.values() for m in mk.values()))
    claims.append(own_term_claim(own, pairs))
    extras = {}
    for kind, (pcfg, _) in policies.items():
        cl, extra = policy_claims(meas[kind], pcfg, cfg.levels)
        claims += cl
        extras[kind] = {k: v._asdict() for k, v in extra.items()}
    table = _tables(cfg, a, meas, policies)
    _figure(cfg, a, meas, policies, ctx.out / "overshoot.png")
    result = {
        "config": dataclasses.asdict(cfg),
        "method": {"name": "grpo", "beta": spec.beta, "eps_low": spec.eps_low, "eps_high": spec.eps_high},
        "closed_form": a,
        "policies": {k: {"description": p.description, "text": p.text} for k, (_, p) in policies.items()},
        "measured": meas,
        "matched": extras,
        "timings_s": timings,
    }
    lines = [f"Policies: {'; '.join(f'{k}: {p.text}' for k, (_, p) in policies.items())}."]
    for kind, (pcfg, _) in policies.items():
        lines.append(
            f"{kind}: {pcfg.seeds} seeds × η ∈ {{{', '.join(f'{x:g}' for x in pcfg.learning_rates)}}} (SGD × "
            f"{pcfg.sgd_lr_scale:g}); B = {pcfg.num_prompts} groups × G = {pcfg.group_size} completions of "
            f"T = {pcfg.completion_len} tokens per batch; {pcfg.num_batches} consecutive batches with μ = {pcfg.mu} "
            f"inner steps each (state carried; the first {pcfg.burn_in} not measured)."
        )
    lines.append(
        f"GRPO (β = 0, ε_low = {spec.eps_low}, ε_up = {spec.eps_high}); Adam β2 = {cfg.beta2}, ε = {cfg.adam_eps:g}. "
        "Escape after each batch's μ steps: escaped fraction (tokens with A > 0 and s > 1 + ε_up or A < 0 and "
        "s < 1 − ε_low), max excess beyond the bound, travel = Σ Δz over steps taken while beyond the bound per "
        "token (z = sign(A)·log s). Progress per batch: ΔJ (surrogate), KL(π_old‖π) (exact on the tabular policy; "
        "held-out k1 estimate on the transformer), ΔE (exact on the tabular policy; held-out sequence-level IS "
        "estimate on the transformer). Matched comparisons: common levels strictly inside the progress range "
        f"every (optimizer, seed) curve reaches, {cfg.levels} levels, each seed's escape at the first crossing "
        "along its η sweep; paired over seeds, Student-t 95% CI."
    )
    lines.append(f"Runtime: {timings['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).")
    return finish(
        ctx,
        NAME,
        "Prop. 3/7: momentum overshoot past the clip region, at matched progress",
        result,
        table,
        claims,
        "overshoot.png",
        notes="\n\n".join(lines),
    )
