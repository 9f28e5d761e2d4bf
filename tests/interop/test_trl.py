"""jgrpo's ``flavor="trl"`` presets and TRL options against the real TRL 1.16 (``make interop``).

For each case the same data is fed to both libraries, and the loss value and its
gradient with respect to the current log-probabilities (and, for the entropy
options, the entropies) are compared in float64:

- jgrpo: ``jax.grad`` of ``jgrpo.loss(spec, logp, batch)[0]`` on ``[B, G, T]``;
- TRL: ``GRPOTrainer._compute_loss`` itself, on a trainer object made without
  ``__init__`` (no model, no generation): the attributes ``_compute_loss`` reads are
  set from the case's ``GRPOConfig`` fields, ``_get_per_token_logps_and_entropies``
  returns float64 leaf tensors (log-probabilities and entropies), and the
  accelerator is a single-process stub (gather/reduce/pad are the identity).
  Advantages follow ``GRPOTrainer._generate_and_score_completions`` (TRL 1.16,
  ``multi_objective_aggregation`` and ``scale_rewards`` branches) with TRL's own
  ``trl.trainer.utils.nanstd``; that function also samples and scores
  completions, so it cannot be called on given rewards.

Run ``python -m tests.interop.test_trl`` for the table of measured errors that
``docs/trl_interop.md`` reports.
"""

from __future__ import annotations

import dataclasses
import types
from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from trl import GRPOConfig  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

import jgrpo  # noqa: E402

pytestmark = pytest.mark.interop

RTOL = 1e-6  # float64 on both sides; TRL computes the top-entropy quantile in float32 (away from ties here)


# ---------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class Data:
    """One batch, float64 numpy ``[B, G, T]``; rewards ``[B, G, K]`` (K reward functions)."""

    name: str
    mask: np.ndarray
    logp: np.ndarray
    logp_old: np.ndarray
    logp_ref: np.ndarray
    entropy: np.ndarray
    rewards: np.ndarray


def _make(name, seed, rewards, lengths, t, scales):
    rng = np.random.default_rng(seed)
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim == 2:
        rewards = rewards[..., None]
    lengths = np.asarray(lengths)
    b, g = lengths.shape
    mask = (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.float64)
    log_ratio = np.asarray(scales, np.float64)[..., None] * rng.normal(size=(b, g, t))
    ref_gap = 0.3 * rng.normal(size=(b, g, t))
    logp = -rng.uniform(0.05, 3.0, size=(b, g, t)) + np.minimum(0.0, np.minimum(log_ratio, ref_gap))
    entropy = rng.uniform(0.0, 3.0, size=(b, g, t))
    return Data(name, mask, logp, logp - log_ratio, logp - ref_gap, entropy, rewards)


def datasets() -> tuple[Data, ...]:
    """``g4``: B = 3, G = 4, one reward function: an empty completion, an all-equal group (rewards
    exactly representable, so TRL's (r - mean)/(std + 1e-4) is exactly 0 there too), ratios inside
    and outside [0.8, 1.28], near-on-policy rows (inside GSPO's 3e-4 range) and far ones (VESPO).
    ``k2``: B = 2, G = 4, two reward functions (multi-objective aggregation)."""
    g4 = _make(
        "g4",
        seed=1,
        rewards=[[1, 0, 0, 1], [0.5, 0.5, 0.5, 0.5], [0, 1, 0.25, 0]],
        lengths=[[3, 0, 6, 2], [6, 4, 1, 5], [5, 6, 2, 4]],
        t=6,
        scales=[[1e-5, 0.0, 0.3, 1e-5], [0.3, 0.3, 0.3, 0.3], [0.3, 0.5, 1e-5, 0.2]],
    )
    k2 = _make(
        "k2",
        seed=2,
        rewards=[[[1, 0], [0, 0.5], [1, 1], [0, 0]], [[0, 1], [0.5, 1], [1, 0], [0.5, 0.5]]],
        lengths=[[4, 2, 5, 3], [1, 5, 5, 2]],
        t=5,
        scales=[[0.3, 1e-5, 0.2, 0.3], [0.3, 0.3, 1e-5, 0.4]],
    )
    return g4, k2


DATASETS = datasets()


# ---------------------------------------------------------------------------
# TRL's side


