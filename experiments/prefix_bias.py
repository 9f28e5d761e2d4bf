"""Prop. 1 on real rollouts: W_agg on shared prefixes per preset, with and without prefix debiasing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
from analysis import prefix
from experiments.common import Context, finish, markdown_table, new_figure, save_figure
from experiments.policy import rollouts, warm_policy


def _specs():
    out = []
    for name in jgrpo.methods.names():
        # beta = 0 isolates the policy term of Eq. 1, which Prop. 1 is about.
        out.append((name, False, jgrpo.methods.get(name, beta=0.0)))
        if name != "gmpo":  # gmpo's 1/|o_i| is inside its geometric mean (prefix_debias rejects it)
            out.append((name, True, jgrpo.methods.get(name, beta=0.0, prefix_debias=True)))
    return out


def run(ctx: Context):
    ctx.progress(0.02, "warm-up")
    graphdef, params, setup = warm_policy(ctx.scale, ctx.seed)
    ctx.progress(0.3, "rollouts")
    prompts, group = (8, 8) if ctx.quick else (64, 16)
    batch, _, logprob_fn = rollouts(
        graphdef, params, setup, jax.random.key(ctx.seed + 101), prompts=prompts, group_size=group
    )
    tokens = jnp.asarray(batch.tokens)
    tree = prefix.prefix_tree(tokens, batch.mask)
    g = batch.mask.shape[-2]
    full = np.asarray(tree.representative & (tree.node_size == g))  # nodes shared by the whole group
    shared_rep = np.asarray(tree.representative & tree.shared)
    logp = logprob_fn(params, tokens)
    coef_fn = jax.jit(prefix.coefficients, static_argnums=0)
    specs = _specs()
    coefs = []
    for k, (name, _debias, spec) in enumerate(specs):
        coefs.append(coef_fn(spec, logp, batch))
        ctx.progress(0.3 + 0.3 * (k + 1) / len(specs), f"coefficients {name}")
    # One forward pass, one vmapped VJP for every (preset, subset): total and shared parts of grad J.
    ctx.progress(0.62, "vmapped VJP")
    _, vjp = jax.vjp(lambda p: logprob_fn(p, tokens), params)
    shared = tree.shared.astype(jnp.float32)
    cot = jnp.stack([c * m for c in coefs for m in (jnp.ones_like(shared), shared)])
    norms = jax.jit(lambda ct: jax.vmap(lambda x: prefix.tree_norm(vjp(x)[0]))(ct))(cot)
    norms = np.asarray(norms).reshape(len(specs), 2)
    rows, result = [], {}
    for k, (name, debias, _) in enumerate(specs):
        c = np.asarray(coefs[k])
        w = np.asarray(prefix.w_agg(jnp.asarray(c), tree))
        scale = float(np.abs(c).max())
        w_full = float(np.abs(w[full]).mean()) if full.any() else 0.0
        w_shared = float(np.abs(w[shared_rep]).mean()) if shared_rep.any() else 0.0
        rec = {
            "w_agg_full_mean_abs": w_full,
            "w_agg_full_rel": w_full / scale if scale else 0.0,
            "w_agg_shared_mean_abs": w_shared,
            "grad_norm_total": float(norms[k, 0]),
            "grad_norm_shared": float(norms[k, 1]),
            "shared_fraction": float(norms[k, 1] / norms[k, 0]) if norms[k, 0] else 0.0,
            "max_abs_coefficient": scale,
        }
        result[f"{name}{'+debias' if debias else ''}"] = rec
        rows.append((name, "yes" if debias else "no", rec["w_agg_full_rel"], w_shared, rec["shared_fraction"]))
    lengths = np.asarray(batch.mask).sum(-1)
    rewards = np.asarray(batch.rewards)
    stats = {
        "prompts": prompts,
        "group_size": group,
        "accuracy": float(rewards.mean()),
        "mixed_groups": float(np.mean(rewards.max(-1) > rewards.min(-1))),
        "length_correct": float(lengths[rewards > 0].mean()) if (rewards > 0).any() else float("nan"),
        "length_incorrect": float(lengths[rewards == 0].mean()) if (rewards == 0).any() else float("nan"),
        "fully_shared_nodes": int(full.sum()),
        "shared_nodes": int(shared_rep.sum()),
    }
    ctx.progress(0.9, "figure")
    fig, axes = new_figure(2, 1, size=(7.0, 3.6))
    names = jgrpo.methods.names()
    x = np.arange(len(names))
    floor = 1e-9
    for ax, key, title in (
        (axes[0, 0], "w_agg_full_rel", "|W_agg| on prefixes shared by the whole group / max|c|"),
        (axes[0, 1], "shared_fraction", "||grad J from shared prefixes|| / ||grad J||"),
    ):
        base = [max(result[n][key], floor) for n in names]
        deb = [max(result.get(f"{n}+debias", {key: np.nan})[key], floor) for n in names]
        ax.bar(x - 0.2, base, 0.4, label="preset")
        ax.bar(x + 0.2, deb, 0.4, label="prefix-debiased")
        ax.set_xticks(x, names, rotation=60, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    save_figure(fig, ctx.out / "prefix_bias.png")
    rel = {n: result[n]["w_agg_full_rel"] for n in result}
    debiased = [v for n, v in rel.items() if n.endswith("+debias")]
    claims = [
        (
            "uniform weights (dr_grpo): zero W_agg on a prefix shared by all",
            f"{rel['dr_grpo']:.1e} of max|c|",
            rel["dr_grpo"] < 1e-5,
        ),
        ("1/|o_i| weights (grpo): non-zero W_agg there", f"{rel['grpo']:.1e} of max|c|", rel["grpo"] > 1e-3),
        (
            "prefix debiasing: zero W_agg on fully shared prefixes, every preset but gmpo",
            f"max {max(debiased):.1e} of max|c|",
            max(debiased) < 1e-5,
        ),
    ]
    table = markdown_table(
        ["method", "debiased", "W_agg full / max|c|", "mean |W_agg| shared", "shared grad share"], rows
    )
    notes = (
        f"Rollouts of the warmed-up tiny transformer on the arithmetic task: {prompts} prompts x {group} completions, "
        f"accuracy {stats['accuracy']:.2f}, {stats['mixed_groups']:.0%} groups with mixed rewards, mean length of "
        f"correct {stats['length_correct']:.2f} vs incorrect {stats['length_incorrect']:.2f} tokens; "
        f"{stats['fully_shared_nodes']} prefix nodes shared by a whole group, {stats['shared_nodes']} shared by >= 2. "
        "First inner step (ratio 1), beta = 0. W_agg is exact (dJ/dlogp summed over each node); the gradient "
        "norms come from one forward pass and one vmapped VJP over all presets."
    )
    return finish(
        ctx,
        "prefix_bias",
        "Prop. 1: shared-prefix weight W_agg per preset",
        {"presets": result, "rollouts": stats},
        table,
        claims,
        "prefix_bias.png",
        notes,
    )
