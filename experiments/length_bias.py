"""Length bias on a task that can show it: 1/|o_i| and the length of incorrect completions.

The claim (Dr. GRPO's critique, Liu et al. 2025b, cited by the paper in Sec. 4 and
App. B.2): with per-completion weights ω_i ∝ 1/|o_i| (grpo), a long incorrect
completion is penalised less per token than a short one, so training lets
incorrect completions grow longer than constant weights (dr_grpo) do.

Task ("reason, then answer"). Tokens 0 = EOS, 1 = R (a reasoning step), 2 = C (the
correct answer), 3 = W (a wrong answer), 4 = F (filler). Prompt k has a difficulty
d_k ∈ ``difficulties``: a completion is correct iff its first answer token is C
and at least d_k R tokens precede it; what follows the answer (until EOS or the
``length`` limit) does not matter — wrong answers may ramble. Correctness is
therefore coupled to length (harder prompts need longer completions). The reward
is the end state of a finite automaton (count of R capped at d_k, then correct /
incorrect), so ``analysis.tabular`` gives the exact joint law of (correct, length).

Policy. A prompt-conditioned tabular policy (``jgrpo.policies.tabular_prompt_*``,
one ``[T, V+1, V]`` table per prompt, context (prompt, position, previous token)),
initialised per seed from a fixed "pretrained" prior (R likely, answers rare, EOS
likely right after an answer) plus i.i.d. normal noise. Initial accuracy is
~0.1-0.45 depending on the difficulty; completions reach ``length`` = 32 tokens.

(1) Exact drift at a fixed policy. For each seed, at θ_0 and at checkpoints of that
    seed's dr_grpo trajectory, ``drift_groups`` groups are sampled; every method's
    first-step gradient g_m is taken on the same groups, and the exact directional
    derivatives of E[|o| | incorrect] = E[|o|·1{incorrect}]/P(incorrect) and of
    E[r] along the mean gradient give
        D_m = <∇E[|o| | incorrect], ḡ_m> / <∇E[r], ḡ_m>,
    tokens of incorrect-completion length gained per unit of expected-reward gain
    (scale-free: methods compared at equal progress). The expected update direction
    is the expected gradient (plain SGD).
(2) Training. ``outer_steps`` steps of ``prompts_per_step`` groups of G completions,
    μ = ``inner_steps`` steps per batch, β = 0 (the weightings compared alone), with
    two optimizers: Adam (state carried over, as peers do) and normalised gradient
    descent (NGD: θ ← θ − η g/||g||, a fixed-length step along the gradient direction,
    i.e. along the direction D is measured on). Every optimizer x method x seed runs
    in one vmapped, jitted program (common random numbers across methods). The exact
    E[r], E[|o| | correct] and E[|o| | incorrect] are recorded every step. Methods are
    compared at matched progress: E[|o| | incorrect] read at the first step each run
    reaches given expected-reward levels.

Methods: grpo (1/|o_i|), dr_grpo (constant), dapo (1/Σ_j|o_j| per group), gspo
(1/|o_i| with a sequence ratio), prefix-debiased grpo, and a positive control that
exaggerates the length weighting: ω_i ∝ 1/|o_i|² (grpo with A_i·mean|o|/|o_i|).

Criteria (fixed before the run; ``_claims``), 95% Student-t intervals over seeds:

- Claim (Dr. GRPO's critique) — reproduced iff the paired difference D_grpo − D_dr_grpo
  at θ_0 lies above 0. Not reproduced iff it lies below 0, or it contains 0 while
  the positive control's D_control − D_dr_grpo lies above 0 and the grpo
  interval's upper end is below a quarter of the control's lower end (the design
  would have seen a quarter of the control's effect). Otherwise inconclusive.
- Positive control (design power) — reproduced iff D_control − D_dr_grpo at θ_0
  lies above 0; not reproduced iff below 0.
- Training at matched progress, per optimizer — for each seed, the mean over 5 reward
  levels (from 10% to 100% of the way between θ_0's E[r] and the highest E[r] both
  runs reach) of E[|o| | incorrect]_grpo − E[|o| | incorrect]_dr_grpo: reproduced iff
  its interval lies above 0, not reproduced iff below 0, inconclusive otherwise (also
  when a seed's runs gain less than 0.05 in E[r]).

Fewer than 5 seeds with a defined statistic decide nothing. Disclosure: the NGD arm
and its claim were added after a first quick run with Adam alone (Adam's training
claim came out inconclusive); the NGD claim's criterion was written before that arm
ran, and its step length was chosen from reward curves only (progress comparable to
Adam's).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import prefix
from analysis import tabular as tab
from experiments.common import MIN_SEEDS, Claim, Context, finish, markdown_table, new_figure, save_figure, verdict
from experiments.stats import Interval, mean_ci, paired_diff_ci
from jgrpo.policies import tabular_prompt_logprob, tabular_prompt_sample

NAME = "length_bias"
VOCAB = 5
EOS, R, C, W, F = range(VOCAB)
CONTROL = "1/|o|² control"
METHODS = ("grpo", "dr_grpo", "dapo", "gspo", "grpo+debias", CONTROL)
REQUIRED = ("grpo", "dr_grpo", CONTROL)  # what the claims read
# "pretrained" prior logits of (EOS, R, C, W, F), and after an answer token (prev = C or W)
PRIOR = (-2.5, 1.2, -1.0, -1.5, 0.0)
PRIOR_AFTER_ANSWER = (0.5, 0.0, -1.0, -1.0, 0.5)
LEVELS = 5
MIN_GAIN = 0.05


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes of one run (frozen; :func:`_config` gives the named ones).

    Attributes:
      difficulties: d_k, the R tokens prompt k needs before its answer.
      methods: a subset of :data:`METHODS` containing :data:`REQUIRED`.
      length: T, the longest completion.
      init_scale: std of the noise added to the prior logits.
      seeds: independent initial policies and sample streams (>= 5 for a decisive verdict).
      outer_steps, prompts_per_step, group_size, inner_steps: training.
      learning_rate: Adam's η; ngd_learning_rate: the step length of normalised gradient descent.
      drift_groups: groups sampled for each exact drift measurement.
      checkpoints: outer steps (of the dr_grpo run) at which the drift is also measured; 0 = θ_0.
    """

    difficulties: tuple[int, ...] = (2, 4, 6, 8)
    methods: tuple[str, ...] = METHODS
    length: int = 32
    init_scale: float = 0.5
    seeds: int = 6
    outer_steps: int = 300
    prompts_per_step: int = 8
    group_size: int = 8
    inner_steps: int = 2
    learning_rate: float = 0.02
    ngd_learning_rate: float = 0.25
    drift_groups: int = 1024
    checkpoints: tuple[int, ...] = (0, 100, 200)

    def __post_init__(self) -> None:
        if not self.difficulties or min(self.difficulties) < 1:
            raise ValueError(f"Config.difficulties must be ints >= 1, got {self.difficulties}")
        if not set(REQUIRED) <= set(self.methods) <= set(METHODS):
            raise ValueError(f"Config.methods must contain {REQUIRED} and lie in {METHODS}, got {self.methods}")
        if max(self.difficulties) + 2 > self.length:
            raise ValueError(
                f"Config.length must leave room for the hardest prompt: max(difficulties) + 2 = "
                f"{max(self.difficulties) + 2} > length = {self.length}"
            )
        if self.seeds < 2 or self.group_size < 2 or self.inner_steps < 1 or self.outer_steps < 2:
            raise ValueError(
                "Config.seeds >= 2, group_size >= 2, inner_steps >= 1 and outer_steps >= 2 required, got "
                f"{self.seeds}, {self.group_size}, {self.inner_steps}, {self.outer_steps}"
            )
        if self.prompts_per_step % len(self.difficulties) or self.drift_groups % len(self.difficulties):
            raise ValueError(
                f"Config.prompts_per_step and drift_groups must be multiples of the number of prompts "
                f"{len(self.difficulties)}, got {self.prompts_per_step}, {self.drift_groups}"
            )
        if not self.checkpoints or self.checkpoints[0] != 0 or list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"Config.checkpoints must be increasing and start at 0, got {self.checkpoints}")
        if self.checkpoints[-1] >= self.outer_steps:
            raise ValueError(f"Config.checkpoints must be < outer_steps = {self.outer_steps}, got {self.checkpoints}")
        if not (self.learning_rate > 0 and self.ngd_learning_rate > 0):
            raise ValueError(
                f"Config.learning_rate and ngd_learning_rate must be > 0, got {self.learning_rate}, "
                f"{self.ngd_learning_rate}"
            )


