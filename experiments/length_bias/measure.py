"""The length_bias experiment's measurements (no I/O): exact drift at a fixed policy, training, matched progress.

(1) :func:`make_drift`: D_m = <∇E[|o| | incorrect], ḡ_m> / <∇E[r], ḡ_m> along each method's mean
first-step gradient, exact. (2) :func:`make_trainer`: every optimizer × method × seed in one
vmapped program, the exact E[r], E[|o| | correct] and E[|o| | incorrect] at every step.
:func:`measure` runs both and reads the runs at matched progress.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import prefix
from experiments.length_bias.config import LEVELS, MIN_GAIN, OPTIMIZERS, Config
from experiments.length_bias.task import batch_for, exact_metrics, initial_policy, sample_batch, specs, transitions
from experiments.shared import progress as matching
from experiments.shared.tasks import one_hot_sum
from jgrpo.policies import tabular_prompt_logprob

# ----------------------------------------------------------------------------- (1) exact drift


def make_drift(cfg: Config):
    """``(params, key) -> {method: {"incorrect", "reward", "correct"}: [groups]}`` directional derivatives."""
    named = specs(cfg.methods)
    trans = transitions(cfg)

    def functionals(p):
        m = exact_metrics(p, trans, cfg.length)
        return m["length_incorrect"], m["reward"], m["length_correct"]

    @jax.jit
    def drift(params, key):
        jac = jax.jacrev(lambda p: jnp.stack(functionals(p)))(params)  # leaves [3, ...]
        batch, prompt = sample_batch(cfg, params, trans, key, cfg.drift_groups)

        # shared by every method
        logp, dlogp = prefix.directional_logp(tabular_prompt_logprob, params, batch.tokens, jac, prompt=prompt)
        tree = prefix.prefix_tree(batch.tokens, batch.mask)
        out = {}
        for name, spec in named:
            e = prefix.effects_of(prefix.coefficients(spec, logp, batch_for(name, batch)), dlogp, tree)
            out[name] = {"incorrect": e.total[0], "reward": e.total[1], "correct": e.total[2]}
        return out

    return drift


def drift_summary(out) -> dict[str, float]:
    """Means over the groups: the reward gain and D per unit of it (NaN when the update gains no reward)."""
    inc, rew, cor = (np.asarray(out[k], np.float64).mean() for k in ("incorrect", "reward", "correct"))
    ok = rew > 0
    return {
        "reward_gain": float(rew),
        "incorrect_per_gain": float(inc / rew) if ok else math.nan,
        "correct_per_gain": float(cor / rew) if ok else math.nan,
    }


# ----------------------------------------------------------------------------- (2) training


def make_trainer(cfg: Config):
    """``(params0, sel [M], adam, key) -> (records [N], checkpoints [C, ...])`` per run; vmapped, one compile.

    ``sel`` is a one-hot selector over ``cfg.methods`` (the loss is Σ_m sel_m loss_m, so every method
    shares one program); ``adam`` (a traced bool) picks Adam (state carried across outer steps) or
    normalised gradient descent θ ← θ − η g/||g|| (a step of fixed length along the gradient direction).
    """
    named = specs(cfg.methods)
    trans = transitions(cfg)
    opt = optax.adam(cfg.learning_rate)
    ckpts = jnp.asarray(cfg.checkpoints, jnp.int32)

    def one_run(params0, sel, adam, key):
        def outer(carry, xs):
            params, state, buf = carry
            n, key_n = xs
            batch, prompt = sample_batch(cfg, params, trans, key_n, cfg.prompts_per_step)
            batches = [batch_for(name, batch) for name, _ in named]

            def loss_fn(p):
                logp = tabular_prompt_logprob(p, batch.tokens, prompt)
                return one_hot_sum(
                    sel, [jgrpo.loss(spec, logp, b)[0] for (_, spec), b in zip(named, batches, strict=True)]
                )

            def inner(c, _):
                p, s = c
                g = jax.grad(loss_fn)(p)
                u_adam, s = opt.update(g, s, p)
                scale = cfg.ngd_learning_rate / jnp.maximum(optax.tree.norm(g), 1e-30)
                u = jax.tree.map(lambda a, x: jnp.where(adam, a, -scale * x), u_adam, g)
                return (optax.apply_updates(p, u), s), None

            hit = ckpts == n
            buf = jax.tree.map(lambda b, x: jnp.where(hit.reshape((-1,) + (1,) * x.ndim), x[None], b), buf, params)
            rec = exact_metrics(params, trans, cfg.length)
            lengths = jnp.sum(batch.mask, -1)
            rec["batch_reward"] = jnp.mean(batch.rewards)
            rec["batch_length"] = jnp.mean(lengths)
            (params, state), _ = jax.lax.scan(inner, (params, state), None, length=cfg.inner_steps)
            return (params, state, buf), rec

        buf0 = jax.tree.map(lambda x: jnp.zeros((len(cfg.checkpoints),) + x.shape, x.dtype), params0)
        keys = jax.random.split(key, cfg.outer_steps)
        (_, _, buf), recs = jax.lax.scan(outer, (params0, opt.init(params0), buf0), (jnp.arange(cfg.outer_steps), keys))
        return recs, buf

    return jax.jit(jax.vmap(one_run))


def matched_progress(reward, length_incorrect, other_reward, other_length, levels: int = LEVELS):
    """Mean over ``levels`` reward levels of (length_incorrect − other_length) at the first step each run reaches
    the level, and the common gain (``experiments.shared.progress.matched_progress``, ``MIN_GAIN``)."""
    return matching.matched_progress(
        reward, length_incorrect, other_reward, other_length, levels=levels, min_gain=MIN_GAIN
    )


class Measurement(NamedTuple):
    """Everything the claims and the report read.

    Attributes:
      series: ``{metric: [S, O, M, N]}`` exact series per seed, optimizer (``OPTIMIZERS``), method and step.
      drifts: ``{method: [checkpoint][seed] -> drift_summary}``.
      drift0: ``{method: [seeds]}`` D at θ_0.
      differences: ``{optimizer: {method: {"length_incorrect" | "length_correct": [seeds]}}}`` matched-progress
        differences method − dr_grpo (NaN: no progress ≥ ``MIN_GAIN``), every method but dr_grpo.
      gains: ``{optimizer: [seeds]}`` the common E[r] gain of grpo and dr_grpo.
      t_train, t_drift: seconds.
    """

    series: dict
    drifts: dict
    drift0: dict
    differences: dict
    gains: dict
    t_train: float
    t_drift: float

    @property
    def matched(self) -> dict:
        """``{optimizer: [seeds]}``: E[|o| | incorrect]_grpo − E[|o| | incorrect]_dr_grpo at matched progress."""
        return {opt: d["grpo"]["length_incorrect"] for opt, d in self.differences.items()}


def measure(cfg: Config, seed: int, progress=lambda f, m: None) -> Measurement:
    """Training (every optimizer × method × seed, one program), then the exact drift at each seed's checkpoints."""
    t0 = time.perf_counter()
    methods = cfg.methods
    m, o = len(methods), len(OPTIMIZERS)
    seeds = [1000 * seed + s for s in range(cfg.seeds)]
    params0 = [initial_policy(s, cfg) for s in seeds]
    stack = jax.tree.map(lambda *x: jnp.stack(x), *params0)
    # run r = (seed, optimizer, method) in C order; the same policy and keys for every (optimizer, method) of a seed
    runs_params = jax.tree.map(lambda x: jnp.repeat(x, o * m, axis=0), stack)
    sel = jnp.tile(jnp.eye(m, dtype=jnp.float32), (cfg.seeds * o, 1))
    adam = jnp.tile(jnp.repeat(jnp.asarray([opt == "adam" for opt, _ in OPTIMIZERS]), m), cfg.seeds)
    base = jax.random.key(seed)
    keys = jnp.repeat(jax.random.split(jax.random.fold_in(base, 1), cfg.seeds), o * m, axis=0)
    progress(0.02, f"training {o * m * cfg.seeds} runs x {cfg.outer_steps} steps (one compile)")
    recs, ckpts = jax.device_get(make_trainer(cfg)(runs_params, sel, adam, keys))
    t_train = time.perf_counter() - t0
    series = {
        k: np.asarray(v, np.float64).reshape((cfg.seeds, o, m) + np.shape(v)[1:]) for k, v in recs.items()
    }  # [S, O, M, N, ...]
    ckpts = jax.tree.map(lambda x: x.reshape((cfg.seeds, o, m) + x.shape[1:]), ckpts)
    progress(0.6, "exact drift")
    t1 = time.perf_counter()
    drift = make_drift(cfg)
    i_dr = methods.index("dr_grpo")
    drifts = {m_: [[None] * cfg.seeds for _ in cfg.checkpoints] for m_ in methods}
    for s in range(cfg.seeds):
        for c in range(len(cfg.checkpoints)):
            p = jax.tree.map(lambda x, s=s, c=c: jnp.asarray(x[s, 0, i_dr, c]), ckpts)  # the Adam dr_grpo run
            key = jax.random.fold_in(jax.random.fold_in(base, 2), 1000 * s + c)
            out = jax.device_get(drift(p, key))
            for name in methods:
                drifts[name][c][s] = drift_summary(out[name])
        progress(0.6 + 0.3 * (s + 1) / cfg.seeds, f"exact drift, seed {s + 1}/{cfg.seeds}")
    t_drift = time.perf_counter() - t1
    drift0 = {name: [drifts[name][0][s]["incorrect_per_gain"] for s in range(cfg.seeds)] for name in methods}

    def matched_for(k_opt, method, key):
        out = [
            matched_progress(
                series["reward"][s, k_opt, methods.index(method)],
                series[key][s, k_opt, methods.index(method)],
                series["reward"][s, k_opt, i_dr],
                series[key][s, k_opt, i_dr],
            )
            for s in range(cfg.seeds)
        ]
        return [d for d, _ in out], [g for _, g in out]

    differences, gains = {}, {}
    for k_opt, (opt, _) in enumerate(OPTIMIZERS):
        gains[opt] = matched_for(k_opt, "grpo", "length_incorrect")[1]
        differences[opt] = {
            method: {key: matched_for(k_opt, method, key)[0] for key in ("length_incorrect", "length_correct")}
            for method in methods
            if method != "dr_grpo"
        }
    return Measurement(series, drifts, drift0, differences, gains, t_train, t_drift)
