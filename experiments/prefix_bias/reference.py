"""Part (A)'s independent reference: W_agg on a prefix shared by the whole group, float64 NumPy (Appendix B).

Computed from the rewards and lengths alone (never from jgrpo), so that it can check
``analysis.prefix.w_agg`` of the presets' exact coefficients.
"""

from __future__ import annotations

import numpy as np


def w_full_float64(name: str, rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """W_agg on a prefix shared by the whole group, float64 from rewards and lengths (J averaged over B)."""
    r, n = np.asarray(rewards, np.float64), np.asarray(lengths, np.float64)
    b, g = r.shape
    adv = r - r.mean(-1, keepdims=True)
    sigma = np.sqrt((adv**2).mean(-1, keepdims=True))
    safe = np.where(sigma > 0, sigma, 1.0)
    if name in ("grpo", "gspo"):  # alpha = 1/(G |o_i| sigma): Omega_i the same, omega_i ∝ 1/|o_i|
        w = np.where(sigma > 0, adv / (g * n * safe), 0.0).sum(-1)
    elif name == "gcpo":  # Table 1 literally: the sequence ratio's term on every token, Omega_i = |o_i|/(sigma G)
        w = np.where(sigma > 0, adv * n / (g * safe), 0.0).sum(-1)
    else:  # dr_grpo, dapo, gcpo once per completion, every debiased preset: one weight for the whole node
        w = np.zeros(b)
    return w / b
