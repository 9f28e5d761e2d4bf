"""The presets table's measurement (no I/O): every preset's loss, gradient norm and diagnostics on one group."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo


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


def measure(seed: int, progress=lambda f, m: None) -> list[tuple[str, str, dict]]:
    """``(label, flavor, {loss, grad_norm, clip_frac_high, clip_frac_low, ratio_mean, kl, omega})`` of every preset
    × flavour and every documented variant, in that order."""
    batch, logp = sample_batch(seed)
    loss_jit = jax.jit(jgrpo.loss, static_argnums=0)
    out = []
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
        out.append((label, flavor, rec))
        progress((k + 1) / len(pairs), f"{label}/{flavor}")
    return out
