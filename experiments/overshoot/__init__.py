"""Prop. 3/7: Adam's momentum carries the policy past its clip region — tested at matched progress.

Three parts, one figure:

(a) Closed forms against the real optax Adam (verifications): C_{T,k} of Eqs. 32/36
    in the paper's index (T − 1 gradient steps, the gradient vanishes at step T),
    the limits of Eqs. 33/37 against the paper's printed values, and Eq. 38 —
    the ε modulation from the actual v̂ before and after the clip — on a *varying*
    gradient history, next to the constant-gradient shortcut.
(b) Escape at matched progress. On the exact tabular policy (many seeds) and on
    the tiny NNX transformer, each optimizer — Adam β1 ∈ {0, 0.5, 0.9, 0.95},
    Adam reset per batch, RMSProp, SGD with momentum, and the momentum-aware
    transforms of ``jgrpo.optim`` (projection, strong gate, trust-region guard)
    — runs a short GRPO training (consecutive batches sampled from the current
    policy, μ inner steps each, optimizer state carried) for every learning rate
    η of a sweep. Per batch: escape (fraction of tokens beyond the bound in the
    advantage-favoured direction, max excess, post-crossing travel) and progress
    (surrogate gain ΔJ; KL(π_old‖π) — exact on the tabular policy, held-out
    estimate on the transformer; the expected-reward gain ΔE — exact on the
    tabular policy, a held-out importance-sampling estimate on the transformer).
    Optimizers are compared at equal progress: each seed's escape is
    interpolated at common progress levels along its η sweep and the paired
    differences go into a Student-t interval over seeds. Where progress is only
    estimated (the transformer's held-out KL and ΔE), the progress curve is the
    mean over seeds, and a comparison is decisive only where that mean is
    resolved from 0 (``matched``).
(c) Exact attribution. For each token while it is beyond the bound, each inner
    step's change of z = sign(A)·log(π/π_old) is split into the stale-momentum
    part, the fresh-gradient part, the transform's correction (projection, gate,
    guard) and the linearisation residual — JVPs of the update's components at
    the step's own preconditioner (``analysis.overshoot.adam_update_split``,
    ``log_ratio_jvps``). The fresh-gradient part of the token's *own* term is
    c_j·(∇z_j P ∇z_j) with c_j = ∂loss/∂log π_j, exactly 0 once clipped: checked
    (max |c_j| over clipped tokens), so the whole fresh part is driven by other
    tokens.

With ``--model PATH`` (a Hugging Face checkpoint directory) parts (b) and (c) run on the checkpoint
instead of the tabular policy and the NNX transformer (skipped; the report says so): Countdown prompts
in its tokenizer, completions sampled up to EOS, and a reward that means something for a real LM — the
graded Countdown reward computed on the host (``experiments.shared.checkpoint.countdown_shaped_score``:
the exact verifier's 1 for a solution, else 0.5 × the share of the problem's numbers the completion
writes). The verifier alone would be 0 on nearly every short completion of a small model (no advantage,
no update); a token-table reward inside the jit would not read the text. The held-out ΔE and KL use the
same reward and samples of the same sampler. The members (η, seed) run one after another, each from the
checkpoint's one copy of the parameters: one jitted sampler and one jitted μ-step update per shape,
reused across optimizers, η and seeds, with the reward on the host in between
(``experiments.shared.sweep.make_member_runner``), so memory is one model and one optimizer state, not
(η × seeds) of them.

One compile per policy: the sweep function (``experiments.shared.sweep``, shared with the
clipping experiment) is vmapped over (η, seed) and takes the optimizer's switches (kind, β1,
reset, gate, projection, guard, clip, μ) as unbatched traced scalars, so ``lax.cond``/``lax.switch``
run only the chosen branch and every optimizer reuses the same executable.

Files: ``config.py`` (sizes), ``measure.py`` (part (a) and the sweeps, no I/O), ``claims.py`` (the
decision rules and their texts, pure), ``report.py`` (tables, figure, notes: the only I/O).
"""

from __future__ import annotations

from experiments.common import Context, Outcome
from experiments.overshoot import claims, measure, report
from experiments.overshoot.config import NAME, Config, _config, checkpoint_policy, with_checkpoint

__all__ = ["NAME", "Config", "checkpoint_policy", "run", "with_checkpoint"]


def run(ctx: Context) -> Outcome:
    """Runs the experiment at ``ctx.scale`` and writes its results into ``ctx.out``.

    With ``ctx.model`` (``--model PATH``) parts (b) and (c) run on the checkpoint (Countdown prompts, the
    graded Countdown reward on the host, members one after another) instead of the tabular policy and the
    NNX transformer; part (a) runs as usual.
    """
    cfg = _config(ctx.scale)
    if ctx.model is not None:
        cfg = with_checkpoint(cfg, ctx.model, ctx.scale)
    return _run(ctx, cfg)


def _run(ctx: Context, cfg: Config) -> Outcome:
    m = measure.measure(cfg, ctx.seed, ctx.progress)
    pcfgs = {kind: pcfg for kind, (pcfg, _) in m.policies.items()}
    found, matched = claims.claims_of(m.a, m.meas, pcfgs, cfg.levels)
    return report.write(ctx, cfg, m, found, matched)
