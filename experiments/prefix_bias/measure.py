"""The prefix_bias experiment's measurements (no I/O).

(A) :func:`part_a`: every preset's exact coefficients on rollouts, W_agg on the nodes shared by a
whole group against the float64 reference. (B) :func:`part_b`: on the prefix-tree task, the first-order
change of the expected length along each method's shared-prefix gradient per unit of reward gain.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
from analysis import prefix
from experiments.prefix_bias.config import CONTROL, Config
from experiments.prefix_bias.reference import w_full_float64
from experiments.prefix_bias.task import EOS, control_advantages, reward, specs, tree_task_policy
from jgrpo.policies import tree_logprob, tree_sample

# ----------------------------------------------------------------------------- (B) the shared-prefix effect


def make_measure(cfg: Config):
    """``(params, key) -> {method: {stat: [groups]}}, exact`` as one jitted function (one compile)."""
    named = specs(cfg.methods)
    t_len, a = cfg.length, cfg.answer_pos

    def exp_len(p):
        return prefix.tree_expectation(p, lambda s, m: jnp.sum(m, -1), eos=EOS, length=t_len)

    def exp_reward(p):
        return prefix.tree_expectation(p, lambda s, m: reward(s, cfg), eos=EOS, length=t_len)

    def exp_len_correct(p):
        return prefix.tree_expectation(p, lambda s, m: jnp.sum(m, -1) * reward(s, cfg), eos=EOS, length=t_len)

    @jax.jit
    def measure(params, key):
        directions = jax.tree.map(
            lambda x, y: jnp.stack([x, y]), jax.grad(exp_len)(params), jax.grad(exp_reward)(params)
        )
        s = tree_sample(params, key, (cfg.groups, cfg.tree_group_size), max_len=t_len, eos_id=EOS, pad_id=EOS)
        logp = tree_logprob(params, s.tokens)
        rewards = reward(s.tokens, cfg)
        batch = jgrpo.GroupBatch(mask=s.mask, logp_old=logp, rewards=rewards, tokens=s.tokens)
        tree = prefix.prefix_tree(s.tokens, s.mask)
        pos = jnp.arange(t_len)
        subsets = jnp.stack([(pos < a) & tree.shared, (pos > a) & tree.shared])
        _, dlogp = prefix.directional_logp(tree_logprob, params, s.tokens, directions)  # shared by every method
        out = {}
        for name, spec in named:
            b = batch
            if name == CONTROL:
                b = dataclasses.replace(batch, advantages=control_advantages(rewards, s.mask))
            e = prefix.effects_of(prefix.coefficients(spec, logp, b), dlogp, tree, subsets)
            out[name] = {
                "shared_len": e.shared[0],
                "total_len": e.total[0],
                "total_reward": e.total[1],
                "shared_reward": e.shared[1],
                "preamble_len": e.subsets[0, 0],
                "after_answer_len": e.subsets[1, 0],
            }
        e_r, e_l, e_lc = exp_reward(params), exp_len(params), exp_len_correct(params)
        stats = {
            "expected_reward": e_r,
            "expected_length": e_l,
            "length_correct": e_lc / e_r,
            "length_incorrect": (e_l - e_lc) / (1.0 - e_r),
            "shared_token_fraction": jnp.sum(tree.shared * s.mask) / jnp.sum(s.mask),
            "full_group_prefix_depth": jnp.mean(jnp.sum(jnp.all(tree.node_size == cfg.tree_group_size, -2), -1)),
            "mixed_groups": jnp.mean((jnp.ptp(rewards, axis=-1) > 0).astype(jnp.float32)),
            "sample_length": jnp.mean(jnp.sum(s.mask, -1)),
        }
        return out, stats

    return measure


def part_b(cfg: Config, seed: int, progress=lambda f, m: None) -> tuple[dict, dict]:
    """Every accuracy regime × seed: ``({method: {p: {statistic: [seeds]}}}, {p: [policy statistics per seed]})``.

    The statistics per seed are means over the groups divided by the whole update's reward gain
    (NaN when it gains none).
    """
    measure = make_measure(cfg)
    per = {m: {p: {} for p in cfg.accuracies} for m in cfg.methods}
    stats = {p: [] for p in cfg.accuracies}
    n = len(cfg.accuracies) * cfg.seeds
    k = 0
    for p in cfg.accuracies:
        for s in range(cfg.seeds):
            policy_seed = 1000 * seed + s  # the same policies in every regime (only the answer row differs)
            params = tree_task_policy(policy_seed, cfg, p)
            key = jax.random.fold_in(jax.random.key(seed), 7919 * s + int(round(1000 * p)))
            out, st = jax.device_get(measure(params, key))
            for m in cfg.methods:
                rec = {key_: np.asarray(v, np.float64) for key_, v in out[m].items()}
                gain = rec["total_reward"].mean()
                summary = {
                    "reward_gain": gain,
                    "shared_len_per_gain": rec["shared_len"].mean() / gain if gain > 0 else math.nan,
                    "total_len_per_gain": rec["total_len"].mean() / gain if gain > 0 else math.nan,
                    "preamble_len_per_gain": rec["preamble_len"].mean() / gain if gain > 0 else math.nan,
                    "after_answer_len_per_gain": rec["after_answer_len"].mean() / gain if gain > 0 else math.nan,
                    "shared_len_sd_per_gain": rec["shared_len"].std() / gain if gain > 0 else math.nan,
                }
                for key_, v in summary.items():
                    per[m][p].setdefault(key_, []).append(float(v))
            stats[p].append({key_: float(v) for key_, v in st.items()})
            k += 1
            progress(0.45 + 0.45 * k / n, f"(B) p = {p}, seed {s + 1}/{cfg.seeds}")
    return per, stats


# ----------------------------------------------------------------------------- (A) verification


def verify_specs(cfg: Config):
    """``(name, debiased, spec)`` of part (A): every preset (β = 0), gcpo's other reading, their debiased forms."""
    out = []
    for name in cfg.verify_presets or jgrpo.methods.names():
        out.append((name, False, jgrpo.methods.get(name, beta=0.0)))
        if name == "gcpo":  # the other reading of Table 1's GCPO: its sequence-ratio term once per completion
            out.append(("gcpo_once", False, jgrpo.methods.get(name, beta=0.0, sequence_terms="once")))
        if name != "gmpo":  # gmpo's 1/|o_i| is inside its geometric mean (prefix_debias rejects it)
            out.append((name, True, jgrpo.methods.get(name, beta=0.0, prefix_debias=True)))
    return out