def _config(scale: str) -> Config:
    """``quick`` (CPU, < 3 min), ``paper`` (accelerator) and ``test`` (seconds)."""
    if scale == "quick":
        return Config()
    if scale == "paper":
        return Config(
            difficulties=(2, 4, 6, 8, 10, 12),
            length=48,
            seeds=16,
            outer_steps=1000,
            prompts_per_step=24,
            group_size=16,
            drift_groups=6144,
            checkpoints=(0, 250, 500, 750),
        )
    if scale == "test":
        return Config(
            difficulties=(1, 3),
            length=8,
            seeds=2,
            outer_steps=6,
            prompts_per_step=2,
            group_size=4,
            drift_groups=16,
            checkpoints=(0, 3),
            methods=REQUIRED,
        )
    raise ValueError(f"scale must be 'quick', 'paper' or 'test', got {scale!r}")


# ----------------------------------------------------------------------------- the task


def automaton(difficulty: int, max_difficulty: int) -> tab.Automaton:
    """States 0..d (R tokens seen, capped at d), then d_max + 1 = correct, d_max + 2 = incorrect (absorbing).

    All prompts share S = d_max + 3 states (states above d are unreachable), so their
    automata stack into one ``[K, S, V]`` array.
    """
    s_count = max_difficulty + 3
    correct, incorrect = max_difficulty + 1, max_difficulty + 2
    t = np.tile(np.arange(s_count, dtype=np.int32)[:, None], (1, VOCAB))  # F, EOS and unreachable states stay
    for s in range(difficulty + 1):
        t[s, R] = min(s + 1, difficulty)
        t[s, C] = correct if s == difficulty else incorrect
        t[s, W] = incorrect
    return tab.automaton(t)


