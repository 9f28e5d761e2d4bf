"""The GRPO training sweep with a switched optimizer, on the exact tabular policy or the tiny transformer.

One member of the sweep is a short GRPO training run: consecutive batches sampled from the
current policy (logp_old recomputed, ratios start at 1), μ inner steps of the chosen optimizer
each, optimizer state carried across batches. Per batch it records escape (fraction of tokens
beyond the clip bound in the advantage-favoured direction, max excess, post-crossing travel),
progress (surrogate gain ΔJ, KL(π_old‖π) and the expected-reward gain ΔE — exact on the
tabular policy, held-out estimates on the transformer) and the exact attribution of each inner
step's change of z = sign(A)·log(π/π_old) for tokens beyond the bound: stale momentum, fresh
gradient, the transform's correction and the linearisation residual
(``analysis.overshoot.adam_update_split``, JVPs at the step's own preconditioner).

The optimizer's switches (kind, β1, reset, gate, projection, guard, clip, μ) are unbatched
traced scalars (:class:`Group`): ``lax.cond``/``lax.switch`` run only the chosen branch and
one executable serves every optimizer; the sweep is vmapped over (η, seed) (:func:`make_sweep`).
A Hugging Face checkpoint (``kind="checkpoint"``) cannot be stacked (η × seeds) times with its
optimizer state and is rewarded on the host (Countdown text through a verifier): its members run
one after another through one jitted sampler and one jitted update (:func:`make_member_runner`),
the same per-batch computation (:func:`_train_batch`, :func:`_held_out`). Used by the overshoot
experiment (Prop. 3/7) and the clipping experiment (Limitations).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import overshoot as ov
from experiments.shared.tasks import contains_probability, cpu_compiler_options

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
    """The traced switches of ``opt`` with μ inner steps, on the clipped (or unclipped) GRPO loss."""
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
        completion contains token 0, exact E[reward] and KL from ``analysis.tabular``),
        "transformer" (the NNX transformer; reward 1 iff the completion contains the
        prompt's first token; held-out estimates of ΔE and KL) or "checkpoint" (``checkpoint``
        below: Countdown, the graded verifier reward on the host, held-out estimates).
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
      checkpoint: with ``kind="checkpoint"``, a Hugging Face checkpoint directory (``--model PATH``): its
        parameters (one copy, shared by every member), its tokenizer and Countdown prompts
        (``prompt_len`` and ``vocab`` are then the checkpoint's); the members run one after another
        (:func:`run_members`) and the reward is computed on the host
        (:func:`experiments.shared.checkpoint.countdown_shaped_rewards`).
      dtype: the checkpoint's parameter and compute dtype.
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
    checkpoint: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in ("tabular", "transformer", "checkpoint"):
            raise ValueError(f"PolicyConfig.kind must be 'tabular', 'transformer' or 'checkpoint', got {self.kind!r}")
        if (self.kind == "checkpoint") != (self.checkpoint is not None):
            raise ValueError(
                "PolicyConfig.checkpoint (a checkpoint directory) goes with kind='checkpoint' and only with it, "
                f"got kind={self.kind!r}, checkpoint={self.checkpoint!r}"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"PolicyConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
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


# ----------------------------------------------------------------------------- policies


class Policy(NamedTuple):
    """A policy and its data for every seed."""

    logits_fn: Any
    logprob3: Any  # (params, tokens [B, G, T], prompt [B, P]) -> logp
    params0: Any  # stacked over seeds
    prompts: jax.Array  # [S, N, B, P]
    keys: jax.Array  # [S, N] keys
    description: dict
    text: str


class HostPolicy(NamedTuple):
    """A policy whose rewards are computed on the host (a checkpoint: text and a verifier), run member by member.

    Attributes:
      sampler: the policy for ``jgrpo.sample`` (a decoder, e.g. ``jgrpo.models.decoder(model_fn)``, or a causal
        ``logits_fn``).
      logprob3: ``(params, tokens [B, G, T], prompt) -> logp``; ``prompt`` one leaf-slice of ``prompts``.
      params: the initial parameters, ONE copy shared by every member (not stacked over members).
      prompts: ``[S, N, B, P]`` prompt ids, or a :class:`jgrpo.models.Prompt` of them (left-padded, with mask).
      keys: ``[S, N]`` sample keys.
      reward_fn: ``(seed s, batch n, tokens [B, G', T], mask [B, G', T]) -> rewards [B, G']`` (NumPy, host).
      eos_id, pad_id: the sampler's end and padding ids (``eos_id`` None: fixed-length completions).
      description, text: for the report.
    """

    sampler: Any
    logprob3: Any
    params: Any
    prompts: Any
    keys: jax.Array
    reward_fn: Any
    eos_id: int | None
    pad_id: int
    description: dict
    text: str


def tabular_kl(logits_old, logits_new, length: int):
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


def setup_policy(pcfg: PolicyConfig, seed: int) -> Policy:
    """The policy of ``pcfg`` and its data for every seed: initial parameters, prompts, sample keys."""
    S, N, B, P = pcfg.seeds, pcfg.num_batches, pcfg.num_prompts, pcfg.prompt_len
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), S * (N + 1)).reshape(S, N + 1, -1)
    if pcfg.kind == "checkpoint":
        return _setup_checkpoint(pcfg, seed, keys[:, 1:])
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


def _setup_checkpoint(pcfg: PolicyConfig, seed: int, keys: jax.Array) -> HostPolicy:
    """The checkpoint ``pcfg.checkpoint`` on Countdown: prompts for every (seed, batch), the shaped verifier reward."""
    import jgrpo.models as M
    from experiments.shared import checkpoint as C

    ck = C.load(pcfg.checkpoint, pcfg.dtype)
    prompts, problems = C.countdown_prompts(ck.tokenizer, seed, (pcfg.seeds, pcfg.num_batches, pcfg.num_prompts))
    tok = ck.tokenizer

    def reward_fn(s: int, n: int, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return C.countdown_shaped_rewards(problems[s][n], tok.decode_completions(tokens, mask))

    mc = ck.model_fn.config
    desc = {
        "kind": "checkpoint",
        "checkpoint": pcfg.checkpoint,
        "description": ck.description,
        "model_type": mc.model_type,
        "n_layers": mc.num_layers,
        "d_model": mc.hidden_size,
        "vocab": mc.vocab_size,
        "dtype": pcfg.dtype,
        "prompt_len": int(prompts.ids.shape[-1]),
        "reward": C.SHAPED_REWARD,
    }
    text = (
        f"{ck.description} on Countdown prompts ({C.COUNTDOWN.num_numbers} numbers in "
        f"[{C.COUNTDOWN.min_number}, {C.COUNTDOWN.max_number}], left-padded to {prompts.ids.shape[-1]} tokens, "
        f"completions end at EOS or after {pcfg.completion_len} tokens); reward: {C.SHAPED_REWARD}"
    )
    return HostPolicy(
        sampler=M.decoder(ck.model_fn),
        logprob3=M.logprob_fn(ck.model_fn),
        params=ck.params,
        prompts=M.Prompt(jnp.asarray(prompts.ids), jnp.asarray(prompts.mask)),
        keys=keys,
        reward_fn=reward_fn,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        description=desc,
        text=text,
    )


# ----------------------------------------------------------------------------- the switched optimizer


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


def make_optimizer(
    group: Group, learning_rate, *, beta2: float, eps: float, spec, kinds: tuple[int, ...] | None = None
):
    """(init, step) of the switched optimizer: ``step(g, state, params, ratio_fn, new_batch) -> (u, state, split)``.

    kind → Adam (``reset_on_new_batch`` ∘ optional strong gate), RMSProp
    (``optax.scale_by_rms(β2, ε)``) or SGD momentum (``optax.trace(β1)``); then −η; then
    optional ``project_clipped`` and ``trust_region_guard``. With every switch off the
    Adam kind is ``optax.adam(η, β1, β2, ε)`` exactly (tests). ``split`` is the
    (stale, fresh) :class:`analysis.overshoot.UpdateSplit` of the step before the
    projection/guard, at the step's own preconditioner.

    ``kinds`` (static): the kinds ``group.kind`` may take (None: all three). The state holds
    only theirs (None for the others) and only their branches are compiled: with a
    checkpoint, Adam-only sweeps keep one Adam state (2× the parameters), not Adam's, RMSProp's
    and SGD's (4×). ``group.kind`` must be one of ``kinds``: it is traced, so the callers check
    it (:func:`run_members`); here an absent kind would run the first present branch.
    """
    present = (KIND_ADAM, KIND_RMS, KIND_SGD) if kinds is None else tuple(sorted(set(kinds)))
    if not present or any(k not in (KIND_ADAM, KIND_RMS, KIND_SGD) for k in present):
        raise ValueError(f"kinds must be a non-empty subset of {(KIND_ADAM, KIND_RMS, KIND_SGD)}, got {kinds}")
    adam = jgrpo.optim.reset_on_new_batch(_maybe_gated_adam(group.beta1, beta2, eps, spec))
    rms = optax.scale_by_rms(decay=beta2, eps=eps)
    sgd = optax.trace(decay=group.beta1)
    proj = jgrpo.optim.project_clipped(eps_low=spec.eps_low, eps_high=spec.eps_high)
    guard = jgrpo.optim.trust_region_guard(eps_low=spec.eps_low, eps_high=spec.eps_high)
    lr = jnp.asarray(learning_rate, jnp.float32)

    def init(params):
        return OptState(
            adam.init(params) if KIND_ADAM in present else None,
            rms.init(params) if KIND_RMS in present else None,
            sgd.init(params) if KIND_SGD in present else None,
            proj.init(params),
            guard.init(params),
        )

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

        branches = {KIND_ADAM: adam_branch, KIND_RMS: rms_branch, KIND_SGD: sgd_branch}
        if len(present) == 3:
            u, state, split = jax.lax.switch(group.kind, (adam_branch, rms_branch, sgd_branch))
        elif len(present) == 1:
            u, state, split = branches[present[0]]()
        else:  # kind -> position among the present branches (an absent kind: the first)
            where = jnp.asarray([present.index(k) if k in present else 0 for k in range(3)], jnp.int32)
            u, state, split = jax.lax.switch(where[group.kind], tuple(branches[k] for k in present))
        u = jax.tree.map(lambda x: -lr * x, u)

        def proj_on():
            return proj.update(u, state.proj, params, ratio_fn=ratio_fn)

        u, s_proj = jax.lax.cond(group.proj, proj_on, lambda: (u, state.proj))

        def guard_on():
            return guard.update(u, state.guard, params, ratio_fn=ratio_fn)

        u, s_guard = jax.lax.cond(group.guard, guard_on, lambda: (u, state.guard))
        return u, state._replace(proj=s_proj, guard=s_guard), split

    return init, step


# ----------------------------------------------------------------------------- the sweep


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
    if pcfg.kind == "checkpoint":
        raise ValueError("a checkpoint's members run one after another: use make_member_runner, not make_sweep")
    if spec_noclip is None:
        spec_noclip = spec_pair()[1]
    return _sweep_fn(
        pcfg.kind,
        pcfg.completion_len,
        pcfg.group_size,
        policy.logits_fn,
        policy.logprob3,
        float(beta2),
        float(eps),
        spec,
        spec_noclip,
    )


def _train_batch(group, opt_step, logprob3, spec, spec_noclip, params, opt_state, prompt, tokens, rewards, mask=None):
    """``group.mu`` inner steps of the switched optimizer on one batch ``tokens [B, G, T]`` with ``rewards [B, G]``.

    ``logp_old`` is recomputed with ``logprob3`` (every ratio starts at 1); ``mask`` ``[B, G, T]``: the completion
    tokens (None: every token, the fixed-length samples of the tabular policy and the NNX transformer).
    Returns ``(new_params, new_state, rec)``: the escape, attribution and surrogate-gain records of the batch
    (progress in ΔE / KL is the caller's: exact or held out).
    """

    def logprob_fn(p):
        return logprob3(p, tokens, prompt)

    logp_old = jax.lax.stop_gradient(logprob_fn(params))
    mask = jnp.ones_like(logp_old) if mask is None else jnp.asarray(mask, logp_old.dtype)
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
    return new_params, new_state, rec


def _held_out(logprob3, params, new_params, prompt, tokens, rewards, base, mask=None) -> dict:
    """Held-out estimates of one batch's progress from fresh samples ``tokens [B, G', T]`` of π_old.

    ``dE`` = mean over the held-out completions of (r − base)·(w − 1), w = π(o)/π_old(o) the sequence ratio:
    unbiased for the expected-reward gain ΔE (the baseline ``base [B, 1]``, the training group's mean reward,
    is a constant: E_old[w − 1] = 0); ``kl`` = mean of Σ_t (log π_old − log π): unbiased for KL(π_old‖π).
    ``mask``: the completion tokens (None: every token).
    """
    lp0 = logprob3(params, tokens, prompt)
    lp1 = logprob3(new_params, tokens, prompt)
    up, down = lp1 - lp0, lp0 - lp1
    if mask is not None:
        up, down = jnp.where(mask > 0, up, 0.0), jnp.where(mask > 0, down, 0.0)
    w = jnp.exp(jnp.sum(up, axis=-1))  # [B, G'] sequence ratio π/π_old
    return {"dE": jnp.mean((rewards - base) * (w - 1.0)), "kl": jnp.mean(jnp.sum(down, axis=-1))}


@functools.cache
def _sweep_fn(kind, T, G, logits_fn, logprob3, beta2, eps, spec, spec_noclip, kinds=None):
    tab = kind == "tabular"
    n_sample = G if tab else 2 * G

    def one(group: Group, lr, params0, prompts_NBP, keys_N):
        init, opt_step = make_optimizer(group, lr, beta2=beta2, eps=eps, spec=spec, kinds=kinds)

        def batch_step(carry, xs):
            params, opt_state = carry
            prompt_BP, key = xs
            smp = jgrpo.sample(logits_fn, params, prompt_BP, key, group_size=n_sample, max_len=T)
            target = jnp.zeros_like(prompt_BP[:, :1]) if tab else prompt_BP[:, :1]
            rewards_all = jnp.any(smp.tokens == target[:, :, None], axis=-1).astype(jnp.float32)
            tokens, rewards = smp.tokens[:, :G], rewards_all[:, :G]
            new_params, new_state, rec = _train_batch(
                group, opt_step, logprob3, spec, spec_noclip, params, opt_state, prompt_BP, tokens, rewards
            )
            if tab:
                e0 = contains_probability(params, 0, eos=None, length=T)
                e1 = contains_probability(new_params, 0, eos=None, length=T)
                rec["E_start"], rec["dE"] = e0, e1 - e0
                rec["kl"] = tabular_kl(params["logits"], new_params["logits"], T)
            else:
                base = jnp.mean(rewards, axis=-1, keepdims=True)
                rec |= _held_out(logprob3, params, new_params, prompt_BP, smp.tokens[:, G:], rewards_all[:, G:], base)
            return (new_params, new_state), rec

        (_, _), recs = jax.lax.scan(batch_step, (params0, init(params0)), (prompts_NBP, keys_N))
        return recs

    # CPU: XLA's backend optimisation level 0 compiles this graph ~2.5x faster and runs it about as fast
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)), compiler_options=cpu_compiler_options())


# ----------------------------------------------------------------------------- members one after another


def kinds_of(pcfg: PolicyConfig) -> tuple[int, ...]:
    """The optimizer kinds of ``pcfg.optimizers`` (sorted): the branches and states the member runner compiles."""
    return tuple(sorted({BY_NAME[n].kind for n in pcfg.optimizers}))


def make_member_runner(pcfg: PolicyConfig, policy: HostPolicy, *, beta2: float, eps: float, spec, spec_noclip=None):
    """``run(group, lrs [M], seed_idx [M], progress=None) -> records [M, N]`` (NumPy): the members one by one.

    The same GRPO run per member as :func:`make_sweep` — N consecutive batches, each sampled from
    the current policy, ``group.mu`` inner steps of the switched optimizer, state carried — but for a
    policy too large to stack (η × seeds) times with its optimizer state (a checkpoint) and whose
    reward is computed on the host (text and a verifier). Per batch: one jitted sampler call
    (``jgrpo.sample``: 2G completions per prompt, G trained on, G held out for ΔE and KL), the reward
    on the host (``policy.reward_fn``, for all 2G), one jitted update (:func:`_train_batch` then
    :func:`_held_out`, with the completion mask). Member m = (η = ``lrs[m]``, seed ``seed_idx[m]``)
    starts from ``policy.params`` (one shared copy) with a fresh optimizer state; its parameters
    and state are donated to each update, so memory is the shared parameters + one member's
    parameters + one optimizer state (only the kinds of ``pcfg.optimizers``: :func:`kinds_of`).
    One executable per shape serves every optimizer, η and seed (the switches and η are traced).
    """
    if spec_noclip is None:
        spec_noclip = spec_pair()[1]
    kinds = kinds_of(pcfg)
    step, init = _member_fns(pcfg.completion_len, pcfg.group_size, policy.logprob3, float(beta2), float(eps), spec,
                             spec_noclip, kinds)  # fmt: skip
    B, G, T, N = pcfg.num_prompts, pcfg.group_size, pcfg.completion_len, pcfg.num_batches

    def run(group: Group, lrs, seed_idx, progress=None) -> dict:
        lrs, seed_idx = np.asarray(lrs, np.float32), np.asarray(seed_idx)
        if lrs.shape != seed_idx.shape or lrs.ndim != 1:
            raise ValueError(f"lrs and seed_idx must be [M] each, got {lrs.shape} and {seed_idx.shape}")
        if int(group.kind) not in kinds:
            raise ValueError(f"group.kind {int(group.kind)} is not among the compiled kinds {kinds} of pcfg.optimizers")
        members = []
        for m, (lr, s) in enumerate(zip(lrs, seed_idx, strict=True)):
            if progress is not None:
                progress(m / len(lrs))
            params = jax.tree.map(jnp.copy, policy.params)  # donated to the updates: the shared copy stays intact
            state = init(params)
            rows = []
            for n in range(N):
                prompt = jax.tree.map(lambda x, s=s, n=n: x[s, n], policy.prompts)
                ids, pmask = (prompt.ids, prompt.mask) if hasattr(prompt, "mask") else (prompt, None)
                smp = jgrpo.sample(
                    policy.sampler, params, ids, policy.keys[s, n], group_size=2 * G, max_len=T,
                    eos_id=policy.eos_id, pad_id=policy.pad_id, prompt_mask=pmask,
                )  # fmt: skip
                rewards = np.asarray(
                    policy.reward_fn(int(s), n, np.asarray(smp.tokens), np.asarray(smp.mask)), np.float32
                )
                if rewards.shape != (B, 2 * G):
                    raise ValueError(f"reward_fn must return [B, 2G] = {(B, 2 * G)} rewards, got {rewards.shape}")
                params, state, rec = step(group, lr, params, state, prompt, smp.tokens, smp.mask, rewards)
                rows.append(jax.device_get(rec))
            members.append(rows)
            del params, state
        return {k: np.asarray([[row[k] for row in rows] for rows in members]) for k in members[0][0]}

    return run


@functools.cache
def _member_fns(T, G, logprob3, beta2, eps, spec, spec_noclip, kinds):
    def step(group: Group, lr, params, opt_state, prompt, tokens, mask, rewards):
        _, opt_step = make_optimizer(group, lr, beta2=beta2, eps=eps, spec=spec, kinds=kinds)
        new_params, new_state, rec = _train_batch(
            group, opt_step, logprob3, spec, spec_noclip, params, opt_state, prompt, tokens[:, :G], rewards[:, :G],
            mask=mask[:, :G],
        )  # fmt: skip
        base = jnp.mean(rewards[:, :G], axis=-1, keepdims=True)
        rec |= _held_out(logprob3, params, new_params, prompt, tokens[:, G:], rewards[:, G:], base, mask=mask[:, G:])
        return new_params, new_state, rec

    def init(params):
        group = group_of(BY_NAME[BASELINE], mu=1)  # the state's structure does not depend on the switches
        return make_optimizer(group, 0.0, beta2=beta2, eps=eps, spec=spec, kinds=kinds)[0](params)

    return jax.jit(step, donate_argnums=(2, 3), compiler_options=cpu_compiler_options()), jax.jit(init)


def learning_rates_of(pcfg: PolicyConfig, opt: Opt) -> np.ndarray:
    """``opt``'s η grid: ``pcfg.learning_rates``, times ``sgd_lr_scale`` for SGD (its gradient is not normalised)."""
    scale = pcfg.sgd_lr_scale if opt.kind == KIND_SGD else 1.0
    return scale * np.asarray(pcfg.learning_rates, np.float32)
