"""Part (a)'s independent reference: Prop. 4's closed forms in float64 NumPy from the batch alone (never jgrpo).

Also the tolerance of the identities: ``ULPS`` float32 epsilons times the size of the terms compared.
"""

from __future__ import annotations

import numpy as np

ULPS = 64  # identity tolerance: ULPS float32 epsilons times the size of the terms compared
# Table 1 presets whose first-step policy part is Σ_i A_i · const = 0 (Eq. 9)
LENGTH_NORMALISED = ("grpo", "grpo_v32", "gspo", "gmpo", "rloo")


def np_first_step(name: str, spec, rewards, mask, logp_old, logp_ref, *, reading: str = "once"):
    """The Prop. 4 closed form of J(θ_old) per group, float64 NumPy from the batch alone (paper flavour).

    Ω_i is Table 1's α summed over the tokens of completion i at ratio 1 (times log π_old for
    the objectives whose value is A log π), J = G·Cov(A, Ω) − βR (Eq. 11; = Σ_i A_i Ω_i because
    Σ_i A_i = 0), R the k3 KL with the policy normaliser without 1/σ.

    Returns:
      ``(case, policy [B], regularizer [B] or None, omega [B, G])``; ``case`` is "" when there is
      no closed form here (gtpo: conflict-token λ); regularizer None when not computed here.
    """
    r = np.asarray(rewards, np.float64)
    m = np.asarray(mask, np.float64)
    lengths = m.sum(-1)
    b, g = r.shape
    a = r - r.mean(-1, keepdims=True)
    sigma = np.sqrt((a**2).sum(-1, keepdims=True) / (g - spec.std_ddof)) + spec.std_eps
    inv_sigma = np.where(sigma > 0, 1.0 / np.where(sigma > 0, sigma, 1.0), 0.0)
    lp_sum = (np.asarray(logp_old, np.float64) * m).sum(-1)
    ones = np.ones_like(r)
    if name in LENGTH_NORMALISED or (name == "gcpo" and reading == "once"):
        case = "Eq. 9: Ω const, J = −βR"
        if name == "rloo":
            a = a * g / (g - 1)
        omega = ones / g if name in ("grpo_v32", "rloo") else ones * inv_sigma / g
    elif name == "dr_grpo":
        case, omega = "Eq. 10: J = (1/G) Σ A|o| − βR", lengths / g
    elif name == "gcpo":
        case, omega = "Eq. 11: Ω = |o|/(σG)", lengths * inv_sigma / g
    elif name == "dapo":
        case, omega = "Eq. 11: Ω = |o|/(σ Σ|o|)", lengths * inv_sigma / lengths.sum(-1, keepdims=True)
    elif name == "bnpo":  # batch-wide token count; jgrpo's per-prompt J carries a factor B (its mean is the sum)
        case, omega = "Eq. 11: Ω = B|o|/(σ N_tokens)", b * lengths * inv_sigma / lengths.sum()
    elif name == "cppo":
        case, omega = "Eq. 11: Ω = 1{|A|>γ}/(Gσ)", (np.abs(a) > spec.prune_gamma) * inv_sigma / g
    elif name == "sapo":
        tau = np.where(a > 0, spec.tau_pos, spec.tau_neg)
        case, omega = "Eq. 11: Ω = 2/(τ_i G σ)", 2.0 / tau * inv_sigma / g
    elif name == "cispo":
        case, omega = "Eq. 11: Ω = Σ_t log π_old/(σ Σ|o|)", lp_sum * inv_sigma / lengths.sum(-1, keepdims=True)
    elif name == "gpg":
        equal = np.ptp(r, axis=-1) == 0
        alpha_hat = b / (b - equal.sum()) if equal.sum() < b else 0.0
        case, omega = "Eq. 11: Ω = α̂ Σ_t log π_old/Σ|o|", alpha_hat * lp_sum / lengths.sum(-1, keepdims=True)
    else:
        return "", None, None, None
    policy = g * np.array([np.cov(a[k], omega[k], bias=True)[0, 1] for k in range(b)])
    reg = None
    if spec.beta == 0:
        reg = np.zeros(b)
    elif name in ("grpo", "cppo", "grpo_v32", "dr_grpo"):
        x = np.asarray(logp_ref, np.float64) - np.asarray(logp_old, np.float64)
        k3 = np.where(m > 0, np.exp(np.where(m > 0, x, 0.0)) - x - 1.0, 0.0)  # at ratio 1, V3.2's I·k3 = k3
        per_token = 1.0 / g if name == "dr_grpo" else 1.0 / (g * np.maximum(lengths, 1.0))  # [B, G] or scalar
        reg = (k3.sum(-1) * per_token).sum(-1)
    return case, policy, reg, omega


def tolerance(*terms) -> np.ndarray:
    """ULPS float32 epsilons times the size of the terms compared (per group)."""
    return ULPS * float(np.finfo(np.float32).eps) * (1.0 + sum(np.abs(np.asarray(t, np.float64)) for t in terms))


def constant(x) -> bool:
    """True when a proxy takes one value on every batch (to float32 rounding of its size)."""
    x = np.asarray(x, np.float64)
    return bool(np.ptp(x) <= ULPS * float(np.finfo(np.float32).eps) * (1.0 + np.max(np.abs(x))))