def transitions(cfg: Config) -> jax.Array:
    """``[K, S, V]`` the stacked automata of the prompts."""
    d_max = max(cfg.difficulties)
    return jnp.stack([automaton(d, d_max).transition for d in cfg.difficulties])


def initial_policy(seed: int, cfg: Config) -> dict[str, jax.Array]:
    """``{"logits": [K, T, V+1, V]}``: the prior plus i.i.d. normal noise (std ``init_scale``)."""
    k = len(cfg.difficulties)
    logits = np.tile(np.asarray(PRIOR, np.float64), (k, cfg.length, VOCAB + 1, 1))
    logits[:, :, C, :] = PRIOR_AFTER_ANSWER
    logits[:, :, W, :] = PRIOR_AFTER_ANSWER
    logits += cfg.init_scale * np.random.default_rng(seed).standard_normal(logits.shape)
    return {"logits": jnp.asarray(logits, jnp.float32)}


def rewards_of(tokens, mask, prompt, trans):
    """``[B, G]`` 1 iff the automaton of each completion's prompt ends in the correct state."""
    correct = trans.shape[1] - 2

    def run(trans_k, toks, m):  # toks, m [G, T]
        def step(state, x):
            tok, mk = x
            return jnp.where(mk > 0, trans_k[state, tok], state), None

        state, _ = jax.lax.scan(step, jnp.zeros(toks.shape[0], jnp.int32), (toks.T, m.T))
        return (state == correct).astype(jnp.float32)

    return jax.vmap(run)(trans[prompt], tokens, mask)


def exact_metrics(params, trans, length: int) -> dict[str, jax.Array]:
    """Exact E[r], E[|o|], E[|o| | correct], E[|o| | incorrect], P(|o| = T) over the uniform prompt mixture."""
    correct = trans.shape[1] - 2

    def one(table, tr):
        return tab.terminal_distribution({"logits": table}, tab.Automaton(tr), eos=EOS, length=length)

    p = jax.vmap(one)(params["logits"], trans)  # [K, S, T+1]
    lens = jnp.arange(length + 1, dtype=p.dtype)
    p_len = jnp.sum(p, axis=1)  # [K, T+1]
    p_cor = p[:, correct]  # [K, T+1]
    e_r = jnp.mean(jnp.sum(p_cor, -1))
    e_l = jnp.mean(jnp.sum(p_len * lens, -1))
    e_lc = jnp.mean(jnp.sum(p_cor * lens, -1))
    return {
        "reward": e_r,
        "length": e_l,
        "length_correct": e_lc / e_r,
        "length_incorrect": (e_l - e_lc) / (1.0 - e_r),
        "truncated": jnp.mean(p_len[:, length]),
        "reward_per_prompt": jnp.sum(p_cor, -1),
    }


def _specs(methods=METHODS):
    base = {
        "grpo": jgrpo.methods.get("grpo", beta=0.0),
        "dr_grpo": jgrpo.methods.get("dr_grpo", beta=0.0),
        "dapo": jgrpo.methods.get("dapo"),
        "gspo": jgrpo.methods.get("gspo"),
        "grpo+debias": jgrpo.methods.get("grpo", beta=0.0, prefix_debias=True),
        CONTROL: jgrpo.methods.get("grpo", beta=0.0),
    }
    return tuple((m, base[m]) for m in methods)


def control_advantages(rewards, mask):
    """A_i · mean_j|o_j| / |o_i|: with grpo's α = 1/(G|o_i|σ) the weight becomes ∝ 1/|o_i|²."""
    lengths = jnp.sum(mask, axis=-1)
    adv = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    return adv * jnp.mean(lengths, axis=-1, keepdims=True) / jnp.maximum(lengths, 1.0)


