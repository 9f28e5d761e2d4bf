"""Prop. 3/7: Adam's momentum carries the policy past its clip region.

Three parts, one figure:

(a) The closed form ``analysis.overshoot.c_coefficient`` C_{T,k} (Eqs. 32, 36)
    against the real ``optax.adam`` with a gradient that the clip zeroes after
    step T (β1 = 0.9, β2 = 0.95, T = 1..50, k = 0..4), and its limits β1/√β2
    (Eq. 33) and (β1/√β2)^{k+1} (Eq. 37).
(b) Escape beyond the clip bound on real GRPO groups: a small NNX transformer
    samples G completions per prompt (reward 1 when the completion contains the
    prompt's first token), and Adam makes μ inner steps per batch on the GRPO
    loss (β = 0, ε_low = ε_up = 0.2). Several consecutive batches carry the
    optimizer state; every batch is sampled from the current policy and its
    logp_old is the current policy's log-probabilities (ratios start at 1).
    Escape (tokens beyond the bound in the advantage-favoured direction, and the
    largest excess) is measured at the end of each batch, for
    μ × β1 ∈ {1, 2, 4, 8} × {0, 0.5, 0.9, 0.95}. The inner loop is
    ``simulate_group``'s (``grpo_loss_fn`` + ``simulate_inner_steps``) with the
    per-token log-ratios added to the recorded aux, for the post-clip travel:
    how far a token keeps moving after it crossed the bound, in units of its
    crossing step, against Eq. 37 for a coordinate moved by its own gradient only.
(c) The momentum-aware transforms of ``jgrpo.optim`` (reset per batch, gated
    Adam, trust-region guard) against plain Adam at μ ∈ {4, 8}: how much escape
    each removes, and what it costs in per-batch improvement of the surrogate J
    and of an unclipped importance-sampling estimate of the reward gain.

One compile serves (b) and (c): every run is one member of a ``vmap`` whose
traced numbers choose μ, β1 and the transform. μ: every run makes max(μ)
inner steps and an ``active`` extra arg turns the steps ≥ μ into no-ops
(parameters and optimizer state unchanged). β1: a traced argument of the
Adam transform. The transform: one chain reset ∘ gated Adam ∘ learning rate ∘
guard whose parts are switched off by their extra args (no reset, clip
fraction 0, zero advantages for the guard), which makes it exactly
``optax.adam`` (checked in tests/test_experiments_overshoot.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import overshoot as ov
from experiments.common import Context, finish, markdown_table, new_figure, save_figure

NAME = "overshoot"
TRANSFORMS = ("adam", "reset", "gated", "guard")
_LABELS = {
    "adam": "Adam",
    "reset": "Adam + reset per batch",
    "gated": "gated Adam",
    "guard": "Adam + trust-region guard",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes of one run (frozen; ``_config(scale)`` gives the named ones).

    Attributes:
      model: "tiny" or "small" (``jgrpo.TransformerConfig`` preset), or "tabular" (the exact
        tabular softmax policy: cheap to compile, for tests).
      vocab, prompt_len, completion_len: V, P, T.
      num_prompts, group_size: B prompts per batch, G completions per prompt
        (another G per prompt are sampled as a held-out set for the reward-gain estimate).
      num_batches: consecutive batches, optimizer state carried from one to the next.
      learning_rate: Adam's η (chosen so that the clip bound is reached after a few
        inner steps, not on the first).
      beta2, adam_eps: Adam's β2 and ε.
      mus, beta1s: the grid of part (b).
      transform_mus: μ values of part (c) (a subset of ``mus``).
      closed_T, closed_K: part (a), T = 1..closed_T, k = 0..closed_K-1.
      check_T: T values at which ``simulate_adam_after_clip`` (one compile each) checks
        the traced-T simulation of part (a).
    """

    model: str = "tiny"
    vocab: int = 16
    prompt_len: int = 4
    completion_len: int = 8
    num_prompts: int = 4
    group_size: int = 8
    num_batches: int = 6
    learning_rate: float = 1e-4
    beta2: float = 0.95
    adam_eps: float = 1e-8
    mus: tuple[int, ...] = (1, 2, 4, 8)
    beta1s: tuple[float, ...] = (0.0, 0.5, 0.9, 0.95)
    transform_mus: tuple[int, ...] = (4, 8)
    closed_T: int = 50
    closed_K: int = 5
    check_T: tuple[int, ...] = (1, 7, 50)

    def __post_init__(self) -> None:
        if self.model not in ("tiny", "small", "tabular"):
            raise ValueError(f"Config.model must be 'tiny', 'small' or 'tabular', got {self.model!r}")
        if not set(self.transform_mus) <= set(self.mus):
            raise ValueError(f"Config.transform_mus {self.transform_mus} must be a subset of mus {self.mus}")
        if not all(1 <= T <= self.closed_T for T in self.check_T):
            raise ValueError(f"Config.check_T {self.check_T} must lie in [1, closed_T = {self.closed_T}]")
        if 0.9 not in self.beta1s:
            raise ValueError(f"Config.beta1s must contain 0.9 (the transforms' β1), got {self.beta1s}")


