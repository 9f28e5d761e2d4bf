"""The presets measured and the data sets: random tabular or transformer batches per seed and reward kind."""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
from analysis import reward_scale as rs
from experiments.reward_scaling.config import CPPO_STD, REWARD_KINDS, Config
from jgrpo import policies as P
from jgrpo.methods import MethodSpec, Regularizer
from jgrpo.weights import mean_entropy


def cppo_standardised_spec() -> MethodSpec | None:
    """CPPO pruning on standardised advantages |A_i/σ| > γ, if this jgrpo has such an option, else None.

    Looks for a ``MethodSpec`` field named ``prune*`` (other than ``prune_gamma``)
    whose values include a standardised mode (see
    :func:`analysis.reward_scale.prunes_on_standardised`).
    """
    base = jgrpo.methods.get("cppo")
    for field in dataclasses.fields(MethodSpec):
        if not field.name.startswith("prune") or field.name == "prune_gamma":
            continue
        value = getattr(base, field.name)
        candidates: list = []
        if isinstance(value, enum.Enum):
            candidates = [m for m in type(value) if any(w in str(m.value).lower() for w in ("std", "standard"))]
        elif isinstance(value, bool):
            candidates = [True]
        for c in candidates:
            try:
                spec = base.replace(**{field.name: c})
            except (TypeError, ValueError):
                continue
            if rs.prunes_on_standardised(spec):
                return spec
    return None


def preset_spec(name: str) -> MethodSpec | None:
    """The preset (paper flavour) with a k3 KL regularizer added where it has none, so that β rows mean
    something (β = 0 rows are unchanged: 0 · R). None for ``cppo_std`` when jgrpo lacks the option."""
    spec = cppo_standardised_spec() if name == CPPO_STD else jgrpo.methods.get(name)
    if spec is None:
        return None
    if spec.regularizer == Regularizer.NONE:
        spec = spec.replace(regularizer="kl", kl="k3")
    return spec


def fit_entropy_filter(spec: MethodSpec, batch: jgrpo.GroupBatch) -> MethodSpec:
    """GTPO's entropy filter with its threshold at the median completion-mean entropy of ``batch``.

    The GTPO paper's threshold (ln 2) is meant for a language model's token entropies; the
    random policies of this experiment have per-token entropies near ln V, so every completion
    would be filtered out and the update would be zero — a run that cannot show a break of
    invariance. At the median, about half the completions pass: the filter stays active (it
    reads entropies, not rewards, so it keeps the reward degree of the preset). Specs without
    a filter are returned unchanged.
    """
    if spec.entropy_threshold is None or batch.entropy is None:
        return spec
    h = np.asarray(mean_entropy(jnp.asarray(batch.entropy), jnp.asarray(batch.mask)))
    has_tokens = np.asarray(batch.mask).sum(-1) > 0
    return spec.replace(entropy_threshold=float(np.median(h[has_tokens])))


# ----------------------------------------------------------------------------- data


def _kind_rng(seed: int, kind: str, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, REWARD_KINDS.index(kind), salt])


def _rewards(rng: np.random.Generator, kind: str, b: int, g: int) -> np.ndarray:
    if kind == "binary":
        return (rng.random((b, g)) < 0.5).astype(np.float32)
    return rng.random((b, g)).astype(np.float32)


def _mask(rng: np.random.Generator, b: int, g: int, t: int) -> np.ndarray:
    lengths = rng.integers(2, t + 1, size=(b, g))
    return (np.arange(t) < lengths[..., None]).astype(np.float32)