def trl_advantages(config: GRPOConfig, rewards_per_func: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Advantages as ``GRPOTrainer._generate_and_score_completions`` (TRL 1.16) computes them.

    Paraphrased from its two ``multi_objective_aggregation`` branches; ``nanstd`` is TRL's.
    """
    k = rewards_per_func.shape[1]
    weights = torch.tensor(config.reward_weights or [1.0] * k, dtype=rewards_per_func.dtype)
    if config.multi_objective_aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        if config.scale_rewards in ("group", "none"):
            std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        else:  # "batch"
            std = nanstd(rewards).expand_as(rewards)
        advantages = rewards - mean
        if config.scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
    else:
        grouped = rewards_per_func.view(-1, num_generations, k)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, k)
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        std = nanstd(rewards).expand_as(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


class _Accelerator:
    """A single process: gather, reduce and pad are the identity."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def trl_trainer(config: GRPOConfig, logp: torch.Tensor, entropy: torch.Tensor):
    """A ``GRPOTrainer`` without ``__init__``: the attributes ``_compute_loss`` reads, from ``config``."""
    cls = grpo_trainer.GRPOTrainer
    trainer = cls.__new__(cls)
    values = dict(
        args=config,
        loss_type=config.loss_type,
        importance_sampling_level=config.importance_sampling_level,
        top_entropy_quantile=config.top_entropy_quantile,
        entropy_coef=config.entropy_coef,
        use_adaptive_entropy=False,
        _entropy_bonus_enabled=config.entropy_coef != 0.0,
        beta=config.beta,
        epsilon_low=config.epsilon,
        epsilon_high=config.epsilon_high if config.epsilon_high is not None else config.epsilon,
        off_policy_mask_threshold=config.off_policy_mask_threshold,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        max_completion_length=config.max_completion_length,
        aux_loss_enabled=False,
        accelerator=_Accelerator(),
        model=types.SimpleNamespace(training=True),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    for key, value in values.items():
        object.__setattr__(trainer, key, value)
    trainer.__dict__["current_gradient_accumulation_steps"] = 1
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, entropy, None)
    return trainer


def trl_loss_and_grads(config: GRPOConfig, d: Data):
    """TRL's loss and d loss / d (logp, entropy) reshaped to ``[B, G, T]``."""
    b, g, t = d.mask.shape
    n = b * g
    flat = lambda x: torch.tensor(x.reshape(n, t), dtype=torch.float64)  # noqa: E731
    logp = flat(d.logp).requires_grad_(True)
    entropy = flat(d.entropy).requires_grad_(True)
    rewards = torch.tensor(d.rewards.reshape(n, -1), dtype=torch.float64)
    mask = flat(d.mask)
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": trl_advantages(config, rewards, g),
        "old_per_token_logps": flat(d.logp_old),
        "ref_per_token_logps": flat(d.logp_ref),
        "num_items_in_batch": mask.sum(),
    }
    trainer = trl_trainer(config, logp, entropy)
    loss = trainer._compute_loss(None, inputs)
    assert loss.dtype == torch.float64
    loss.backward()
    grad_e = entropy.grad.numpy().reshape(b, g, t) if entropy.grad is not None else np.zeros((b, g, t))
    return float(loss.detach()), logp.grad.numpy().reshape(b, g, t), grad_e


def jgrpo_loss_and_grads(spec, d: Data):
    with jax.enable_x64(True):
        rewards = d.rewards[..., 0] if d.rewards.shape[-1] == 1 else d.rewards
        batch = jgrpo.GroupBatch(
            mask=jnp.asarray(d.mask),
            logp_old=jnp.asarray(d.logp_old),
            rewards=jnp.asarray(rewards),
            logp_ref=jnp.asarray(d.logp_ref),
            entropy=jnp.asarray(d.entropy),
        )

        def f(lp, ent):
            return jgrpo.loss(spec, lp, batch.replace(entropy=ent))[0]

        value, (g_logp, g_ent) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(d.logp), batch.entropy)
        assert value.dtype == jnp.float64
        return float(value), np.asarray(g_logp), np.asarray(g_ent)


# ---------------------------------------------------------------------------
# Cases: (id, GRPOConfig fields, jgrpo spec)

_BASE = dict(
    output_dir="/tmp/jgrpo-trl-interop",
    report_to=[],
    max_completion_length=512,
    num_generations=4,
    bf16=False,
    use_cpu=True,
)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    trl: tuple  # GRPOConfig fields
    method: str
    overrides: tuple = ()
    data: tuple = ("g4",)

    @property
    def spec(self):
        return jgrpo.methods.get(self.method, flavor="trl", **dict(self.overrides))

    def config(self) -> GRPOConfig:
        return GRPOConfig(**_BASE, **dict(self.trl))