def rollouts(cfg: Config, scale: str, seed: int):
    """``(batch, logprob_fn, params, prompt, source)`` of part (A): the warmed-up transformer's, a checkpoint's
    (Countdown) or the prefix-tree policy's; ``logprob_fn(params, tokens, prompt)`` is the policy protocol."""
    if cfg.verify_policy == "checkpoint":
        import jgrpo.models as M
        from experiments.shared import checkpoint

        ck = checkpoint.load(cfg.model)
        r = checkpoint.rollouts(
            ck, jax.random.key(seed + 101), prompts=cfg.prompts, group_size=cfg.group_size, max_len=cfg.max_len,
            seed=seed,
        )  # fmt: skip
        logprob_fn = M.logprob_fn(ck.model_fn)
        return r.batch, logprob_fn, ck.params, r.prompt, f"the {ck.description} on Countdown prompts"
    if cfg.verify_policy == "transformer":
        from experiments.shared import policy

        graphdef, params, setup = policy.warm_policy(scale, seed)
        batch, prompt, logprob_fn = policy.rollouts(
            graphdef, params, setup, jax.random.key(seed + 101), prompts=cfg.prompts, group_size=cfg.group_size
        )
        return batch, logprob_fn, params, prompt, "the warmed-up tiny transformer on the arithmetic task"
    params = tree_task_policy(seed, cfg, 0.5)
    s = tree_sample(params, jax.random.key(seed + 101), (cfg.prompts, cfg.group_size), max_len=cfg.length, eos_id=EOS)
    batch = jgrpo.GroupBatch(
        mask=s.mask, logp_old=tree_logprob(params, s.tokens), rewards=reward(s.tokens, cfg), tokens=s.tokens
    )
    return batch, tree_logprob, params, None, "the prefix-tree policy of part (B) at p = 0.5"


