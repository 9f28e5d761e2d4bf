"""The task, exactly: the tabular policy's completions, reward 1 iff a completion contains TARGET (traceable).

Also the presets of part (b) and gcpo's two readings of Table 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import jgrpo
from experiments.loss_proxy.config import EOS, TARGET, Config
from experiments.shared.tasks import contains_probability
from jgrpo.policies import tabular_logits_fn, tabular_logprob, tabular_logprob_and_entropy

# jgrpo.MethodSpec field that selects gcpo's reading, and its value for "once per completion"
# (added by the 'core' branch; absent on older versions, where gcpo counts each completion once).
GCPO_FIELD = "sequence_terms"
GCPO_ONCE = "once"


def reward(tokens, mask):
    """1 iff the completion contains TARGET (``[..., G, T]`` → ``[..., G]``)."""
    return jnp.any((tokens == TARGET) & (mask > 0), axis=-1).astype(jnp.float32)


def exact_reward(params, *, length: int):
    """E_π[r] = P(the completion contains TARGET), exact (``analysis.tabular``, the ``contains`` automaton).

    Matches ``jgrpo.sample(tabular_logits_fn(1), ..., max_len=length, eos_id=EOS)`` and :func:`reward`.
    """
    return contains_probability(params, TARGET, eos=EOS, length=length)


def sample(params, key, b: int, g: int, length: int):
    """``b`` groups of ``g`` completions of at most ``length`` tokens from the tabular policy ``params``."""
    prompt = jnp.full((b, 1), TARGET, jnp.int32)  # ignored by the tabular policy
    return jgrpo.sample(tabular_logits_fn(1), params, prompt, key, group_size=g, max_len=length, eos_id=EOS)


def sample_batch(params, ref_params, key, b: int, g: int, length: int) -> jgrpo.GroupBatch:
    """A GroupBatch ``[B, G, T]`` sampled from π_old = ``params``, logp_ref from ``ref_params``."""
    s = sample(params, key, b, g, length)
    logp_old, entropy = tabular_logprob_and_entropy(params, s.tokens)
    return jgrpo.GroupBatch(
        mask=s.mask,
        logp_old=jax.lax.stop_gradient(logp_old),
        rewards=reward(s.tokens, s.mask),
        logp_ref=jax.lax.stop_gradient(tabular_logprob(ref_params, s.tokens)),
        tokens=s.tokens,
        entropy=jax.lax.stop_gradient(entropy),
    )


def spec_of(name: str) -> jgrpo.MethodSpec:
    """The paper-flavour preset; "gcpo_once" is gcpo counted once per completion."""
    if name == "gcpo_once":
        return jgrpo.methods.get("gcpo", **({GCPO_FIELD: GCPO_ONCE} if has_gcpo_field() else {}))
    return jgrpo.methods.get(name)


def has_gcpo_field() -> bool:
    """Whether this jgrpo's MethodSpec has gcpo's reading as a field (``GCPO_FIELD``)."""
    return GCPO_FIELD in {f.name for f in dataclasses.fields(jgrpo.MethodSpec)}


def gcpo_reading(spec: jgrpo.MethodSpec) -> str:
    """The reading of a gcpo spec: "literal" (Ω_i = |o_i|/(σG)) or "once" (Ω_i = 1/(σG)), from its field."""
    if not has_gcpo_field():
        return "once"  # jgrpo before the Table-1-literal gcpo: one term per completion
    value = getattr(spec, GCPO_FIELD)
    return "once" if str(getattr(value, "value", value)) == GCPO_ONCE else "literal"


def methods_of(cfg: Config) -> tuple[str, ...]:
    """Part (b)'s presets; "gcpo_once" is dropped where jgrpo's gcpo already is that reading."""
    duplicate = not has_gcpo_field() and "gcpo" in cfg.methods
    return tuple(m for m in cfg.methods if not (m == "gcpo_once" and duplicate))