CASES = [
    Case("grpo", (("loss_type", "grpo"), ("beta", 0.0)), "grpo", (("beta", 0.0),)),
    Case("grpo-kl-bias-corrected", (("loss_type", "grpo"), ("beta", 0.04)), "grpo"),
    Case(
        "grpo-kl-plain",
        (("loss_type", "grpo"), ("beta", 0.04), ("use_bias_correction_kl", False)),
        "grpo",
        (("regularizer", "kl"),),
    ),
    Case(
        "grpo-eps-high-delta",
        (("loss_type", "grpo"), ("epsilon_high", 0.28), ("delta", 1.5)),
        "grpo",
        (("beta", 0.0), ("eps_high", 0.28), ("ratio_cap", 1.5)),
    ),
    Case(
        "grpo-scale-batch",
        (("loss_type", "grpo"), ("scale_rewards", "batch")),
        "grpo",
        (("beta", 0.0), ("scale", "batch_std")),
    ),
    Case("dr_grpo", (("loss_type", "dr_grpo"), ("beta", 0.04), ("scale_rewards", "none")), "dr_grpo"),
    Case("dapo", (("loss_type", "dapo"), ("epsilon_high", 0.28)), "dapo"),
    Case("dapo-beta", (("loss_type", "dapo"), ("epsilon_high", 0.28), ("beta", 0.04)), "dapo", (("beta", 0.04),)),
    Case("bnpo", (("loss_type", "bnpo"),), "bnpo"),
    Case(
        "gspo",
        (("loss_type", "grpo"), ("importance_sampling_level", "sequence"), ("epsilon", 3e-4), ("epsilon_high", 4e-4)),
        "gspo",
    ),
    Case(
        "gspo-beta",
        (
            ("loss_type", "grpo"),
            ("importance_sampling_level", "sequence"),
            ("epsilon", 3e-4),
            ("epsilon_high", 4e-4),
            ("beta", 0.04),
        ),
        "gspo",
        (("beta", 0.04),),
    ),
    Case(
        "grpo-sequence-beta",
        (("loss_type", "grpo"), ("importance_sampling_level", "sequence"), ("beta", 0.04)),
        "grpo",
        (("ratio_level", "sequence"),),
    ),
    Case("cispo", (("loss_type", "cispo"), ("epsilon_high", 5.0)), "cispo"),
    Case(
        "cispo-sequence",
        (("loss_type", "cispo"), ("epsilon_high", 5.0), ("importance_sampling_level", "sequence")),
        "cispo",
        (("ratio_level", "sequence"),),
    ),
    Case("sapo", (("loss_type", "sapo"),), "sapo"),
    Case(
        "sapo-sequence",
        (("loss_type", "sapo"), ("importance_sampling_level", "sequence")),
        "sapo",
        (("ratio_level", "sequence"),),
    ),
    Case("vespo", (("loss_type", "vespo"),), "dapo", (("objective", "vespo"),)),
    Case(
        "grpo_v32",
        (("loss_type", "grpo"), ("beta", 0.04), ("scale_rewards", "none"), ("off_policy_mask_threshold", 0.5)),
        "grpo_v32",
    ),
    Case(
        "top-entropy-quantile",
        (("loss_type", "grpo"), ("top_entropy_quantile", 0.3)),
        "grpo",
        (("beta", 0.0), ("top_entropy_quantile", 0.3)),
    ),
    Case(
        "entropy-coef",
        (("loss_type", "grpo"), ("entropy_coef", 0.05), ("beta", 0.04)),
        "grpo",
        (("entropy_coef", 0.05),),
    ),
    Case(
        "entropy-coef-top-quantile-dapo",
        (("loss_type", "dapo"), ("epsilon_high", 0.28), ("entropy_coef", 0.05), ("top_entropy_quantile", 0.5)),
        "dapo",
        (("entropy_coef", 0.05), ("top_entropy_quantile", 0.5)),
    ),
    Case(
        "sum_then_normalize-weights",
        (("loss_type", "grpo"), ("reward_weights", [1.0, 0.5])),
        "grpo",
        (("beta", 0.0), ("reward_weights", (1.0, 0.5))),
        ("k2",),
    ),
    Case(
        "normalize_then_sum",
        (("loss_type", "grpo"), ("multi_objective_aggregation", "normalize_then_sum"), ("reward_weights", [0.5, 2.0])),
        "grpo",
        (("beta", 0.0), ("multi_reward", "normalize_then_sum"), ("reward_weights", (0.5, 2.0))),
        ("k2", "g4"),
    ),
]