def part_a(cfg: Config, scale: str, seed: int, progress=lambda f, m: None) -> tuple[dict, dict]:
    """``({preset: W_agg statistics and float64 errors}, rollout statistics)`` (``scale`` picks the warm-up)."""
    batch, logprob_fn, params, prompt, source = rollouts(cfg, scale, seed)
    tokens = jnp.asarray(batch.tokens)
    tree = prefix.prefix_tree(tokens, batch.mask)
    g = batch.mask.shape[-2]
    full = np.asarray(tree.representative & (tree.node_size == g))  # nodes shared by the whole group
    shared_rep = np.asarray(tree.representative & tree.shared)
    named = verify_specs(cfg)

    @jax.jit
    def measure(params, batch, prompt):
        # every preset's exact coefficients, then one vmapped VJP for the total and shared-prefix gradient norms
        logp, vjp = jax.vjp(lambda p: logprob_fn(p, batch.tokens, prompt), params)
        coefs = jnp.stack([prefix.coefficients(spec, logp, batch) for _, _, spec in named])
        shared = prefix.prefix_tree(batch.tokens, batch.mask).shared.astype(coefs.dtype)
        cot = jnp.stack([coefs, coefs * shared], axis=1).reshape((-1,) + coefs.shape[1:])
        return coefs, jax.vmap(lambda x: prefix.tree_norm(vjp(x)[0]))(cot)

    progress(0.3, "(A) coefficients and vmapped VJP")
    coefs, norms = measure(params, batch, prompt)
    norms = np.asarray(norms).reshape(len(named), 2)
    rewards = np.asarray(batch.rewards)
    lengths = np.asarray(batch.mask).sum(-1)
    group_of = np.nonzero(full)[0]  # the group index of every fully shared node
    result = {}
    for k, (name, debias, _) in enumerate(named):
        c = np.asarray(coefs[k])
        w = np.asarray(prefix.w_agg(jnp.asarray(c), tree))
        scale = float(np.abs(c).max())
        rec = {
            "w_agg_full_mean_abs": float(np.abs(w[full]).mean()) if full.any() else 0.0,
            "w_agg_shared_mean_abs": float(np.abs(w[shared_rep]).mean()) if shared_rep.any() else 0.0,
            "grad_norm_total": float(norms[k, 0]),
            "grad_norm_shared": float(norms[k, 1]),
            "shared_fraction": float(norms[k, 1] / norms[k, 0]) if norms[k, 0] else 0.0,
            "max_abs_coefficient": scale,
        }
        rec["w_agg_full_rel"] = rec["w_agg_full_mean_abs"] / scale if scale else 0.0
        if name in ("grpo", "gspo", "dr_grpo", "dapo", "gcpo", "gcpo_once") or debias:
            ref = w_full_float64("zero" if debias else name, rewards, lengths)[group_of]
            err = np.abs(w[full].astype(np.float64) - ref)
            rec["w_full_float64_max_err_rel"] = float(err.max() / scale) if full.any() and scale else 0.0
            rec["w_full_float64_mean_abs"] = float(np.abs(ref).mean()) if full.any() else 0.0
        result[f"{name}{'+debias' if debias else ''}"] = rec
    stats = {
        "source": source,
        "prompts": int(rewards.shape[0]),
        "group_size": int(g),
        "accuracy": float(rewards.mean()),
        "mixed_groups": float(np.mean(rewards.max(-1) > rewards.min(-1))),
        "length_correct": float(lengths[rewards > 0].mean()) if (rewards > 0).any() else float("nan"),
        "length_incorrect": float(lengths[rewards == 0].mean()) if (rewards == 0).any() else float("nan"),
        "fully_shared_nodes": int(full.sum()),
        "shared_nodes": int(shared_rep.sum()),
    }
    return result, stats


class Measurement(NamedTuple):
    """Everything the claims and the report read.

    Attributes:
      a: ``{preset (or preset+debias): W_agg statistics}`` of part (A); a_stats: its rollouts.
      per: ``{method: {p: {statistic: [seeds]}}}`` of part (B); b_stats: ``{p: [policy statistics per seed]}``.
      t_a, t_b: seconds.
    """

    a: dict
    a_stats: dict
    per: dict
    b_stats: dict
    t_a: float
    t_b: float


def measure(cfg: Config, scale: str, seed: int, progress=lambda f, m: None) -> Measurement:
    """Part (A), then part (B)."""
    t0 = time.perf_counter()
    progress(0.02, "(A) rollouts")
    a, a_stats = part_a(cfg, scale, seed, progress)
    t_a = time.perf_counter() - t0
    progress(0.45, "(B) prefix-tree policy")
    t1 = time.perf_counter()
    per, b_stats = part_b(cfg, seed, progress)
    return Measurement(a, a_stats, per, b_stats, t_a, time.perf_counter() - t1)