def stack(items):
    """Stacks equally shaped pytrees (data sets) along a new leading axis, as NumPy arrays."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *items)


def tabular_data(cfg: Config, seed: int, kind: str):
    """(params, batch, prompt, (perm_b, perm_g)) of one tabular data set."""
    rng = _kind_rng(seed, kind, 0)
    b, g, t, v = cfg.num_prompts, cfg.group_size, cfg.completion_len, cfg.vocab
    key = jax.random.key(int(rng.integers(2**31)))
    params = P.tabular_init(key, vocab=v, max_len=t, scale=1.0)
    tokens = rng.integers(0, v, size=(b, g, t)).astype(np.int32)
    logp, entropy = P.tabular_logprob_and_entropy(params, tokens)
    ref = {"logits": params["logits"] + 0.3 * rng.normal(size=params["logits"].shape).astype(np.float32)}
    batch = jgrpo.GroupBatch(
        mask=_mask(rng, b, g, t),
        logp_old=np.asarray(logp),
        rewards=_rewards(rng, kind, b, g),
        logp_ref=np.asarray(P.tabular_logprob(ref, tokens)),
        tokens=tokens,
        entropy=np.asarray(entropy),
    )
    perms = rs.random_permutations(rng, cfg.num_reorders, b, g)
    return params, batch, np.zeros((b, 1), np.int32), perms


def transformer_model(cfg: Config, dtype: str):
    """The transformer's config (``cfg.tf_model`` preset) with parameters and compute in ``dtype``."""
    preset = jgrpo.TransformerConfig.tiny if cfg.tf_model == "tiny" else jgrpo.TransformerConfig.small
    return preset(vocab=cfg.tf_vocab, max_len=cfg.tf_prompt_len + cfg.tf_completion_len, dtype=dtype, param_dtype=dtype)


def transformer_data(cfg: Config, mcfg, seed: int, kind: str):
    """(params, batch, prompt, (perm_b, perm_g)) of one transformer data set (random completions)."""
    rng = _kind_rng(seed, kind, 1)
    b, g, t, p = cfg.tf_num_prompts, cfg.tf_group_size, cfg.tf_completion_len, cfg.tf_prompt_len
    graphdef, params = jgrpo.make_transformer(jax.random.key(int(rng.integers(2**31))), mcfg)
    tokens = rng.integers(0, cfg.tf_vocab, size=(b, g, t)).astype(np.int32)
    prompt = rng.integers(0, cfg.tf_vocab, size=(b, p)).astype(np.int32)
    logp, entropy = P.nnx_logprob_and_entropy_fn(graphdef)(params, tokens, prompt)
    batch = jgrpo.GroupBatch(
        mask=_mask(rng, b, g, t),
        logp_old=np.asarray(logp),
        rewards=_rewards(rng, kind, b, g),
        logp_ref=(np.asarray(logp) + 0.1 * rng.normal(size=np.shape(logp))).astype(np.float32),
        tokens=tokens,
        entropy=np.asarray(entropy),
    )
    perms = rs.random_permutations(rng, cfg.num_reorders, b, g)
    return graphdef, params, batch, prompt, perms


def checkpoint_data(cfg: Config, dtype: str, seed: int, kind: str):
    """(model_fn, params, batch, prompt, (perm_b, perm_g), description) of one data set on the checkpoint ``cfg.model``.

    Countdown prompts (the checkpoint's tokenizer, left-padded; ``prompt`` is a ``jgrpo.models.Prompt``)
    and completions sampled from the checkpoint; synthetic rewards of ``kind`` and a synthetic
    ``logp_ref`` (π_old's log-probabilities + N(0, 0.1²)), as for the NNX transformer.
    """
    from experiments.shared import checkpoint

    rng = _kind_rng(seed, kind, 2)
    b, g, t = cfg.tf_num_prompts, cfg.tf_group_size, cfg.tf_completion_len
    ck = checkpoint.load(cfg.model, dtype)
    r = checkpoint.rollouts(
        ck, jax.random.key(int(rng.integers(2**31))), prompts=b, group_size=g, max_len=t,
        seed=int(rng.integers(2**31)),
    )  # fmt: skip
    logp = np.asarray(r.batch.logp_old)
    mask = np.asarray(r.batch.mask)
    batch = r.batch.replace(
        rewards=_rewards(rng, kind, b, g),
        logp_ref=np.where(mask > 0, logp + 0.1 * rng.normal(size=logp.shape), 0.0).astype(np.float32),
    )
    perms = rs.random_permutations(rng, cfg.num_reorders, b, g)
    return ck.model_fn, ck.params, batch, r.prompt, perms, ck.description
