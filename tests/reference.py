"""Independent float64 NumPy reference of the unified objective (Eq. 1 of arXiv 2601.05002).

Written from the equations (``DESIGN.md``, the docstrings of ``jgrpo/methods.py``
and the sources of verl / TRL), with explicit Python loops over prompts ``b``,
completions ``i`` and tokens ``t``. It never imports ``jgrpo``: a spec is given as
a plain dict ``{field name: value}`` (enums as their ``.value`` strings).

    J_b = sum_i sum_t alpha_{i,t} * min(s_{i,t} A_i, clip(s_{i,t}, 1-eps_low, 1+eps_high) A_i) - beta R_b

``reference_loss`` returns -J averaged over the prompts (``scope='group'``) or as
one batch-wide sum (``scope='batch'``, verl's ``agg_loss``); ``reference_coefficients``
returns d(loss)/d(logp_{b,i,t}) as closed forms per objective (no finite
differences), honouring every stop-gradient.

Conventions fixed here (from the equations, not from the implementation):

- A_i = r_i - mean_j r_j (Eq. 2), times G/(G-1) for RLOO. A zero-variance group, one whose
  reward spread max - min is at most G * eps * max|r| (eps of the compute dtype: rounding alone
  explains such a spread), has A = 0 and its policy term is exactly 0. With ``single_sample_unit``
  a group of one has mean 0 and sigma 1 (verl), so A = r.
- Rewards of shape [B, G, K] (K reward functions, TRL): ``sum_then_normalize`` sums w_k r_ik;
  ``normalize_then_sum`` (GDPO) sums w_k (r_ik - mean_j r_jk) / (sigma_k + std_eps) and then
  centres by the mean of the whole batch and scales by 1 / (batch sigma + std_eps).
- CPPO: 1{|A_i| > gamma} on the centred A_i (Table 1) or on A_i / (sigma + std_eps) (CPPO paper).
- alpha_{i,t} = w_i * scale * prune_i * delta_i * M_i * alpha_hat / F_norm * lambda_{i,t},
  where w_i is the token normaliser of ``agg`` x ``scope``.
- R is weighted by w_i only ("averaged like the policy term but without 1/sigma"):
  the CPPO prune indicator, the V3.2 off-policy mask, alpha_hat and F_norm act on
  the policy term only (TRL multiplies its off-policy mask into the policy loss
  before adding beta * KL).
- Objectives whose ratio is per completion (``sequence``, ``geo_mean``) give the
  completion the term Omega_i * f(S_i): ``sequence`` (GCPO) read literally puts f(S_i)
  on every token, Omega_i = sum_t alpha_{i,t}; with ``sequence_terms='once'`` it counts
  once, Omega_i = sum_t alpha_{i,t} / L_i. An empty completion (L_i = 0) contributes
  nothing (it has no tokens; verl's ``geo_mean`` masks its advantage to 0).
- ``ratio_level='sequence'`` (TRL): the ratio of ppo_clip / sapo / cispo and the KL's
  importance weight is s_i = exp(mean_t log I) on every token of i, with d s_i/dlogp_t = s_i / L_i.
  ``gspo`` keeps the GSPO-token form (value s_i, gradient s_i dlogp_t per token).
- ``vespo`` (TRL): term sg[phi(w_i)] A_i logp_t, w_i = exp(clip(sum_t clip(log I, +-20), log 1e-8, 20)),
  phi(w) = exp(lam + k log w - lam w), (k, lam) by the sign of A_i (A >= 0: pos).
- TRL's ``top_entropy_quantile`` rho keeps the policy term of tokens whose entropy is at least the
  (1 - rho)-quantile (linear interpolation) of all completion-token entropies of the batch;
  ``entropy_coef`` adds coef * (mean entropy over those tokens) to every J_b (no logp gradient).
- Clamps (``log_ratio_min/max``, ``kl_log_ratio_clamp``, ``kl_value_clamp``) have
  zero gradient beyond their bound. ``kl_log_ratio_clamp`` (of x = logp_ref - logp)
  and ``kl_value_clamp`` apply to k3 only, as documented in ``MethodSpec`` and as in
  verl's ``kl_penalty``; k1, k2 and abs are never clamped.
- ``prefix_debias`` is not modelled (the reference raises if it is set).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "F64_EPS",
    "combine_rewards",
    "conflict_tokens",
    "reference_advantages",
    "reference_coefficients",
    "reference_loss",
]


# ---------------------------------------------------------------------------
# Small scalar helpers (value and derivative).


def _clamp(x: float, lo: float | None, hi: float | None) -> tuple[float, float]:
    """clip(x, lo, hi) and its derivative (0 beyond a bound)."""
    if lo is not None and x < lo:
        return lo, 0.0
    if hi is not None and x > hi:
        return hi, 0.0
    return x, 1.0


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _sign(x: float) -> float:
    return 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)


def _clip_term(f: dict[str, Any], s: float, adv: float) -> tuple[float, float]:
    """PPO clipped term min(u A, clip(s) A) (dual clip for A < 0) and d/ds.

    u = min(s, ratio_cap) (TRL's delta) or s. Dual clip: max(term, c A) for A < 0.
    """
    u, du = (s, 1.0)
    cap = f["ratio_cap"]
    if cap is not None and s > cap:
        u, du = cap, 0.0
    c, dc = _clamp(s, 1.0 - f["eps_low"], 1.0 + f["eps_high"])
    v1, v2 = u * adv, c * adv
    if v1 <= v2:
        val, dval = v1, du * adv
    else:
        val, dval = v2, dc * adv
    dual = f["dual_clip"]
    if dual is not None and adv < 0 and val < dual * adv:
        val, dval = dual * adv, 0.0
    return val, dval


def _kl(f: dict[str, Any], x: float) -> tuple[float, float]:
    """Per-token KL estimator of x = logp_ref - logp, and its derivative w.r.t. logp."""
    kind = f["kl"]
    c = f["kl_log_ratio_clamp"]
    xc, gx = _clamp(x, -c, c) if (c is not None and kind == "k3") else (x, 1.0)
    if kind == "k1":
        d, dd = -xc, -1.0
    elif kind == "k2":
        d, dd = 0.5 * xc * xc, xc
    elif kind == "k3":
        d, dd = math.exp(xc) - xc - 1.0, math.exp(xc) - 1.0
        vc = f["kl_value_clamp"]
        if vc is not None:
            d, gv = _clamp(d, -vc, vc)
            dd *= gv
    elif kind == "abs":
        d, dd = abs(xc), _sign(xc)
    else:
        raise ValueError(f"unknown KL estimator {kind!r}")
    # dx/dlogp = -1.
    return d, -dd * gx


# ---------------------------------------------------------------------------
# Advantages and per-group statistics.


def _std(values: list[float], ddof: int) -> float:
    n = len(values)
    mean = sum(values) / n
    ss = 0.0
    for v in values:
        ss += (v - mean) ** 2
    return math.sqrt(ss / (n - ddof)) if n - ddof > 0 else 0.0


F64_EPS = float(np.finfo(np.float64).eps)


def _degenerate(values: list[float], eps: float) -> bool:
    """A zero-variance set of rewards: spread within n * eps * max|r| (what rounding alone explains)."""
    return max(values) - min(values) <= len(values) * eps * max(abs(v) for v in values)


def combine_rewards(fields: dict[str, Any], rewards: np.ndarray, eps: float = F64_EPS) -> np.ndarray:
    """[B, G] rewards from [B, G] (unchanged) or [B, G, K] (K reward functions with weights w_k)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 2:
        if fields["multi_reward"] == "sum_then_normalize":
            return r
        r = r[..., None]  # one reward function, normalised per group all the same
    n_b, g, k = r.shape
    w = fields["reward_weights"] if fields["reward_weights"] is not None else (1.0,) * k
    out = np.zeros((n_b, g))
    for b in range(n_b):
        for i in range(g):
            for kk in range(k):
                if fields["multi_reward"] == "sum_then_normalize":
                    out[b, i] += w[kk] * r[b, i, kk]
                else:
                    vals = [float(r[b, j, kk]) for j in range(g)]
                    if _degenerate(vals, eps):
                        continue
                    mean = sum(vals) / g
                    sd = _std(vals, fields["std_ddof"])
                    denom = sd + fields["std_eps"]
                    if denom > 0:
                        out[b, i] += w[kk] * (r[b, i, kk] - mean) / denom
    return out


def reference_advantages(
    fields: dict[str, Any], rewards: np.ndarray, eps: float = F64_EPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred advantages A [B, G] (Eq. 2), degenerate-group flags [B] and group sigma [B].

    ``eps``: machine epsilon of the compute dtype (zero-variance rule).
    """
    r = combine_rewards(fields, rewards, eps)
    n_b, g = r.shape
    adv = np.zeros((n_b, g))
    degenerate = np.zeros(n_b, dtype=bool)
    sigma = np.zeros(n_b)
    if fields.get("multi_reward") == "normalize_then_sum":
        flat = [float(v) for v in r.reshape(-1)]
        if _degenerate(flat, eps):
            return adv, np.ones(n_b, dtype=bool), sigma
        mean = sum(flat) / len(flat)
        for b in range(n_b):
            for i in range(g):
                adv[b, i] = r[b, i] - mean
            sigma[b] = _std([float(v) for v in r[b]], fields["std_ddof"])
        return adv, degenerate, sigma
    for b in range(n_b):
        vals = [float(r[b, i]) for i in range(g)]
        if g == 1 and fields["single_sample_unit"]:
            adv[b, 0] = vals[0]  # mean 0 (verl); RLOO leaves a single sample unchanged too.
            sigma[b] = 1.0
            continue
        if _degenerate(vals, eps):
            degenerate[b] = True
            continue
        mean = sum(vals) / g
        for i in range(g):
            a = vals[i] - mean
            if fields["advantage"] == "rloo":
                a *= g / (g - 1)
            adv[b, i] = a
        sigma[b] = _std(vals, fields["std_ddof"])
    return adv, degenerate, sigma


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's and torch's default) of a non-empty list."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def conflict_tokens(tokens: np.ndarray, mask: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """GTPO conflict tokens [B, G, T] (bool).

    Token t of completion i is a conflict token when some completion j with
    A_i * A_j < 0 holds the same token id at the same position (both valid), in
    the leading run of such positions from t = 0; likewise aligned from the end
    of each completion, in the trailing run.
    """
    n_b, g, n_t = tokens.shape
    out = np.zeros((n_b, g, n_t), dtype=bool)
    for b in range(n_b):
        lengths = [int(sum(1 for t in range(n_t) if mask[b, i, t] != 0)) for i in range(g)]
        for i in range(g):
            opp = [j for j in range(g) if adv[b, i] * adv[b, j] < 0]
            for t in range(lengths[i]):
                if not any(t < lengths[j] and tokens[b, j, t] == tokens[b, i, t] for j in opp):
                    break
                out[b, i, t] = True
            for k in range(lengths[i]):
                t = lengths[i] - 1 - k
                if not any(k < lengths[j] and tokens[b, j, lengths[j] - 1 - k] == tokens[b, i, t] for j in opp):
                    break
                out[b, i, t] = True
    return out


# ---------------------------------------------------------------------------
# The objective.


def _reference(
    fields: dict[str, Any],
    logp: np.ndarray,
    mask: np.ndarray,
    logp_old: np.ndarray,
    rewards: np.ndarray,
    logp_ref: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
    entropy: np.ndarray | None = None,
    eps: float = F64_EPS,
) -> tuple[float, np.ndarray]:
    f = fields
    if f.get("prefix_debias"):
        raise NotImplementedError("the reference does not model prefix_debias")
    logp = np.asarray(logp, dtype=np.float64)
    logp_old = np.asarray(logp_old, dtype=np.float64)
    m = (np.asarray(mask) != 0).astype(np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    n_b, g, n_t = logp.shape
    lengths = [[int(sum(m[b, i, t] for t in range(n_t))) for i in range(g)] for b in range(n_b)]

    adv, degenerate, sigma = reference_advantages(f, r, eps)
    r = combine_rewards(f, r, eps)
    flat = [float(v) for v in r.reshape(-1)]
    sigma_batch = _std(flat, f["std_ddof"])
    batch_degenerate = _degenerate(flat, eps)

    # Per-group scale (the 1/sigma of Table 1) and GPG's alpha_hat / F_norm.
    scale = np.ones(n_b)
    for b in range(n_b):
        if f["scale"] == "group_std":
            scale[b] = 1.0 / (sigma[b] + f["std_eps"]) if not degenerate[b] else 0.0
        elif f["scale"] == "batch_std":
            denom = sigma_batch + f["std_eps"]
            scale[b] = 1.0 / denom if denom > 0 and not batch_degenerate else 0.0
    alpha_hat = 1.0
    if f["gpg_rescale"] == "groups":
        n_degenerate = int(sum(degenerate))
        alpha_hat = n_b / (n_b - n_degenerate) if n_b > n_degenerate else 0.0
    elif f["gpg_rescale"] == "nonzero":
        alpha_hat = (n_b * g) / max(sum(1 for v in flat if v != 0), 1)
    inv_f_norm = 1.0
    if f["f_norm"] == "batch_std":
        denom = sigma_batch + f["std_eps"]
        inv_f_norm = 1.0 / denom if denom > 0 else 0.0

    # Token normaliser w[b][i] of agg x scope.
    batch_scope = f["scope"] == "batch"
    n_rows_batch = sum(1 for b in range(n_b) for i in range(g) if lengths[b][i] > 0)
    n_tok_batch = sum(lengths[b][i] for b in range(n_b) for i in range(g))
    norm_len = f["norm_length"] if f["norm_length"] > 0 else float(n_t)
    w = np.zeros((n_b, g))
    for b in range(n_b):
        n_rows = n_rows_batch if batch_scope else g
        n_tok = n_tok_batch if batch_scope else sum(lengths[b])
        for i in range(g):
            length = lengths[b][i]
            if length == 0:
                continue
            agg = f["agg"]
            if agg == "seq-mean-token-mean":
                w[b, i] = 1.0 / (n_rows * length)
            elif agg == "seq-mean-token-sum":
                w[b, i] = 1.0 / n_rows
            elif agg == "seq-mean-token-sum-norm":
                w[b, i] = 1.0 / (n_rows * norm_len)
            elif agg == "token-mean":
                w[b, i] = 1.0 / n_tok
            elif agg == "token-sum":
                w[b, i] = 1.0
            else:
                raise ValueError(f"unknown agg {agg!r}")
    divisor = 1.0 if batch_scope else float(n_b)

    # GTPO's lambda and delta.
    lam = np.ones((n_b, g, n_t))
    if f["gtpo_conflicts"]:
        conflicts = conflict_tokens(np.asarray(tokens), m, adv)
        for b in range(n_b):
            for i in range(g):
                for t in range(n_t):
                    if conflicts[b, i, t]:
                        lam[b, i, t] = f["gtpo_w"] if adv[b, i] > 0 else 0.0
    mean_h = np.zeros((n_b, g))
    if entropy is not None:
        ent = np.asarray(entropy, dtype=np.float64)
        for b in range(n_b):
            for i in range(g):
                if lengths[b][i] > 0:
                    mean_h[b, i] = sum(ent[b, i, t] * m[b, i, t] for t in range(n_t)) / lengths[b][i]
    delta = np.ones((n_b, g))
    if f["entropy_threshold"] is not None:
        for b in range(n_b):
            for i in range(g):
                delta[b, i] = 1.0 if mean_h[b, i] <= f["entropy_threshold"] else 0.0

    # TRL's top_entropy_quantile mask (policy term only) and entropy bonus.
    keep = np.ones((n_b, g, n_t))
    if f["top_entropy_quantile"] < 1.0 or f["entropy_coef"] != 0:
        ent = np.asarray(entropy, dtype=np.float64)
        valid = [float(ent[b, i, t]) for b in range(n_b) for i in range(g) for t in range(n_t) if m[b, i, t] != 0]
        if f["top_entropy_quantile"] < 1.0:
            thr = _quantile(valid, 1.0 - f["top_entropy_quantile"]) if valid else math.inf
            for b in range(n_b):
                for i in range(g):
                    for t in range(n_t):
                        keep[b, i, t] = 1.0 if (m[b, i, t] != 0 and ent[b, i, t] >= thr) else 0.0
        kept = [ent[b, i, t] for b in range(n_b) for i in range(g) for t in range(n_t) if m[b, i, t] and keep[b, i, t]]
        bonus = f["entropy_coef"] * (sum(kept) / len(kept) if kept else 0.0)
    else:
        bonus = 0.0

    # Token log-ratios (raw) and their clamped exponentials.
    lo, hi = f["log_ratio_min"], f["log_ratio_max"]

    policy = 0.0
    reg = 0.0
    d_policy = np.zeros((n_b, g, n_t))
    d_reg = np.zeros((n_b, g, n_t))
    el, eh = f["eps_low"], f["eps_high"]
    objective = f["objective"]

    for b in range(n_b):
        for i in range(g):
            length = lengths[b][i]
            if length == 0:
                continue
            a = float(adv[b, i])
            tok = [t for t in range(n_t) if m[b, i, t] != 0]
            x = {t: logp[b, i, t] - logp_old[b, i, t] for t in tok}
            xc = {t: _clamp(x[t], lo, hi) for t in tok}  # (value, d/dx)

            prune = 1.0
            if f["prune_gamma"] is not None:
                stat = a
                if f["prune_on"] == "standardised":
                    denom = sigma[b] + f["std_eps"]  # sigma = 1 for verl's group of one
                    stat = a / denom if (denom > 0 and not degenerate[b]) else 0.0
                if not abs(stat) > f["prune_gamma"]:
                    prune = 0.0
            offpolicy = 1.0
            if f["offpolicy_delta"] is not None:
                mean_neg = sum(-x[t] for t in tok) / length
                if a < 0 and mean_neg > f["offpolicy_delta"]:
                    offpolicy = 0.0
            c_i = w[b, i] * scale[b] * prune * delta[b, i] * offpolicy * alpha_hat * inv_f_norm
            if degenerate[b]:
                c_i = 0.0  # all-equal rewards: exactly zero policy term.
            alpha = {t: c_i * lam[b, i, t] * keep[b, i, t] for t in tok}
            # Sequence ratio s_i = exp(mean_t log I) (TRL's sequence level), clamped, and d log s_i / dx_t.
            xs_mean, gs_mean = _clamp(sum(x[t] for t in tok) / length, lo, hi)
            s_seq = math.exp(xs_mean)
            seq_level = f["ratio_level"] == "sequence"

            if objective == "ppo_clip" and seq_level:
                # TRL: the (B, 1) ratio s_i broadcast over the tokens; gradient through the mean.
                val, dval = _clip_term(f, s_seq, a)
                omega = sum(alpha[t] for t in tok)
                policy += omega * val
                for t in tok:
                    d_policy[b, i, t] = omega * dval * s_seq * gs_mean / length
            elif objective == "ppo_clip":
                for t in tok:
                    s = math.exp(xc[t][0])
                    val, dval = _clip_term(f, s, a)
                    policy += alpha[t] * val
                    d_policy[b, i, t] = alpha[t] * dval * s * xc[t][1]
            elif objective == "gspo":
                xs, gs = _clamp(sum(x[t] for t in tok) / length, lo, hi)
                s = math.exp(xs)
                val, dval = _clip_term(f, s, a)
                for t in tok:
                    policy += alpha[t] * val
                    # GSPO-token: value s_i, gradient s_i * dlogp_t (sg on the rest).
                    d_policy[b, i, t] = alpha[t] * dval * s * gs
            elif objective == "sequence":
                xs, gs = _clamp(sum(x[t] for t in tok), lo, hi)
                s = math.exp(xs)
                val, dval = _clip_term(f, s, a)
                # Table 1 literally: the term f(S_i) on every token (Omega_i = sum_t alpha);
                # sequence_terms='once': one term with the mean token weight.
                omega = sum(alpha[t] for t in tok)
                if f["sequence_terms"] == "once":
                    omega /= length
                policy += omega * val
                for t in tok:
                    d_policy[b, i, t] = omega * dval * s * gs
            elif objective == "geo_mean":
                sg_a = _sign(a)
                xm, dxm = {}, {}
                for t in tok:
                    xv, gx = xc[t]
                    clipped, _ = _clamp(xv, -el, eh)
                    if sg_a > 0:
                        xm[t], dxm[t] = (clipped, 0.0) if clipped < xv else (xv, gx)
                    elif sg_a < 0:
                        xm[t], dxm[t] = (clipped, 0.0) if clipped > xv else (xv, gx)
                    else:
                        xm[t], dxm[t] = 0.0, 0.0
                s = math.exp(sum(xm[t] for t in tok) / max(length, 1))
                omega = sum(alpha[t] for t in tok)
                policy += omega * a * s
                for t in tok:
                    d_policy[b, i, t] = omega * a * s * dxm[t] / max(length, 1)
            elif objective == "logp":
                for t in tok:
                    policy += alpha[t] * a * logp[b, i, t]
                    d_policy[b, i, t] = alpha[t] * a
            elif objective == "cispo":
                for t in tok:
                    ratio = s_seq if seq_level else math.exp(xc[t][0])
                    if f["cispo_clip"] == "two_sided":
                        cw, _ = _clamp(ratio, 1.0 - el, 1.0 + eh)
                    else:
                        cw = min(ratio, eh)
                    policy += alpha[t] * cw * a * logp[b, i, t]
                    d_policy[b, i, t] = alpha[t] * cw * a  # sg[clip(I)]
            elif objective == "sapo" and seq_level:
                tau = f["tau_pos"] if a > 0 else f["tau_neg"]
                sig = _sigmoid(tau * (s_seq - 1.0))
                omega = sum(alpha[t] for t in tok)
                policy += omega * (4.0 / tau) * sig * a
                for t in tok:
                    d_policy[b, i, t] = omega * 4.0 * sig * (1.0 - sig) * s_seq * a * gs_mean / length
            elif objective == "vespo":
                xsum = sum(max(-20.0, min(20.0, x[t])) for t in tok)
                log_w = max(math.log(1e-8), min(20.0, xsum))
                k, lam_v = (
                    (f["vespo_k_pos"], f["vespo_lambda_pos"]) if a >= 0 else (f["vespo_k_neg"], f["vespo_lambda_neg"])
                )
                lam_v = max(lam_v, 1e-4)
                phi = math.exp(lam_v + k * log_w - lam_v * math.exp(log_w))
                for t in tok:
                    policy += alpha[t] * phi * a * logp[b, i, t]
                    d_policy[b, i, t] = alpha[t] * phi * a  # sg[phi]
            elif objective == "sapo":
                tau = f["tau_pos"] if a > 0 else f["tau_neg"]
                for t in tok:
                    ratio = math.exp(xc[t][0])
                    sig = _sigmoid(tau * (ratio - 1.0))
                    policy += alpha[t] * (4.0 / tau) * sig * a
                    d_policy[b, i, t] = alpha[t] * 4.0 * sig * (1.0 - sig) * ratio * a * xc[t][1]
            else:
                raise ValueError(f"unknown objective {objective!r}")

            # Regularizer R, weighted by the token normaliser w only.
            kind = f["regularizer"]
            if kind == "none" or f["beta"] == 0:
                continue
            for t in tok:
                wt = w[b, i]
                if kind == "kl":
                    dkl, ddkl = _kl(f, float(logp_ref[b, i, t]) - logp[b, i, t])
                    reg += wt * dkl
                    d_reg[b, i, t] = wt * ddkl
                elif kind == "kl_importance" and seq_level:
                    # TRL's bias-corrected KL at sequence level: s_i * k3_t, s_i with its gradient (1/L per token).
                    dkl, ddkl = _kl(f, float(logp_ref[b, i, t]) - logp[b, i, t])
                    reg += wt * s_seq * dkl
                    d_reg[b, i, t] += wt * s_seq * ddkl
                    for u in tok:
                        d_reg[b, i, u] += wt * dkl * s_seq * gs_mean / length
                elif kind == "kl_importance":
                    dkl, ddkl = _kl(f, float(logp_ref[b, i, t]) - logp[b, i, t])
                    ratio = math.exp(xc[t][0])
                    reg += wt * ratio * dkl
                    d_reg[b, i, t] = wt * (ratio * xc[t][1] * dkl + ratio * ddkl)
                elif kind == "gtpo_entropy":
                    ratio = math.exp(xc[t][0])
                    coef = wt * delta[b, i] * mean_h[b, i] * lam[b, i, t]
                    reg += coef * ratio
                    d_reg[b, i, t] = coef * ratio * xc[t][1]
                else:
                    raise ValueError(f"unknown regularizer {kind!r}")

    beta = f["beta"]
    objective_value = policy - beta * reg
    loss = -objective_value / divisor - bonus
    coefficients = -(d_policy - beta * d_reg) / divisor
    return loss, coefficients


def reference_loss(
    fields: dict[str, Any],
    logp: np.ndarray,
    mask: np.ndarray,
    logp_old: np.ndarray,
    rewards: np.ndarray,
    logp_ref: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
    entropy: np.ndarray | None = None,
    eps: float = F64_EPS,
) -> float:
    """-J of Eq. 1 averaged over the prompts, in float64.

    Args:
      fields: ``{field: value}`` of a MethodSpec, enums as their ``.value`` strings.
      logp, mask, logp_old: ``[B, G, T]``.
      rewards: ``[B, G]``.
      logp_ref, tokens, entropy: optional ``[B, G, T]``.
      eps: machine epsilon of the compute dtype (the zero-variance rule).
    """
    return float(_reference(fields, logp, mask, logp_old, rewards, logp_ref, tokens, entropy, eps)[0])


def reference_coefficients(
    fields: dict[str, Any],
    logp: np.ndarray,
    mask: np.ndarray,
    logp_old: np.ndarray,
    rewards: np.ndarray,
    logp_ref: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
    entropy: np.ndarray | None = None,
    eps: float = F64_EPS,
) -> np.ndarray:
    """d(loss)/d(logp_{b,i,t}) ``[B, G, T]`` as closed forms (stop-gradients honoured); 0 on padding."""
    return _reference(fields, logp, mask, logp_old, rewards, logp_ref, tokens, entropy, eps)[1]
