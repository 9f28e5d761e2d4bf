"""Is clipping needed? (arXiv 2601.05002, Sec. 5 and Limitations: "the mechanism may be unnecessary").

The paper argues that GRPO-style methods converge with clipping inactive (μ = 1)
and suggests omitting the clip altogether. Tested here on the exact tabular
policy (reward 1 iff the completion contains token 0; ``analysis.tabular`` gives
the exact expected reward E = P(correct), the task's accuracy): a short GRPO
training run of K batches (B groups × G completions, sampled from the current
policy; Adam β1 0.9, state carried), μ ∈ {1, 2, 4, 8} inner steps per batch, for
four variants of the same GRPO objective (β = 0):

- clip: Eq. 1 with ε_low = ε_up = 0.2;
- no clip: the unclipped importance-sampling surrogate (ε_low = 1, ε_up = ∞);
- guard: clip + ``jgrpo.optim.trust_region_guard`` (no ratio leaves the region);
- projection: clip + ``jgrpo.optim.project_clipped`` (the component of each step
  that moves clipped tokens further out is removed).

Measured per seed: the exact accuracy after every batch and the exact
expected-reward gain per sample, (E_K − E_0)/(K·B·G). Every run is one member of
``experiments.overshoot.make_sweep`` (one compile for every μ and variant: they
are unbatched traced switches), vmapped over η and seeds.

Claims (criteria written here, before the run):
- verification: at μ = 1 the ratio is exactly 1 at the only step of each batch,
  so clip and no clip give the same run (to float rounding).
- the paper's suggestion: at the largest η of the grid (where the clip acts the
  most) and every μ ∈ {2, 4, 8} at which the clip acts at all, omitting the clip
  does not lose more than 10% of the clipped run's ΔE per sample
  (non-inferiority, paired over seeds, Bonferroni-adjusted 95% CIs over the μ
  compared). A cell where the clip never acts cannot show a difference and is
  left out; with no such cell the claim is inconclusive.
- beyond: the same comparison for the guard and the projection.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import overshoot as ov_ex
from experiments import stats
from experiments.common import Claim, Context, finish, markdown_table, new_figure, save_figure, verdict

NAME = "clipping"
VARIANTS = ("clip", "no_clip", "guard", "projection")
LABELS = {"clip": "clip (ε 0.2)", "no_clip": "no clip", "guard": "clip + guard", "projection": "clip + projection"}
MARGIN = 0.10  # non-inferiority margin: 10% of the clipped run's ΔE per sample


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes (frozen; ``_config(scale)``).

    Attributes:
      policy: the tabular policy and run sizes (``experiments.overshoot.PolicyConfig``;
        ``num_batches`` is the run length K, ``learning_rates`` Adam's η grid, ``mu`` the largest μ).
      mus: inner steps per batch compared.
      beta2, adam_eps: Adam's β2 and ε (β1 = 0.9).
    """

    policy: ov_ex.PolicyConfig
    mus: tuple[int, ...] = (1, 2, 4, 8)
    beta2: float = 0.95
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.policy.kind != "tabular":
            raise ValueError(f"Config.policy must be tabular (exact ΔE), got {self.policy.kind!r}")
        if 1 not in self.mus or len(self.mus) < 2:
            raise ValueError(f"Config.mus must contain 1 and at least one μ > 1, got {self.mus}")
        if max(self.mus) != self.policy.mu:
            raise ValueError(f"Config.policy.mu must be max(mus) = {max(self.mus)}, got {self.policy.mu}")