@dataclasses.dataclass(frozen=True)
class Errors:
    loss: float  # |jgrpo - trl| / max(|trl|, 1e-300)
    grad: float  # max |jgrpo - trl| / max |trl| over tokens (log-probabilities)
    grad_entropy: float  # same for the entropies (0 when neither has one)
    jgrpo: tuple
    trl: tuple


def errors(case: Case, d: Data) -> Errors:
    jl, jg, je = jgrpo_loss_and_grads(case.spec, d)
    tl, tg, te = trl_loss_and_grads(case.config(), d)
    scale_e = np.max(np.abs(te))
    return Errors(
        loss=abs(jl - tl) / max(abs(tl), 1e-300),
        grad=float(np.max(np.abs(jg - tg)) / max(np.max(np.abs(tg)), 1e-300)),
        grad_entropy=float(np.max(np.abs(je - te)) / scale_e) if scale_e > 0 else float(np.max(np.abs(je))),
        jgrpo=(jl, jg, je),
        trl=(tl, tg, te),
    )


_PARAMS = [pytest.param(c, d, id=f"{c.id}-{d.name}") for c in CASES for d in DATASETS if d.name in c.data]


@pytest.mark.parametrize("case, d", _PARAMS)
def test_matches_trl(case, d):
    e = errors(case, d)
    (jl, jg, _), (tl, tg, _) = e.jgrpo, e.trl
    assert np.isfinite(jl) and np.all(np.isfinite(jg))
    assert np.max(np.abs(tg)) > 0, "degenerate case: TRL's gradient is zero everywhere"
    assert e.loss <= RTOL, f"{case.id}/{d.name}: loss jgrpo {jl!r} vs trl {tl!r} (rel err {e.loss:.2e})"
    assert e.grad <= RTOL, f"{case.id}/{d.name}: gradient rel err {e.grad:.2e}"
    assert e.grad_entropy <= RTOL, f"{case.id}/{d.name}: entropy gradient rel err {e.grad_entropy:.2e}"
    assert np.all(jg[d.mask == 0] == 0)


def test_data_has_the_edge_cases():
    g4, k2 = DATASETS
    assert (g4.mask.sum(-1) == 0).any(), "an empty completion"
    r = g4.rewards[..., 0]
    assert (r.max(-1) == r.min(-1)).any(), "an all-equal group"
    ratio = np.exp(g4.logp - g4.logp_old)[g4.mask > 0]
    assert (ratio > 1.28).any() and (ratio < 0.8).any() and ((ratio > 0.8) & (ratio < 1.2)).any()
    assert k2.rewards.shape[-1] == 2


def test_the_comparison_can_fail():
    """Positive control: the plain KL differs from TRL's default (bias-corrected) KL by far more than RTOL."""
    case = Case("plain-vs-default", (("loss_type", "grpo"), ("beta", 0.04)), "grpo", (("regularizer", "kl"),))
    assert errors(case, DATASETS[0]).grad > 1e3 * RTOL


def report() -> list[tuple[str, str, str, float, float, float]]:
    rows = []
    for case in CASES:
        errs = [errors(case, d) for d in DATASETS if d.name in case.data]
        trl = ", ".join(f"{k}={v}" for k, v in case.trl)
        spec = f'get("{case.method}", flavor="trl"' + "".join(f", {k}={v!r}" for k, v in case.overrides) + ")"
        rows.append(
            (
                case.id,
                trl,
                spec,
                max(e.loss for e in errs),
                max(e.grad for e in errs),
                max(e.grad_entropy for e in errs),
            )
        )
    return rows


if __name__ == "__main__":
    print("| case | TRL 1.16 GRPOConfig | jgrpo spec | loss rel err | grad rel err | entropy grad rel err |")
    print("|---|---|---|---|---|---|")
    for case_id, trl, spec, le, ge, ee in report():
        print(f"| `{case_id}` | {trl} | `{spec}` | {le:.1e} | {ge:.1e} | {ee:.1e} |")
