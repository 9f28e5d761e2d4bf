"""The clipping experiment's measurement (no I/O): every variant × μ × η × seed of the shared GRPO sweep."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.clipping.config import LABELS, VARIANTS, Config
from experiments.shared.sweep import BY_NAME, Group, group_of, make_sweep, setup_policy, spec_pair


def group_for(variant: str, mu: int) -> Group:
    """The sweep's switches for ``variant`` (Adam β1 0.9, with the guard or the projection; clipped or not)."""
    opt = BY_NAME[{"guard": "guard", "projection": "projection"}.get(variant, "adam_b0.9")]
    return group_of(opt, mu=mu, clip=variant != "no_clip")


def run_grid(cfg: Config, seed: int, progress=lambda f, m: None) -> dict:
    """{variant: {mu: {"acc": [n_lr, S, K+1], "gain": [n_lr, S], "escape": [n_lr, S]}}} (numpy)."""
    pcfg = cfg.policy
    spec, spec_noclip = spec_pair()
    policy = setup_policy(pcfg, seed)
    sweep = make_sweep(pcfg, policy, beta2=cfg.beta2, eps=cfg.adam_eps, spec=spec, spec_noclip=spec_noclip)
    S, L, K = pcfg.seeds, len(pcfg.learning_rates), pcfg.num_batches
    idx = np.tile(np.arange(S), L)
    params = jax.tree.map(lambda x: x[idx], policy.params0)
    lrs = jnp.asarray(np.repeat(np.asarray(pcfg.learning_rates, np.float32), S))
    samples = K * pcfg.num_prompts * pcfg.group_size
    out: dict = {}
    cells = [(v, mu) for v in VARIANTS for mu in cfg.mus]
    for i, (v, mu) in enumerate(cells):
        progress(i / len(cells), f"{LABELS[v]}, μ = {mu}")
        rec = sweep(group_for(v, mu), lrs, params, policy.prompts[idx], policy.keys[idx])
        rec = jax.tree.map(lambda x: np.asarray(x, np.float64).reshape((L, S) + x.shape[1:]), rec)
        acc = np.concatenate([rec["E_start"], rec["E_start"][..., -1:] + rec["dE"][..., -1:]], axis=-1)
        tokens = pcfg.num_prompts * pcfg.group_size * pcfg.completion_len * mu
        out.setdefault(v, {})[mu] = {
            "acc": acc,
            "clip_active": (rec["pairs"] / tokens).mean(-1),  # share of (token, step) pairs beyond the bound
            "gain": (acc[..., -1] - acc[..., 0]) / samples,
            "escape": rec["escape_frac"].mean(-1),
            "kl": rec["kl"].mean(-1),
            "reward": rec["reward"].mean(-1),
        }
    return out