def _batch_for(name, batch):
    if name == CONTROL:
        return dataclasses.replace(batch, advantages=control_advantages(batch.rewards, batch.mask))
    return batch


def _prompts(cfg: Config, n: int):
    return jnp.tile(jnp.arange(len(cfg.difficulties), dtype=jnp.int32), n // len(cfg.difficulties))


def _sample_batch(cfg: Config, params, trans, key, n: int):
    prompt = _prompts(cfg, n)
    s = tabular_prompt_sample(
        params, prompt, key, group_size=cfg.group_size, max_len=cfg.length, eos_id=EOS, pad_id=EOS
    )
    logp = tabular_prompt_logprob(params, s.tokens, prompt)
    batch = jgrpo.GroupBatch(
        mask=s.mask,
        logp_old=jax.lax.stop_gradient(logp),
        rewards=rewards_of(s.tokens, s.mask, prompt, trans),
        tokens=s.tokens,
    )
    return batch, prompt


# ----------------------------------------------------------------------------- (1) exact drift


def _make_drift(cfg: Config):
    """``(params, key) -> {method: {"incorrect", "reward", "correct"}: [groups]}`` directional derivatives."""
    specs = _specs(cfg.methods)
    trans = transitions(cfg)

    def functionals(p):
        m = exact_metrics(p, trans, cfg.length)
        return m["length_incorrect"], m["reward"], m["length_correct"]

    @jax.jit
    def drift(params, key):
        jac = jax.jacrev(lambda p: jnp.stack(functionals(p)))(params)  # leaves [3, ...]
        batch, prompt = _sample_batch(cfg, params, trans, key, cfg.drift_groups)

        def logprob_fn(p, tokens):
            return tabular_prompt_logprob(p, tokens, prompt)

        logp, dlogp = prefix.directional_logp(logprob_fn, params, batch.tokens, jac)  # shared by every method
        tree = prefix.prefix_tree(batch.tokens, batch.mask)
        out = {}
        for name, spec in specs:
            e = prefix.effects_of(prefix.coefficients(spec, logp, _batch_for(name, batch)), dlogp, tree)
            out[name] = {"incorrect": e.total[0], "reward": e.total[1], "correct": e.total[2]}
        return out

    return drift


def _drift_summary(out) -> dict[str, float]:
    inc, rew, cor = (np.asarray(out[k], np.float64).mean() for k in ("incorrect", "reward", "correct"))
    ok = rew > 0
    return {
        "reward_gain": float(rew),
        "incorrect_per_gain": float(inc / rew) if ok else math.nan,
        "correct_per_gain": float(cor / rew) if ok else math.nan,
    }


# ----------------------------------------------------------------------------- (2) training


def _make_trainer(cfg: Config):
    """``(params0, sel [M], adam, key) -> (records [N], checkpoints [C, ...])`` per run; vmapped, one compile.

    ``sel`` is a one-hot selector over ``cfg.methods`` (the loss is Σ_m sel_m loss_m, so every method
    shares one program); ``adam`` (a traced bool) picks Adam (state carried across outer steps) or
    normalised gradient descent θ ← θ − η g/||g|| (a step of fixed length along the gradient direction).
    """
    specs = _specs(cfg.methods)
    trans = transitions(cfg)
    opt = optax.adam(cfg.learning_rate)
    ckpts = jnp.asarray(cfg.checkpoints, jnp.int32)

    def one_run(params0, sel, adam, key):
        def outer(carry, xs):
            params, state, buf = carry
            n, key_n = xs
            batch, prompt = _sample_batch(cfg, params, trans, key_n, cfg.prompts_per_step)
            batches = [_batch_for(name, batch) for name, _ in specs]

            def loss_fn(p):
                logp = tabular_prompt_logprob(p, batch.tokens, prompt)
                return sum(
                    sel[k] * jgrpo.loss(spec, logp, b)[0]
                    for k, ((_, spec), b) in enumerate(zip(specs, batches, strict=True))
                )

            def inner(c, _):
                p, s = c
                g = jax.grad(loss_fn)(p)
                u_adam, s = opt.update(g, s, p)
                scale = cfg.ngd_learning_rate / jnp.maximum(optax.tree.norm(g), 1e-30)
                u = jax.tree.map(lambda a, x: jnp.where(adam, a, -scale * x), u_adam, g)
                return (optax.apply_updates(p, u), s), None

            hit = ckpts == n
            buf = jax.tree.map(lambda b, x: jnp.where(hit.reshape((-1,) + (1,) * x.ndim), x[None], b), buf, params)
            rec = exact_metrics(params, trans, cfg.length)
            lengths = jnp.sum(batch.mask, -1)
            rec["batch_reward"] = jnp.mean(batch.rewards)
            rec["batch_length"] = jnp.mean(lengths)
            (params, state), _ = jax.lax.scan(inner, (params, state), None, length=cfg.inner_steps)
            return (params, state, buf), rec

        buf0 = jax.tree.map(lambda x: jnp.zeros((len(cfg.checkpoints),) + x.shape, x.dtype), params0)
        keys = jax.random.split(key, cfg.outer_steps)
        (_, _, buf), recs = jax.lax.scan(outer, (params0, opt.init(params0), buf0), (jnp.arange(cfg.outer_steps), keys))
        return recs, buf

    return jax.jit(jax.vmap(one_run))


def matched_progress(reward, length_incorrect, other_reward, other_length, levels: int = LEVELS):
    """Mean over reward levels of (length_incorrect − other_length) at the first step each run reaches the level.

    Args:
      reward, length_incorrect: ``[N]`` exact series of one run; ``other_*`` of the run compared with.

    Returns:
      ``(mean difference, top − start)``: NaN difference when the runs gain less than ``MIN_GAIN``.
      Levels: ``start + f (top − start)``, f = 0.1 .. 1 (``levels`` of them), start = the common initial
      E[r], top = the highest E[r] both runs reach.
    """
    r1, l1, r2, l2 = (np.asarray(x, np.float64) for x in (reward, length_incorrect, other_reward, other_length))
    start, top = max(r1[0], r2[0]), min(r1.max(), r2.max())
    if not top - start >= MIN_GAIN:
        return math.nan, float(top - start)
    diffs = []
    for lv in start + np.linspace(0.1, 1.0, levels) * (top - start):
        i, j = int(np.argmax(r1 >= lv - 1e-12)), int(np.argmax(r2 >= lv - 1e-12))
        diffs.append(l1[i] - l2[j])
    return float(np.mean(diffs)), float(top - start)


# ----------------------------------------------------------------------------- claims (pure functions of the numbers)
def _decided(ok: bool | None, seeds: int) -> str:
    """The verdict of a decision rule; fewer than ``MIN_SEEDS`` seeds decide nothing."""
    return verdict(ok if seeds >= MIN_SEEDS else None)


def _ci(values) -> Interval:
    """:func:`mean_ci` over the finite values (a seed whose statistic is undefined is left out)."""
    v = [float(x) for x in values if math.isfinite(x)]
    return mean_ci(v) if len(v) >= 2 else Interval(-math.inf, math.inf, math.nan, len(v))


def _paired(a, b) -> Interval:
    """:func:`paired_diff_ci` over the seeds where both values are finite."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return Interval(-math.inf, math.inf, math.nan, len(pairs))
    return paired_diff_ci([x for x, _ in pairs], [y for _, y in pairs])


def _fmt(ci) -> str:
    return ci.fmt("+.3f")


OPTIMIZERS = (("adam", "Adam"), ("ngd", "normalised gradient descent"))


def _claims(drift0: dict, matched: dict) -> list[Claim]:
    """The pre-stated decision rules (module docstring) applied to the measured numbers.

    Args:
      drift0: ``{method: [seeds]}`` D_m = ΔE[|o| | incorrect] / ΔE[r] at θ_0 for "grpo", "dr_grpo" and the control.
      matched: ``{optimizer: [seeds]}`` the mean matched-progress difference E[|o| | inc]_grpo − E[|o| | inc]_dr_grpo
        per seed (NaN: no progress), for "adam" and "ngd".
    """
    d = _paired(drift0["grpo"], drift0["dr_grpo"])
    c = _paired(drift0[CONTROL], drift0["dr_grpo"])
    seeds = min(d.n, c.n)  # seeds with a finite statistic
    power = c.lo > 0
    if d.lo > 0:
        ok = True
    elif d.hi < 0 or (power and not d.excludes(0) and d.hi < c.lo / 4):
        ok = False
    else:
        ok = None
    claims = [
        Claim(
            claim="1/|o_i| (grpo) lets incorrect completions grow longer than constant weights (dr_grpo) "
            "(Dr. GRPO's critique, cited by the paper)",
            kind="experiment",
            criterion="D = ΔE[|o| | incorrect] / ΔE[r] along each method's expected first-step gradient at θ_0 "
            "(exact, length-coupled task): paired D_grpo − D_dr_grpo > 0 (95% t-interval over seeds)",
            falsified_if="the interval below 0, or containing 0 with its upper end below a quarter of the "
            "positive control's lower end (D_control − D_dr_grpo) while the control is detected",
            measured=f"D_grpo − D_dr_grpo {_fmt(d)} tokens per unit E[r] (D_grpo {_fmt(_ci(drift0['grpo']))}, "
            f"D_dr_grpo {_fmt(_ci(drift0['dr_grpo']))})",
            verdict=_decided(ok, seeds),
            proposition="Sec. 4 (Dr. GRPO)",
            ci=(d.lo, d.hi),
            seeds=seeds,
        ),
        Claim(
            claim="positive control (design power): ω ∝ 1/|o_i|² makes incorrect completions grow longer than "
            "constant weights",
            kind="experiment",
            criterion="paired D_control − D_dr_grpo > 0 at θ_0 (95% t-interval over seeds)",
            falsified_if="the interval below 0",
            measured=f"D_control − D_dr_grpo {_fmt(c)}",
            verdict=_decided(True if power else (False if c.hi < 0 else None), seeds),
            proposition="control",
            ci=(c.lo, c.hi),
            seeds=seeds,
        ),
    ]
    for opt, label in OPTIMIZERS:
        if opt in matched:
            claims.append(_training_claim(label, matched[opt]))
    return claims


def _training_claim(label: str, matched: list[float]) -> Claim:
    valid = [m for m in matched if math.isfinite(m)]
    if len(valid) >= 2:
        mc = _ci(valid)
        ok = None if len(valid) < len(matched) else (True if mc.lo > 0 else (False if mc.hi < 0 else None))
        measured = f"E[|o| | incorrect]_grpo − E[|o| | incorrect]_dr_grpo {_fmt(mc)} tokens"
        ci = (mc.lo, mc.hi)
    else:
        ok, ci = None, (-math.inf, math.inf)
        measured = f"only {len(valid)} of {len(matched)} seeds made progress ≥ {MIN_GAIN}"
    if len(valid) < len(matched):
        measured += f" ({len(matched) - len(valid)} seeds without progress ≥ {MIN_GAIN})"
    seeds = max(len(valid), 1)
    return Claim(
        claim=f"over training ({label}), grpo's incorrect completions are longer than dr_grpo's at equal expected "
        "reward",
        kind="experiment",
        criterion=f"per seed, mean over {LEVELS} matched E[r] levels of the exact E[|o| | incorrect] difference "
        "grpo − dr_grpo (same seeds and samples streams); 95% t-interval over seeds above 0",
        falsified_if="the interval below 0",
        measured=measured,
        verdict=_decided(ok, seeds),
        proposition="Sec. 4 (Dr. GRPO)",
        ci=ci,
        seeds=seeds,
    )


# ----------------------------------------------------------------------------- run, report


def run(ctx: Context):
    return _run(ctx, _config(ctx.scale))


def _run(ctx: Context, cfg: Config):
    t0 = time.perf_counter()
    methods = cfg.methods
    m, o = len(methods), len(OPTIMIZERS)
    seeds = [1000 * ctx.seed + s for s in range(cfg.seeds)]
    params0 = [initial_policy(s, cfg) for s in seeds]
    stack = jax.tree.map(lambda *x: jnp.stack(x), *params0)
    # run r = (seed, optimizer, method) in C order; the same policy and keys for every (optimizer, method) of a seed
    runs_params = jax.tree.map(lambda x: jnp.repeat(x, o * m, axis=0), stack)
    sel = jnp.tile(jnp.eye(m, dtype=jnp.float32), (cfg.seeds * o, 1))
    adam = jnp.tile(jnp.repeat(jnp.asarray([opt == "adam" for opt, _ in OPTIMIZERS]), m), cfg.seeds)
    base = jax.random.key(ctx.seed)
    keys = jnp.repeat(jax.random.split(jax.random.fold_in(base, 1), cfg.seeds), o * m, axis=0)
    ctx.progress(0.02, f"training {o * m * cfg.seeds} runs x {cfg.outer_steps} steps (one compile)")
    recs, ckpts = jax.device_get(_make_trainer(cfg)(runs_params, sel, adam, keys))
    t_train = time.perf_counter() - t0
    series = {
        k: np.asarray(v, np.float64).reshape((cfg.seeds, o, m) + np.shape(v)[1:]) for k, v in recs.items()
    }  # [S, O, M, N, ...]
    ckpts = jax.tree.map(lambda x: x.reshape((cfg.seeds, o, m) + x.shape[1:]), ckpts)
    ctx.progress(0.6, "exact drift")
    t1 = time.perf_counter()
    drift = _make_drift(cfg)
    i_dr = methods.index("dr_grpo")
    drifts = {m_: [[None] * cfg.seeds for _ in cfg.checkpoints] for m_ in methods}
    for s in range(cfg.seeds):
        for c in range(len(cfg.checkpoints)):
            p = jax.tree.map(lambda x, s=s, c=c: jnp.asarray(x[s, 0, i_dr, c]), ckpts)  # the Adam dr_grpo run
            key = jax.random.fold_in(jax.random.fold_in(base, 2), 1000 * s + c)
            out = jax.device_get(drift(p, key))
            for name in methods:
                drifts[name][c][s] = _drift_summary(out[name])
        ctx.progress(0.6 + 0.3 * (s + 1) / cfg.seeds, f"exact drift, seed {s + 1}/{cfg.seeds}")
    t_drift = time.perf_counter() - t1
    drift0 = {name: [drifts[name][0][s]["incorrect_per_gain"] for s in range(cfg.seeds)] for name in methods}

    def matched_for(k_opt, method, key):
        out = [
            matched_progress(
                series["reward"][s, k_opt, methods.index(method)],
                series[key][s, k_opt, methods.index(method)],
                series["reward"][s, k_opt, i_dr],
                series[key][s, k_opt, i_dr],
            )
            for s in range(cfg.seeds)
        ]
        return [d for d, _ in out], [g for _, g in out]

    matched, gains, described = {}, {}, []
    for k_opt, (opt, label) in enumerate(OPTIMIZERS):
        matched[opt], gains[opt] = matched_for(k_opt, "grpo", "length_incorrect")
        for method in methods:
            if method == "dr_grpo":
                continue
            row = [label, method]
            for key in ("length_incorrect", "length_correct"):
                diffs = [x for x in matched_for(k_opt, method, key)[0] if math.isfinite(x)]
                row.append(_ci(diffs).fmt("+.2f") if len(diffs) >= 2 else "n/a")
            described.append(tuple(row))
    claims = _claims(drift0, matched)
    ctx.progress(0.95, "figure")
    _figure(ctx, cfg, series, drifts)
    rows = []
    last = max(1, cfg.outer_steps // 10)
    for j, name in enumerate(methods):
        d = [
            _ci([drifts[name][c][s]["incorrect_per_gain"] for s in range(cfg.seeds)])
            for c in range(min(2, len(cfg.checkpoints)))
        ]
        row = [name, d[0].fmt("+.3f"), d[1].fmt("+.3f") if len(d) > 1 else ""]
        for k_opt in range(o):
            row += [
                _ci(series["reward"][:, k_opt, j, -last:].mean(-1)).fmt(".3f"),
                _ci(series["length_correct"][:, k_opt, j, -last:].mean(-1)).fmt(".2f"),
                _ci(series["length_incorrect"][:, k_opt, j, -last:].mean(-1)).fmt(".2f"),
            ]
        rows.append(tuple(row))
    first = {k: float(series[k][:, 0, 0, 0].mean()) for k in ("reward", "length", "length_correct", "length_incorrect")}
    step1 = cfg.checkpoints[1] if len(cfg.checkpoints) > 1 else "-"
    header = ["method", "D at θ_0", f"D at step {step1}"]
    for _, label in OPTIMIZERS:
        short = "Adam" if label == "Adam" else "NGD"
        header += [f"{short}: E[r]", f"{short}: E[|o| | cor]", f"{short}: E[|o| | inc]"]
    table = (
        f"D = ΔE[|o| | incorrect] / ΔE[r] along the expected gradient (exact); E[·] over the last {last} steps "
        "(exact); mean [95% CI] over seeds.\n\n"
        + markdown_table(header, rows)
        + "\nMatched progress, method − dr_grpo (tokens; mean over 5 E[r] levels per seed, [95% CI]); the "
        "E[|o| | correct] column and the non-grpo rows are descriptive, not pre-stated claims.\n\n"
        + markdown_table(["optimizer", "method", "ΔE[|o| | incorrect]", "ΔE[|o| | correct]"], described)
    )
    notes = (
        f"Task: {len(cfg.difficulties)} prompts needing {', '.join(map(str, cfg.difficulties))} reasoning tokens "
        f"before the answer; completions up to {cfg.length} tokens. At θ_0 (mean over {cfg.seeds} seeds): E[r] "
        f"{first['reward']:.3f}, E[|o|] {first['length']:.2f}, E[|o| | correct] {first['length_correct']:.2f}, "
        f"E[|o| | incorrect] {first['length_incorrect']:.2f}. Training: {cfg.outer_steps} outer steps of "
        f"{cfg.prompts_per_step} groups x G = {cfg.group_size}, μ = {cfg.inner_steps} steps per batch with Adam (lr "
        f"{cfg.learning_rate}, state carried over) or normalised gradient descent (NGD: step length "
        f"{cfg.ngd_learning_rate} along g/||g||, i.e. along the direction the drift D is measured on), β = 0; "
        f"{o * m * cfg.seeds} runs ({o} optimizers x {m} methods x {cfg.seeds} seeds) in one vmapped program with "
        "common random numbers; all lengths and rewards are exact expectations of the tabular policy. Drift D: "
        f"{cfg.drift_groups} groups per measurement, exact directional derivatives, at θ_0 and at steps "
        f"{', '.join(map(str, cfg.checkpoints[1:]))} of each seed's Adam dr_grpo run (every method on the same "
        "groups). Matched-progress E[r] gain per seed: "
        + "; ".join(f"{label}: {', '.join(f'{g:.2f}' for g in gains[opt])}" for opt, label in OPTIMIZERS)
        + f". Timings: training {t_train:.0f} s, drift {t_drift:.0f} s. The NGD arm and its claim were added "
        "after a first run with Adam alone (its claim was stated before that arm ran)."
    )
    curves = {
        opt: {
            name: {
                k: series[k][:, k_opt, j].tolist()
                for k in ("reward", "length_correct", "length_incorrect", "length", "truncated", "batch_reward")
            }
            for j, name in enumerate(methods)
        }
        for k_opt, (opt, _) in enumerate(OPTIMIZERS)
    }
    return finish(
        ctx,
        NAME,
        "Length bias: lengths of correct and incorrect completions on a length-coupled task",
        {
            "config": dataclasses.asdict(cfg),
            "curves": curves,
            "drift": {name: {str(step): drifts[name][c] for c, step in enumerate(cfg.checkpoints)} for name in methods},
            "matched_progress": {"grpo_minus_dr_grpo": matched, "reward_gain": gains},
            "timings": {"train": t_train, "drift": t_drift},
        },
        table,
        claims,
        "length_bias.png",
        notes,
    )


def _band(ax, x, y, label):
    """Mean over seeds (rows of y) with a 95% t-band."""
    y = np.asarray(y, np.float64)
    cis = [_ci(y[:, i]) for i in range(y.shape[1])]
    mean = np.array([c.center for c in cis])
    lo, hi = np.array([c.lo for c in cis]), np.array([c.hi for c in cis])
    (line,) = ax.plot(x, mean, label=label, lw=1.2)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def _at_levels(reward, value, grid):
    """``value`` at the first step the running max of ``reward`` reaches each level of ``grid``, per seed."""
    idx = [np.minimum(np.searchsorted(np.maximum.accumulate(r), grid), r.size - 1) for r in reward]
    return np.stack([v[i] for v, i in zip(value, idx, strict=True)])


def _figure(ctx: Context, cfg: Config, series: dict, drifts: dict) -> None:
    fig, axes = new_figure(4, 2, size=(4.6, 3.6))
    methods = cfg.methods
    steps = np.arange(cfg.outer_steps)
    for k_opt, (_, label) in enumerate(OPTIMIZERS):
        row = axes[k_opt]
        for j, name in enumerate(methods):
            _band(row[0], steps, series["reward"][:, k_opt, j], name)
            _band(row[1], steps, series["length_correct"][:, k_opt, j], name)
            r, li = series["reward"][:, k_opt, j], series["length_incorrect"][:, k_opt, j]
            grid = np.linspace(r[:, 0].mean(), np.median(r.max(-1)), 30)
            _band(row[2], grid, _at_levels(r, li, grid), name)
            if k_opt == 0:
                _band(row[3], steps, li, name)
        titles = (
            f"{label}: exact expected reward",
            f"{label}: E[|o| | correct]",
            f"{label}: E[|o| | incorrect] at matched progress",
        )
        xlabels = ("outer step", "outer step", "expected reward reached (first passage)")
        ylabels = ("E[r]", "tokens", "tokens")
        for ax, title, xl, yl in zip(row[:3], titles, xlabels, ylabels, strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.legend(fontsize=6)
    ax = axes[0, 3]
    ax.set_title("Adam: E[|o| | incorrect] over training", fontsize=9)
    ax.set_xlabel("outer step")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=6)
    ax = axes[1, 3]
    cis = [_ci([drifts[n][0][s]["incorrect_per_gain"] for s in range(cfg.seeds)]) for n in methods]
    x = np.arange(len(methods))
    ax.bar(
        x,
        [ci.center for ci in cis],
        yerr=[[ci.center - ci.lo for ci in cis], [ci.hi - ci.center for ci in cis]],
        capsize=3,
        color=[f"C{i}" for i in range(len(methods))],
    )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, methods, rotation=45, fontsize=8, ha="right")
    ax.set_ylabel("ΔE[|o| | incorrect] / ΔE[r] (95% CI)")
    ax.set_title("exact drift along the expected gradient at θ_0", fontsize=9)
    fig.tight_layout()
    save_figure(fig, ctx.out / "length_bias.png")