def _config(scale: str) -> Config:
    if scale == "quick":
        return Config(
            policy=ov_ex.PolicyConfig(
                kind="tabular", num_batches=6, burn_in=0, seeds=12, learning_rates=(0.01, 0.02, 0.04, 0.08, 0.16)
            )
        )
    if scale == "paper":
        return Config(
            policy=ov_ex.PolicyConfig(
                kind="tabular",
                num_batches=40,
                burn_in=0,
                seeds=32,
                learning_rates=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32),
            )
        )
    if scale == "test":
        return Config(
            policy=ov_ex.PolicyConfig(
                kind="tabular",
                vocab=6,
                completion_len=4,
                num_prompts=2,
                group_size=4,
                num_batches=2,  # the shapes of experiments.overshoot's test size: the tests share its compile
                burn_in=0,
                mu=2,
                seeds=2,
                learning_rates=(0.05, 0.1, 0.2),
            ),
            mus=(1, 2),
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")


def _group(variant: str, mu: int) -> ov_ex.Group:
    opt = ov_ex.BY_NAME[{"guard": "guard", "projection": "projection"}.get(variant, "adam_b0.9")]
    return ov_ex.group_of(opt, mu=mu, clip=variant != "no_clip")


def run_grid(cfg: Config, seed: int, progress=lambda f, m: None) -> dict:
    """{variant: {mu: {"acc": [n_lr, S, K+1], "gain": [n_lr, S], "escape": [n_lr, S]}}} (numpy)."""
    pcfg = cfg.policy
    spec, spec_noclip = ov_ex.spec_pair()
    policy = ov_ex._setup_policy(pcfg, seed)
    sweep = ov_ex.make_sweep(pcfg, policy, beta2=cfg.beta2, eps=cfg.adam_eps, spec=spec, spec_noclip=spec_noclip)
    S, L, K = pcfg.seeds, len(pcfg.learning_rates), pcfg.num_batches
    idx = np.tile(np.arange(S), L)
    params = jax.tree.map(lambda x: x[idx], policy.params0)
    lrs = jnp.asarray(np.repeat(np.asarray(pcfg.learning_rates, np.float32), S))
    samples = K * pcfg.num_prompts * pcfg.group_size
    out: dict = {}
    cells = [(v, mu) for v in VARIANTS for mu in cfg.mus]
    for i, (v, mu) in enumerate(cells):
        progress(i / len(cells), f"{LABELS[v]}, μ = {mu}")
        rec = sweep(_group(v, mu), lrs, params, policy.prompts[idx], policy.keys[idx])
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


# ----------------------------------------------------------------------------- claims


def mu1_claim(grid: dict) -> Claim:
    """At μ = 1 the clip never acts: clip and no clip give the same run."""
    a, b = grid["clip"][1]["acc"], grid["no_clip"][1]["acc"]
    diff = float(np.max(np.abs(a - b)))
    tol = 64 * float(np.finfo(np.float32).eps)
    return Claim(
        claim="Sec. 5: at μ = 1 clipping is inactive — clip and no clip give the same training run",
        kind="verification",
        criterion=f"max |accuracy(clip) − accuracy(no clip)| over every batch, η and seed ≤ {tol:.1e} (float32)",
        falsified_if="a larger difference",
        measured=f"{diff:.2e}",
        verdict=verdict(diff <= tol),
        proposition="Sec. 5",
    )


def _interval(diff: np.ndarray, comparisons: int) -> stats.Interval:
    """Student-t interval for mean(diff) at level 1 − 0.05/comparisons (Bonferroni)."""
    from scipy import stats as sps  # a dependency of jax

    x = np.asarray(diff, np.float64)
    n = x.size
    if n < 2:
        return stats.Interval(-math.inf, math.inf, float(x.mean()), n)
    q = float(sps.t.ppf(1 - 0.025 / comparisons, n - 1))
    half = q * float(x.std(ddof=1)) / math.sqrt(n)
    return stats.Interval(x.mean() - half, x.mean() + half, x.mean(), n)


def noninferiority_claim(grid: dict, variant: str, mus: tuple[int, ...], lr_index: int, *, paper: bool) -> Claim:
    """``variant`` vs clip at every μ > 1 where the clip acts: non-inferior (reproduced), worse (not), or neither."""
    active = [m for m in mus if m > 1 and float(np.mean(grid["clip"][m]["clip_active"][lr_index])) > 0]
    rows, verdicts, seeds = [], [], []
    lo_all, hi_all = math.inf, -math.inf
    for mu in active:
        ref = grid["clip"][mu]["gain"][lr_index]
        ci = _interval(grid[variant][mu]["gain"][lr_index] - ref, len(active))
        margin = MARGIN * abs(float(np.mean(ref)))
        verdicts.append((ci.lo > -margin, ci.hi < 0))
        seeds.append(ci.n)
        lo_all, hi_all = min(lo_all, ci.lo), max(hi_all, ci.hi)
        acc_v = float(np.mean(grid[variant][mu]["acc"][lr_index][..., -1]))
        acc_c = float(np.mean(grid["clip"][mu]["acc"][lr_index][..., -1]))
        rows.append(f"μ = {mu}: {ci.fmt('.3g')} (margin {margin:.2g}; final accuracy {acc_v:.3f} vs clip {acc_c:.3f})")
    skipped = [m for m in mus if m > 1 and m not in active]
    if not active:
        ok = None
    elif all(n for n, _ in verdicts):
        ok = True
    elif any(w for _, w in verdicts):
        ok = False
    else:
        ok = None
    n = min(seeds) if seeds else 1
    what = "omitting the clip" if variant == "no_clip" else f"{LABELS[variant]}"
    measured = "; ".join(rows) + " (difference of ΔE per sample, Bonferroni 95% CI)" if rows else "the clip never acts"
    if skipped:
        measured += f"; μ = {', '.join(map(str, skipped))} left out: the clip never acts there"
    return Claim(
        claim=(
            f"{'Limitations' if paper else 'beyond'}: {what} does not lose exact reward gain per sample against "
            f"clip (μ ∈ {{{', '.join(str(m) for m in mus if m > 1)}}})"
        ),
        kind="experiment",
        criterion=(
            f"paired over seeds at the largest η, exact ΔE per sample of {LABELS[variant]} minus clip, at every μ > 1 "
            f"where the clip acts (Bonferroni-adjusted 95% CIs): reproduced if every CI lies above −{MARGIN:.0%} of "
            "clip's gain (non-inferior); not reproduced if some CI lies below 0 and non-inferiority fails; "
            "inconclusive otherwise or when the clip never acts"
        ),
        falsified_if="at some μ the CI lies below 0 and non-inferiority fails there",
        measured=measured,
        verdict=verdict(ok) if n >= 5 else "inconclusive",
        proposition="Limitations" if paper else "beyond",
        ci=(lo_all, hi_all) if rows else (float("nan"), float("nan")),
        seeds=n,
    )


def claims_of(grid: dict, cfg: Config) -> list[Claim]:
    top = len(cfg.policy.learning_rates) - 1  # the largest η: where the clip acts the most
    return [
        mu1_claim(grid),
        noninferiority_claim(grid, "no_clip", cfg.mus, top, paper=True),
        noninferiority_claim(grid, "projection", cfg.mus, top, paper=False),
        noninferiority_claim(grid, "guard", cfg.mus, top, paper=False),
    ]


# ----------------------------------------------------------------------------- run and report


def run(ctx: Context):
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config):
    t0 = time.perf_counter()
    grid = run_grid(cfg, ctx.seed, lambda f, m: ctx.progress(0.02 + 0.9 * f, m))
    runtime = time.perf_counter() - t0
    claims = claims_of(grid, cfg)
    pcfg = cfg.policy
    rows = []
    for j, lr in enumerate(pcfg.learning_rates):
        for mu in cfg.mus:
            for v in VARIANTS:
                g = grid[v][mu]
                ci = stats.mean_ci(g["gain"][j])
                rows.append(
                    (
                        f"{lr:g}",
                        mu,
                        LABELS[v],
                        f"{1e3 * ci.center:.3f} [{1e3 * ci.lo:.3f}, {1e3 * ci.hi:.3f}]",
                        float(g["acc"][j, :, -1].mean()),
                        float(g["clip_active"][j].mean()),
                        float(g["escape"][j].mean()),
                        float(g["kl"][j].mean()),
                    )
                )
    table = markdown_table(
        [
            "η",
            "μ",
            "variant",
            "ΔE per sample × 1e3 (95% CI)",
            "final accuracy",
            "clip active",
            "escape frac",
            "KL / batch",
        ],
        rows,
    )
    _figure(cfg, grid, ctx.out / "clipping.png")
    result = {
        "config": dataclasses.asdict(cfg),
        "grid": {v: {str(mu): d for mu, d in grid[v].items()} for v in grid},
        "runtime_s": runtime,
    }
    notes = (
        f"Policy: exact tabular softmax policy (V = {pcfg.vocab}, T = {pcfg.completion_len}); reward 1 iff the "
        f"completion contains token 0, exact accuracy from analysis.tabular. {pcfg.seeds} seeds × η ∈ "
        f"{{{', '.join(f'{x:g}' for x in pcfg.learning_rates)}}}; K = {pcfg.num_batches} batches of "
        f"B = {pcfg.num_prompts} × G = {pcfg.group_size} samples; Adam β1 0.9, β2 {cfg.beta2}, ε {cfg.adam_eps:g}; "
        f"GRPO β = 0. ΔE per sample = (E_K − E_0)/(K·B·G), exact. Runtime {runtime:.0f} s."
    )
    return finish(ctx, NAME, "Is clipping needed? (Limitations)", result, table, claims, "clipping.png", notes=notes)