def _config(scale: str) -> Config:
    """The sizes for ``--scale quick`` (CPU, < 2.5 min), ``paper`` (accelerator) and ``test``."""
    if scale == "quick":  # η 1e-4: first crossing after 2 updates in batch 1, 2-6 later (β1 0.9, μ 8)
        return Config()
    if scale == "paper":
        return Config(
            model="small",
            vocab=64,
            prompt_len=8,
            completion_len=32,
            num_prompts=16,
            group_size=16,
            num_batches=12,
            # calibrated on an H200 (η ∈ {0.5, 1, 2, 4}e-5): with β1 0.9 and μ = 8 the first token
            # crosses the bound after 2 updates in the first batch and after 4-6 in later ones
            learning_rate=2e-5,
            closed_T=100,
            closed_K=8,
            check_T=(1, 7, 50, 100),
        )
    if scale == "test":  # tests/test_experiments_overshoot.py: every code path, seconds
        return Config(
            model="tabular",
            num_prompts=2,
            group_size=4,
            completion_len=6,
            num_batches=2,
            learning_rate=0.05,
            mus=(1, 4),
            beta1s=(0.0, 0.9),
            transform_mus=(4,),
            closed_T=8,
            closed_K=3,
            check_T=(8,),
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")


# ----------------------------------------------------------------------------- (a) closed form vs optax


@functools.partial(jax.jit, static_argnames=("max_T", "K"))
def _closed_vs_adam(beta1, beta2, *, max_T: int, K: int):
    """Eqs. 32-37 and the real ``optax.adam`` for every T = 1..max_T, k < K, in one compile.

    The simulation is ``analysis.overshoot.simulate_adam_after_clip``'s (gradient g
    for T steps, then 0) with T a traced value, so that all T share one scan.

    Returns:
      dict: ``closed`` and ``simulated`` [max_T, K], ``limit`` (Eq. 33), ``limit_k`` [K]
      and ``limit_4`` (Eq. 37), ``total_overshoot_inf`` (Σ_k C_{∞,k}, 1000 terms).
    """
    opt = optax.adam(learning_rate=1.0, b1=beta1, b2=beta2, eps=0.0)
    g = jnp.float32(0.37)
    ks = jnp.arange(K)
    Ts = jnp.arange(1, max_T + 1)

    def simulate(T):
        grads = jnp.where(jnp.arange(max_T + K) < T, g, 0.0)

        def step(state, grad):
            u, state = opt.update(grad, state)
            return state, u

        _, u = jax.lax.scan(step, opt.init(g), grads)
        return jax.lax.dynamic_slice(u, (T,), (K,)) / u[T - 1]

    return {
        "closed": jax.vmap(lambda T: ov.c_coefficient(beta1, beta2, T, ks))(Ts.astype(jnp.float32)),
        "simulated": jax.vmap(simulate)(Ts),
        "limit": ov.c_limit(beta1, beta2),
        "limit_k": ov.c_limit(beta1, beta2, ks),
        "limit_4": ov.c_limit(beta1, beta2, 4),
        "total_overshoot_inf": ov.total_overshoot(beta1, beta2, None, num_steps=1000),
    }


def _part_a(cfg: Config) -> dict:
    b1, b2 = 0.9, 0.95
    out = jax.tree.map(np.asarray, _closed_vs_adam(b1, b2, max_T=cfg.closed_T, K=cfg.closed_K))
    closed, sim = out["closed"], out["simulated"]
    # the library's simulator (T static: one compile each) at a few T, as a cross-check of the traced one
    lib = {
        T: np.asarray(ov.simulate_adam_after_clip(jnp.float32(0.37), b1, b2, 0.0, T, cfg.closed_K).c)
        for T in cfg.check_T
    }
    return {
        "beta1": b1,
        "beta2": b2,
        "T": np.arange(1, cfg.closed_T + 1),
        "k": np.arange(cfg.closed_K),
        "closed": closed,
        "simulated": sim,
        "max_abs_err": float(np.max(np.abs(closed - sim))),
        "library_simulator_T": list(cfg.check_T),
        "library_simulator_max_abs_diff": max(float(np.max(np.abs(lib[T] - sim[T - 1]))) for T in cfg.check_T),
        "limit": float(out["limit"]),
        "limit_k": out["limit_k"],
        "limit_4": float(out["limit_4"]),
        "total_overshoot_inf": float(out["total_overshoot_inf"]),
    }


# ----------------------------------------------------------------------------- (b, c) GRPO groups


def _first_mu(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that an update with extra arg ``active=False`` is a no-op.

    The update is 0 and the state is left as it was, so μ inner steps of a
    max(μ)-step scan equal a μ-step run, with μ a traced number (one compile).
    """
    inner = optax.with_extra_args_support(inner)

    def update_fn(updates, state, params=None, *, active=True, **extra_args):
        new_updates, new_state = inner.update(updates, state, params, **extra_args)
        a = jnp.asarray(active, jnp.bool_)
        new_updates = jax.tree.map(lambda u: jnp.where(a, u, jnp.zeros_like(u)), new_updates)
        new_state = jax.tree.map(lambda n, o: jnp.where(a, n, o).astype(o.dtype), new_state, state)
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


class Member(NamedTuple):
    """One run of the vmapped sweep: traced numbers that choose μ, β1, η and the transform."""

    mu: jax.Array  # int32, inner steps per batch
    beta1: jax.Array  # float32
    learning_rate: jax.Array  # float32
    reset: jax.Array  # bool: restart Adam at every new batch (jgrpo.optim.reset_on_new_batch)
    gate: jax.Array  # bool: gate the first moment by 1 - clip fraction (jgrpo.optim.scale_by_gated_adam)
    guard: jax.Array  # bool: backtrack updates that leave the trust region (jgrpo.optim.trust_region_guard)


def _members(rows, learning_rate: float) -> Member:
    """``rows``: (mu, beta1, transform) triples -> a Member of [C] arrays."""
    col = lambda f, dtype: jnp.asarray([f(r) for r in rows], dtype)
    return Member(
        mu=col(lambda r: r[0], jnp.int32),
        beta1=col(lambda r: r[1], jnp.float32),
        learning_rate=jnp.full((len(rows),), learning_rate, jnp.float32),
        reset=col(lambda r: r[2] == "reset", jnp.bool_),
        gate=col(lambda r: r[2] == "gated", jnp.bool_),
        guard=col(lambda r: r[2] == "guard", jnp.bool_),
    )


def _optimizer(m: Member, cfg: Config, spec) -> optax.GradientTransformationExtraArgs:
    """All four optimizers of the experiment as one chain, switched by traced flags (one compile).

    chain(reset_on_new_batch(scale_by_gated_adam(β1, β2, ε)), scale_by_learning_rate(η),
    trust_region_guard(ε_low, ε_up)), wrapped by ``_first_mu``. With every flag off
    (``new_batch`` never true, clip fraction 0, zero advantages for the guard) it is
    ``optax.adam`` exactly: the gate is 1, nothing is reset and the guard accepts the
    full step at its first try. ``_extra_args`` applies the flags.
    """
    return _first_mu(
        optax.chain(
            jgrpo.optim.reset_on_new_batch(jgrpo.optim.scale_by_gated_adam(b1=m.beta1, b2=cfg.beta2, eps=cfg.adam_eps)),
            optax.scale_by_learning_rate(m.learning_rate),
            jgrpo.optim.trust_region_guard(eps_low=spec.eps_low, eps_high=spec.eps_high),
        )
    )


def _extra_args(m: Member, ratio_fn):
    """``simulate_group``'s extra_args_fn for member ``m`` (flags off: plain Adam)."""

    def guarded_ratio_fn(params):
        ratio, adv, mask = ratio_fn(params)
        return ratio, jnp.where(m.guard, adv, jnp.zeros_like(adv)), mask

    def extra_args_fn(t, loss, aux):
        del loss
        return {
            "new_batch": (t == 0) & m.reset,
            "clip_fraction": jnp.where(m.gate, aux["clip_fraction"], 0.0),
            "ratio_fn": guarded_ratio_fn,
            "active": t < m.mu,
        }

    return extra_args_fn


def _with_log_ratio(loss_fn, logprob_fn, batch):
    """``loss_fn`` whose aux also holds the per-token log-ratios log π/π_old ``[B, G, T]`` (no gradient)."""
    tokens, logp_old = jnp.asarray(batch.tokens), jnp.asarray(batch.logp_old)

    def fn(params):
        value, aux = loss_fn(params)
        return value, {**aux, "log_ratio": jax.lax.stop_gradient(logprob_fn(params, tokens) - logp_old)}

    return fn


def _seq_is_gain(logp_new, logp_old, rewards, baseline):
    """Mean over prompts of (1/G) Σ_i (r_i − b)(π(o_i)/π_old(o_i) − 1): IS estimate of E_π r − E_old r."""
    s = jnp.exp(jnp.sum(logp_new - logp_old, axis=-1))  # [B, G] sequence ratio
    return jnp.mean((rewards - baseline[..., None]) * (s - 1.0))


def _make_runner(cfg: Config, logits_fn, logprob3, spec):
    """A jitted ``(params0, members, prompts [N, B, P], keys [N]) -> records [C, N]``, vmapped over members."""
    G, T, S = cfg.group_size, cfg.completion_len, max(cfg.mus)

    def one(params0, m: Member, prompts_NBP, keys_N):
        opt = _optimizer(m, cfg, spec)

        def batch_step(carry, xs):
            params, state = carry
            prompt_BP, key = xs
            target_B = prompt_BP[:, 0]
            smp = jgrpo.sample(logits_fn, params, prompt_BP, key, group_size=2 * G, max_len=T)
            rewards_all = jnp.any(smp.tokens == target_B[:, None, None], axis=-1).astype(jnp.float32)
            tokens = smp.tokens[:, :G]
            rewards, rewards_ev = rewards_all[:, :G], rewards_all[:, G:]

            def logprob_fn(p, tok):
                return logprob3(p, tok, prompt_BP)

            logp_start = logprob_fn(params, smp.tokens)  # training and held-out completions
            logp_old = logp_start[:, :G]  # ratios start at 1 (to float rounding)
            batch = jgrpo.GroupBatch(mask=jnp.ones_like(logp_old), logp_old=logp_old, rewards=rewards, tokens=tokens)
            adv = jgrpo.advantages(spec, batch)
            ratio_fn = ov.group_ratio_fn(logprob_fn, batch, adv)
            # simulate_group's loss (GRPO loss + escape statistics) plus the per-token log-ratios
            traj = ov.simulate_inner_steps(
                _with_log_ratio(ov.grpo_loss_fn(spec, logprob_fn, batch), logprob_fn, batch),
                params,
                opt,
                S,
                opt_state=state,
                extra_args_fn=_extra_args(m, ratio_fn),
            )
            new_params = traj.final_params
            steps = jnp.arange(S)
            # clip fraction after t + 1 updates (t = 0..S-1); steps >= mu are no-ops
            clip_after = jnp.concatenate([traj.aux["clip_fraction"][1:], traj.final_aux["clip_fraction"][None]])
            reach = jnp.min(jnp.where((clip_after > 0) & (steps < m.mu), steps + 1, S + 1))
            esc_after = jnp.concatenate([traj.aux["escape"].frac[1:], traj.final_aux["escape"].frac[None]])
            baseline = jnp.mean(rewards, axis=-1)
            logp_end = logprob_fn(new_params, smp.tokens)
            rec = {
                "escape": traj.final_aux["escape"]._asdict(),
                "escape_during": jnp.max(jnp.where(steps < m.mu, esc_after, 0.0)),
                "updates_to_clip": reach,
                "J_start": -traj.loss[0],
                "J_end": -traj.final_loss,
                "is_gain_train": _seq_is_gain(logp_end[:, :G], logp_old, rewards, baseline),
                "is_gain_heldout": _seq_is_gain(logp_end[:, G:], logp_start[:, G:], rewards_ev, baseline),
                "reward": jnp.mean(rewards),
                "mixed_groups": jnp.mean(jnp.std(rewards, axis=-1) > 0),
                # log-ratio after t = 0..S updates [S+1, B, G, T], advantage sign [B, G]
                "log_ratio": jnp.concatenate([traj.aux["log_ratio"], traj.final_aux["log_ratio"][None]]),
                "adv_sign": jnp.sign(adv),
            }
            return (new_params, traj.final_opt_state), rec

        _, recs = jax.lax.scan(batch_step, (params0, opt.init(params0)), (prompts_NBP, keys_N))
        return recs

    return jax.jit(jax.vmap(one, in_axes=(None, 0, None, None)))


def _post_clip(log_ratio, adv_sign, mu: int, *, eps_low: float, eps_high: float, beta1: float, beta2: float):
    """How far tokens keep moving after they cross the clip bound, in units of their crossing step.

    Per token with A ≠ 0: z_t = sign(A)·log(π/π_old) after t updates; the bound is
    log(1 + ε_up) (A > 0) or −log(1 − ε_low) (A < 0). A token crosses at t* (first
    t ≤ μ with z_t beyond the bound); if t* < μ it has K = μ − t* more updates with
    zero advantage gradient of its own. Measured: Σ (z_μ − z_{t*}) / Σ (z_{t*} − z_{t*−1})
    over those tokens. Prop. 3 for a coordinate whose own gradient is all there is:
    Σ_i step_i · Σ_{k<K_i} (β1/√β2)^{k+1} / Σ_i step_i (Eq. 37, T → ∞: the state is carried).

    Args:
      log_ratio: [N, S+1, B, G, T] after 0..S updates; adv_sign: [N, B, G].

    Returns:
      dict(measured, predicted, tokens): predicted uses the same tokens and K.
    """
    z = np.asarray(log_ratio)[:, : mu + 1] * np.asarray(adv_sign)[:, None, :, :, None]  # [N, mu+1, B, G, T]
    sign = np.broadcast_to(np.asarray(adv_sign)[:, :, :, None], z[:, 0].shape)
    bound = np.where(sign > 0, math.log1p(eps_high), -math.log1p(-eps_low))
    beyond = (z > bound[:, None]) & (sign[:, None] != 0)
    beyond[:, 0] = False
    crossed = beyond.any(axis=1)
    t_star = np.where(crossed, beyond.argmax(axis=1), mu)  # [N, B, G, T]
    sel = crossed & (t_star < mu)
    if not sel.any():
        return {"measured": float("nan"), "predicted": float("nan"), "tokens": 0}
    zs = np.moveaxis(z, 1, -1)[sel]  # [n, mu+1]
    ts = t_star[sel]
    rows = np.arange(len(ts))
    step = zs[rows, ts] - zs[rows, ts - 1]
    post = zs[:, mu] - zs[rows, ts]
    r = beta1 / math.sqrt(beta2)
    carry = np.array([sum(r ** (k + 1) for k in range(mu - t)) for t in ts])
    return {
        "measured": float(post.sum() / step.sum()),
        "predicted": float((step * carry).sum() / step.sum()),
        "tokens": int(sel.sum()),
    }


def _summarise(recs: dict, rows, spec, cfg: Config) -> dict:
    """Per-run statistics over batches of the per-batch records ([C, N] leaves) -> [C] numpy."""
    r = jax.tree.map(np.asarray, recs)
    esc = r["escape"]
    n = r["J_end"].shape[-1]
    se = (lambda x: x.std(-1, ddof=1) / math.sqrt(n)) if n > 1 else (lambda x: np.zeros(x.shape[:-1]))
    excess = np.maximum(esc["max_excess_high"], esc["max_excess_low"])
    post = [
        _post_clip(
            r["log_ratio"][i],
            r["adv_sign"][i],
            mu,
            eps_low=spec.eps_low,
            eps_high=spec.eps_high,
            beta1=b1,
            beta2=cfg.beta2,
        )
        for i, (mu, b1, _) in enumerate(rows)
    ]
    return {
        "escape_frac": esc["frac"].mean(-1),
        "escape_frac_se": se(esc["frac"]),
        "escape_frac_high": esc["frac_high"].mean(-1),
        "escape_frac_low": esc["frac_low"].mean(-1),
        "max_excess_high": esc["max_excess_high"].mean(-1),
        "max_excess_low": esc["max_excess_low"].mean(-1),
        "max_excess": excess.mean(-1),
        "max_excess_se": se(excess),
        "max_excess_worst": excess.max(-1),
        "escape_during": r["escape_during"].mean(-1),
        "updates_to_clip": r["updates_to_clip"],  # [C, N]; max(mu) + 1: no token clipped within the batch
        "post_clip_travel": np.array([p["measured"] for p in post]),
        "post_clip_predicted": np.array([p["predicted"] for p in post]),
        "post_clip_tokens": np.array([p["tokens"] for p in post]),
        "J_gain": (r["J_end"] - r["J_start"]).mean(-1),
        "J_gain_se": se(r["J_end"] - r["J_start"]),
        "is_gain_train": r["is_gain_train"].mean(-1),
        "is_gain_heldout": r["is_gain_heldout"].mean(-1),
        "is_gain_heldout_se": se(r["is_gain_heldout"]),
        "reward_per_batch": r["reward"],
        "mixed_groups": r["mixed_groups"].mean(-1),
        "per_batch_escape_frac": esc["frac"],
        "per_batch_max_excess": excess,
        "per_batch_J_gain": r["J_end"] - r["J_start"],
        "per_batch_is_gain_heldout": r["is_gain_heldout"],
    }


def _setup(cfg: Config, seed: int):
    """(logits_fn, logprob_fn(params, tokens, prompt), params, model description, prompts [N, B, P], keys [N])."""
    rng = np.random.default_rng(seed)  # numpy draws: no compile for eager random ops
    keys = jax.random.split(jax.random.PRNGKey(seed), cfg.num_batches + 1)
    k_model, keys = keys[0], keys[1:]
    P, T = cfg.prompt_len, cfg.completion_len
    if cfg.model == "tabular":
        params = {"logits": jnp.asarray(0.5 * rng.standard_normal((T, cfg.vocab + 1, cfg.vocab)), jnp.float32)}
        logits_fn, logprob3 = jgrpo.policies.tabular_logits_fn(P), jgrpo.policies.tabular_logprob
        desc = {"kind": "tabular", "vocab": cfg.vocab, "max_len": T}
        text = f"tabular softmax policy (V = {cfg.vocab})"
    else:
        preset = jgrpo.TransformerConfig.tiny if cfg.model == "tiny" else jgrpo.TransformerConfig.small
        mcfg = preset(vocab=cfg.vocab, max_len=P + T)
        graphdef, params = jgrpo.make_transformer(k_model, mcfg)
        logits_fn, logprob3 = jgrpo.policies.nnx_logits_fn(graphdef), jgrpo.policies.nnx_logprob_fn(graphdef)
        desc = {"kind": "transformer", **dataclasses.asdict(mcfg)}
        text = f"{cfg.model} NNX transformer ({mcfg.n_layers} layers, d_model {mcfg.d_model}, V = {cfg.vocab})"
    prompts = rng.integers(0, cfg.vocab, size=(cfg.num_batches, cfg.num_prompts, P)).astype(np.int32)
    return logits_fn, logprob3, params, (desc, text), prompts, keys


# ----------------------------------------------------------------------------- run


def run(ctx: Context):
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config):
    t_start = time.perf_counter()
    timings = {}
    spec = jgrpo.methods.get("grpo", beta=0.0)

    ctx.progress(0.02, "(a) closed form vs optax")
    t0 = time.perf_counter()
    a = _part_a(cfg)
    timings["a"] = time.perf_counter() - t0

    logits_fn, logprob3, params0, model, prompts, keys = _setup(cfg, ctx.seed)
    rows = [(mu, b1, "adam") for mu in cfg.mus for b1 in cfg.beta1s]
    rows += [(mu, 0.9, name) for name in TRANSFORMS[1:] for mu in cfg.transform_mus]
    ctx.progress(0.1, f"(b, c) {len(rows)} runs x {cfg.num_batches} batches, one compile")
    t0 = time.perf_counter()
    recs = _make_runner(cfg, logits_fn, logprob3, spec)(params0, _members(rows, cfg.learning_rate), prompts, keys)
    summ = _summarise(recs, rows, spec, cfg)
    timings["bc"] = time.perf_counter() - t0
    results = {}
    for name in TRANSFORMS:
        idx = [i for i, r in enumerate(rows) if r[2] == name]
        results[name] = {
            "mu": [rows[i][0] for i in idx],
            "beta1": [rows[i][1] for i in idx],
            **{k: v[idx] for k, v in summ.items()},
        }
    ctx.progress(0.95, "report")
    timings["total"] = time.perf_counter() - t_start
    return _report(ctx, cfg, model, spec, a, results, timings)


# ----------------------------------------------------------------------------- report


def _pick(res: dict, mu: int, beta1: float = 0.9) -> int:
    for i, (m, b) in enumerate(zip(res["mu"], res["beta1"], strict=True)):
        if m == mu and abs(b - beta1) < 1e-6:
            return i
    raise KeyError((mu, beta1))


def _reach(res: dict, mu: int, beta1: float = 0.9) -> tuple[int, float, int]:
    """(updates to the first clipped token in batch 1, mean over batches that clip, batches that clip)."""
    reach = np.asarray(res["updates_to_clip"][_pick(res, mu, beta1)])
    hit = reach[reach <= mu]
    return int(reach[0]), (float(hit.mean()) if len(hit) else float("nan")), len(hit)


def _pct(new: float, base: float) -> float:
    return 100.0 * (1.0 - new / base) if base > 0 else float("nan")


def _claims(cfg: Config, a: dict, results: dict) -> list:
    adam = results["adam"]
    lim, c4 = a["limit"], a["limit_4"]
    mu_max, mu_min, b1_min = max(cfg.mus), min(cfg.mus), min(cfg.beta1s)
    i9, i0, i9_min = _pick(adam, mu_max), _pick(adam, mu_max, b1_min), _pick(adam, mu_min)
    claims = [
        (
            "Eq. 33: lim_T C_T = β1/√β2 ≈ 0.923 (β1 0.9, β2 0.95; criterion ±5e-4)",
            f"{lim:.4f} (C_{cfg.closed_T} = {a['closed'][-1, 0]:.4f})",
            abs(lim - 0.923) < 5e-4,
        ),
        ("Eq. 37: C_{∞,4} = (β1/√β2)^5 ≈ 0.66 (criterion ±0.015)", f"{c4:.4f}", abs(c4 - 0.66) < 0.015),
        (
            f"Eqs. 32/36 = optax Adam, T = 1..{cfg.closed_T}, k < {cfg.closed_K} (criterion max |diff| < 1e-5)",
            f"{a['max_abs_err']:.1e}",
            a["max_abs_err"] < 1e-5,
        ),
        (
            f"ratios escape the clip region on a real policy (Adam β1 0.9, μ = {mu_max}; criterion > 0)",
            f"{adam['escape_frac'][i9]:.3f} of tokens, max excess {adam['max_excess'][i9]:.3f}",
            bool(adam["escape_frac"][i9] > 0),
        ),
        (
            f"escape grows with μ (β1 0.9, fraction μ = {mu_max} > μ = {mu_min})",
            f"{adam['escape_frac'][i9]:.3f} vs {adam['escape_frac'][i9_min]:.3f}",
            bool(adam["escape_frac"][i9] > adam["escape_frac"][i9_min]),
        ),
        (
            f"clipped tokens keep moving, by more with momentum (μ = {mu_max}: post-clip travel in crossing steps, "
            f"β1 0.9 > β1 {b1_min})",
            f"{adam['post_clip_travel'][i9]:.2f} vs {adam['post_clip_travel'][i0]:.2f} "
            f"(Eq. 37 for a lone coordinate: {adam['post_clip_predicted'][i9]:.2f} vs 0)",
            bool(adam["post_clip_travel"][i9] > adam["post_clip_travel"][i0]),
        ),
        (
            f"(implied by Prop. 3) at a fixed η, momentum increases the escape (μ = {mu_max}, "
            f"fraction β1 0.9 > β1 {b1_min})",
            f"{adam['escape_frac'][i9]:.3f} vs {adam['escape_frac'][i0]:.3f}",
            bool(adam["escape_frac"][i9] > adam["escape_frac"][i0]),
        ),
    ]
    for name in TRANSFORMS[1:]:
        res = results[name]
        for mu in cfg.transform_mus:
            i, ib = _pick(res, mu), _pick(adam, mu)
            base, new = adam["escape_frac"][ib], res["escape_frac"][i]
            diff = np.asarray(adam["per_batch_escape_frac"][ib]) - np.asarray(res["per_batch_escape_frac"][i])
            se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
            dj = -_pct(res["J_gain"][i], adam["J_gain"][ib])
            claims.append(
                (
                    f"{_LABELS[name]} reduces escape at μ = {mu} (criterion: escaped fraction lower than Adam's by "
                    "more than one paired s.e. over batches)",
                    f"{_pct(new, base):+.0f}% ({base:.3f} → {new:.3f}, paired s.e. {se:.3f}); max excess "
                    f"{adam['max_excess'][ib]:.3f} → {res['max_excess'][i]:.3f}; cost: ΔJ/batch "
                    f"{adam['J_gain'][ib]:.4f} → {res['J_gain'][i]:.4f} ({dj:+.0f}%), "
                    f"held-out IS reward gain {adam['is_gain_heldout'][ib]:+.4f} → {res['is_gain_heldout'][i]:+.4f}",
                    bool(float(diff.mean()) > se and float(diff.mean()) > 0),
                )
            )
    return claims


def _tables(cfg: Config, a: dict, results: dict) -> str:
    adam = results["adam"]
    rows = [
        (T, *[a["closed"][T - 1, k] for k in range(cfg.closed_K)])
        for T in (1, 2, 5, 10, 20, 50, 100)
        if T <= cfg.closed_T
    ]
    rows.append(("∞", *[float(x) for x in a["limit_k"]]))
    table_a = markdown_table(["T"] + [f"C_(T,{k})" for k in range(cfg.closed_K)], rows)
    rows = []
    for i, (mu, b1) in enumerate(zip(adam["mu"], adam["beta1"], strict=True)):
        rows.append(
            (
                mu,
                b1,
                f"{adam['escape_frac'][i]:.3f} ± {adam['escape_frac_se'][i]:.3f}",
                adam["max_excess"][i],
                adam["max_excess_worst"][i],
                adam["post_clip_travel"][i],
                adam["post_clip_predicted"][i],
                int(adam["post_clip_tokens"][i]),
                adam["J_gain"][i],
                adam["escape_frac"][i] / adam["J_gain"][i] if adam["J_gain"][i] > 0 else float("nan"),
                adam["is_gain_train"][i],
                adam["is_gain_heldout"][i],
            )
        )
    table_b = markdown_table(
        [
            "μ",
            "β1",
            "escape frac",
            "max excess",
            "worst max excess",
            "post-clip travel",
            "Eq. 37 lone coord.",
            "tokens",
            "ΔJ / batch",
            "escape frac / ΔJ",
            "IS gain (train)",
            "IS gain (held-out)",
        ],
        rows,
    )
    rows = []
    for mu in cfg.transform_mus:
        for name in TRANSFORMS:
            res = results[name]
            i = _pick(res, mu)
            rows.append(
                (
                    mu,
                    _LABELS[name],
                    f"{res['escape_frac'][i]:.3f} ± {res['escape_frac_se'][i]:.3f}",
                    res["max_excess"][i],
                    res["max_excess_worst"][i],
                    res["post_clip_travel"][i],
                    f"{res['J_gain'][i]:.4f} ± {res['J_gain_se'][i]:.4f}",
                    res["is_gain_train"][i],
                    f"{res['is_gain_heldout'][i]:+.4f} ± {res['is_gain_heldout_se'][i]:.4f}",
                )
            )
    table_c = markdown_table(
        [
            "μ",
            "optimizer (β1 0.9)",
            "escape frac",
            "max excess",
            "worst max excess",
            "post-clip travel",
            "ΔJ / batch",
            "IS gain (train)",
            "IS gain (held-out)",
        ],
        rows,
    )
    return (
        f"### (a) C_(T,k), β1 0.9, β2 0.95\n\n{table_a}\n"
        f"### (b) escape vs μ and β1 (Adam, state carried over {cfg.num_batches} batches; mean ± s.e. over "
        f"batches)\n\n{table_b}\n"
        f"### (c) momentum-aware transforms (mean ± s.e. over batches)\n\n{table_c}"
    )


def _figure(cfg: Config, a: dict, results: dict, spec, path) -> None:
    adam = results["adam"]
    fig, axes = new_figure(ncols=3, nrows=2, size=(4.8, 3.6))
    ax = axes[0, 0]
    for k in range(cfg.closed_K):
        (line,) = ax.plot(a["T"], a["closed"][:, k], lw=1.2, label=f"k = {k}")
        ax.plot(a["T"], a["simulated"][:, k], "o", ms=2.2, color=line.get_color())
        ax.axhline(float(a["limit_k"][k]), color=line.get_color(), ls=":", lw=0.8)
    ax.axhline(a["limit"], color="k", ls="--", lw=1, label=f"β1/√β2 = {a['limit']:.3f}")
    ax.set(
        xlabel="T (gradient steps before the clip)", ylabel="C_(T,k)", title="(a) Eq. 36 (lines) vs optax Adam (dots)"
    )
    ax.legend(fontsize=7, ncol=2)
    for col, key, ylabel in (
        (1, "escape_frac", "escaped token fraction"),
        (2, "max_excess", "max excess beyond bound"),
    ):
        ax = axes[0, col]
        for b1 in cfg.beta1s:
            ys = [adam[key][_pick(adam, mu, b1)] for mu in cfg.mus]
            ax.plot(cfg.mus, ys, "o-", label=f"β1 = {b1}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(cfg.mus), [str(m) for m in cfg.mus])
        ax.set(
            xlabel="μ (inner steps per batch)",
            ylabel=ylabel,
            title=f"(b) Adam η {cfg.learning_rate:g}, end of batch (ε = {spec.eps_high})",
        )
        ax.legend(fontsize=7)
    ax = axes[1, 0]
    for mu in [m for m in cfg.mus if m > 1]:
        meas = [adam["post_clip_travel"][_pick(adam, mu, b1)] for b1 in cfg.beta1s]
        pred = [adam["post_clip_predicted"][_pick(adam, mu, b1)] for b1 in cfg.beta1s]
        (line,) = ax.plot(cfg.beta1s, meas, "o-", label=f"μ = {mu} measured")
        ax.plot(cfg.beta1s, pred, "--", color=line.get_color(), lw=1)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(
        xlabel="β1",
        ylabel="travel after crossing / crossing step",
        title="(b) post-clip travel (dashed: Eq. 37, lone coord.)",
    )
    ax.legend(fontsize=7)
    x = np.arange(len(TRANSFORMS))
    width = 0.8 / len(cfg.transform_mus)
    for col, key, err, ylabel, title in (
        (1, "escape_frac", "escape_frac_se", "escaped token fraction", "(c) escape, β1 0.9"),
        (2, "is_gain_heldout", "is_gain_heldout_se", "held-out IS reward gain / batch", "(c) cost: reward gain"),
    ):
        ax = axes[1, col]
        for j, mu in enumerate(cfg.transform_mus):
            vals = [results[n][key][_pick(results[n], mu)] for n in TRANSFORMS]
            errs = [results[n][err][_pick(results[n], mu)] for n in TRANSFORMS]
            ax.bar(x + j * width, vals, width, yerr=errs, capsize=2, label=f"μ = {mu}")
        ax.set_xticks(x + width * (len(cfg.transform_mus) - 1) / 2, list(TRANSFORMS))
        ax.axhline(0, color="k", lw=0.6)
        ax.set(ylabel=ylabel, title=title)
        ax.legend(fontsize=7)
    fig.subplots_adjust(hspace=0.4, wspace=0.3)
    save_figure(fig, path)


def _report(ctx, cfg, model, spec, a, results, timings):
    adam = results["adam"]
    claims = _claims(cfg, a, results)
    table = _tables(cfg, a, results)
    _figure(cfg, a, results, spec, ctx.out / "overshoot.png")
    first, mean_reach, n_hit = _reach(adam, max(cfg.mus))
    result = {
        "config": dataclasses.asdict(cfg),
        "model": model[0],
        "method": {"name": "grpo", "beta": spec.beta, "eps_low": spec.eps_low, "eps_high": spec.eps_high},
        "closed_form": a,
        "escape": results,
        "updates_to_first_clip": {"first_batch": first, "mean": mean_reach, "batches_that_clip": n_hit},
        "claims": [{"claim": c, "measured": m, "reproduced": r} for c, m, r in claims],
        "timings_s": timings,
    }
    notes = (
        f"Policy: {model[1]}; "
        f"B = {cfg.num_prompts} prompts × G = {cfg.group_size} completions of T = {cfg.completion_len} tokens per "
        f"batch (plus G held-out completions per prompt); reward 1 iff the completion contains the prompt's first "
        f"token; {cfg.num_batches} consecutive batches, each sampled from the current policy, logp_old = the "
        f"current policy's (ratios start at 1), optimizer state carried from batch to batch. GRPO (β = 0, "
        f"ε_low = {spec.eps_low}, ε_up = {spec.eps_high}); Adam η = {cfg.learning_rate:g}, β2 = {cfg.beta2}, "
        f"ε = {cfg.adam_eps:g}. η is chosen so that the bound is reached after a few updates: with β1 0.9, μ = "
        f"{max(cfg.mus)}, the first token crosses it after {first} updates in the first batch and after "
        f"{mean_reach:.1f} on average ({n_hit} of {cfg.num_batches} batches cross).\n\n"
        "Escape: tokens with A > 0 and ratio > 1 + ε_up or A < 0 and ratio < 1 − ε_low, after the batch's last "
        "update (fraction of all completion tokens); max excess: the largest distance beyond the bound; mean over "
        "batches ('worst': max). Post-clip travel: Σ(z_μ − z_t*)/Σ(z_t* − z_t*−1) over the tokens that cross at "
        "t* < μ, z = sign(A)·log ratio: how far a token moves after its own advantage gradient vanished, in units "
        "of its crossing step; Eq. 37 gives Σ_{k<μ−t*} (β1/√β2)^{k+1} for a coordinate moved only by its own "
        "gradient. ΔJ / batch: surrogate J after the batch minus before (J = 0 at ratio 1). IS gain: (1/G) Σ_i "
        "(r_i − b)(π(o_i)/π_old(o_i) − 1), sequence ratio, b = the training group's mean reward — on the training "
        "group and on G fresh completions of the same prompts (held-out: an unbiased estimate of the batch's "
        "expected-reward gain).\n\n"
        f"Runtime: {timings['total']:.0f} s ((a) {timings['a']:.0f} s, (b, c) {timings['bc']:.0f} s)."
    )
    return finish(
        ctx,
        NAME,
        "Prop. 3/7: momentum overshoot past the clip region",
        result,
        table,
        claims,
        "overshoot.png",
        notes=notes,
    )
