"""Every preset's loss and diagnostics on one sample group (the library at a glance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
from experiments.common import Context, finish, markdown_table


def sample_batch(seed: int):
    """A fixed, readable group: B = 2 prompts, G = 4, T = 6, one empty completion, one all-equal group."""
    rng = np.random.default_rng(seed)
    lengths = np.array([[6, 3, 5, 0], [2, 6, 4, 6]])
    mask = (np.arange(6)[None, None] < lengths[..., None]).astype(np.float32)
    logp_old = -rng.uniform(0.2, 2.5, size=(2, 4, 6)).astype(np.float32)
    logp = (-np.abs(logp_old + 0.25 * rng.normal(size=logp_old.shape))).astype(np.float32)  # log-probs <= 0
    tokens = np.where(mask > 0, rng.integers(1, 4, size=(2, 4, 6)), 0).astype(np.int32)
    tokens[:, :, 0] = 1  # a first token shared by the whole group
    batch = jgrpo.GroupBatch(
        mask=mask,
        logp_old=logp_old,
        rewards=np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32),
        logp_ref=(-np.abs(logp_old + 0.1 * rng.normal(size=logp_old.shape))).astype(np.float32),
        tokens=tokens,
        entropy=rng.uniform(0.1, 1.5, size=(2, 4, 6)).astype(np.float32),
    )
    return batch, logp


# Documented options beside the presets: the other reading of a paper preset, and TRL's options.
VARIANTS = (
    ("gcpo", "paper", (("sequence_terms", "once"),)),
    ("cppo", "paper", (("prune_on", "standardised"),)),
    ("grpo", "trl", (("ratio_level", "sequence"),)),
    ("dapo", "trl", (("objective", "vespo"),)),
    ("grpo", "trl", (("top_entropy_quantile", 0.2),)),
    ("grpo", "trl", (("entropy_coef", 0.01),)),
)


def run(ctx: Context):
    batch, logp = sample_batch(ctx.seed)
    loss_jit = jax.jit(jgrpo.loss, static_argnums=0)
    rows, result = [], {}
    pairs = [(n, f, ()) for n in jgrpo.methods.names() for f in jgrpo.methods.flavors(n)] + list(VARIANTS)
    for k, (name, flavor, overrides) in enumerate(pairs):
        spec = jgrpo.methods.get(name, flavor=flavor, **dict(overrides))
        label = name + "".join(f", {key}={value}" for key, value in overrides)
        value, aux = loss_jit(spec, logp, batch)
        grad = jax.grad(lambda lp, spec=spec: jgrpo.loss(spec, lp, batch)[0])(jnp.asarray(logp))
        rec = {
            "loss": float(value),
            "grad_norm": float(jnp.linalg.norm(grad)),
            "clip_frac_high": float(aux["clip_frac_high"]),
            "clip_frac_low": float(aux["clip_frac_low"]),
            "ratio_mean": float(aux["ratio_mean"]),
            "kl": float(aux["kl"]),
            "omega": np.asarray(aux["omega"]).tolist(),
        }
        result[f"{label}/{flavor}"] = rec
        rows.append(
            (
                label,
                flavor,
                rec["loss"],
                rec["grad_norm"],
                rec["clip_frac_high"],
                rec["clip_frac_low"],
                rec["ratio_mean"],
                rec["kl"],
            )
        )
        ctx.progress((k + 1) / len(pairs), f"{label}/{flavor}")
    table = markdown_table(
        ["method", "flavor", "loss = -J", "|dloss/dlogp|", "clip high", "clip low", "ratio mean", "kl"], rows
    )
    return finish(
        ctx,
        "presets",
        "Every preset on one sample group",
        {"presets": result},
        table,
        [],
        None,
        notes="B = 2 prompts, G = 4, T = 6; one empty completion; random log-ratios of scale 0.25.",
    )