def _figure(cfg: Config, grid: dict, path) -> None:
    pcfg = cfg.policy
    mid = len(pcfg.learning_rates) - 1  # the η of the claims
    fig, axes = new_figure(ncols=3, nrows=1, size=(4.6, 3.5))
    ax = axes[0, 0]
    x = np.arange(len(cfg.mus))
    width = 0.8 / len(VARIANTS)
    for k, v in enumerate(VARIANTS):
        cis = [stats.mean_ci(grid[v][mu]["gain"][mid]) for mu in cfg.mus]
        ax.bar(
            x + k * width,
            [1e3 * c.center for c in cis],
            width,
            yerr=[[1e3 * (c.center - c.lo) for c in cis], [1e3 * (c.hi - c.center) for c in cis]],
            capsize=2,
            label=LABELS[v],
        )
    ax.set_xticks(x + width * (len(VARIANTS) - 1) / 2, [str(m) for m in cfg.mus])
    ax.set(
        xlabel="μ (inner steps per batch)",
        ylabel="exact ΔE per sample × 1e3",
        title=f"ΔE per sample, η = {pcfg.learning_rates[mid]:g} (95% CI)",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    mu = max(cfg.mus)
    steps = np.arange(pcfg.num_batches + 1)
    for v in VARIANTS:
        acc = grid[v][mu]["acc"][mid]  # [S, K+1]
        mean = acc.mean(0)
        n = acc.shape[0]
        half = stats.t_quantile(n - 1) * acc.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(mean)
        (line,) = ax.plot(steps, mean, label=LABELS[v])
        ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.18, lw=0)
    ax.set(xlabel="batch", ylabel="exact accuracy E[reward]", title=f"accuracy over training, μ = {mu} (95% CI)")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    for v in VARIANTS:
        gains = np.array([grid[v][mu]["gain"].mean(1) for mu in cfg.mus])  # [n_mu, n_lr]
        for j in range(len(pcfg.learning_rates)):
            ax.plot(cfg.mus, 1e3 * gains[:, j], "o-" if j == mid else ":", label=f"{LABELS[v]}" if j == mid else None)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(cfg.mus), [str(m) for m in cfg.mus])
    ax.set(xlabel="μ", ylabel="exact ΔE per sample × 1e3", title="every η (solid: the claims' η), mean over seeds")
    ax.legend(fontsize=7)
    fig.subplots_adjust(wspace=0.3)
    save_figure(fig, path)
