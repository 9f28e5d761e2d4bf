"""Decompose your own model's policy gradient on the prefixes its completions share (Prop. 1).

Prop. 1 of arXiv 2601.05002: on the tokens that several completions of a group share
(a common prefix), the gradient of the objective is sum_t grad log pi(y_t) * W_agg(t),
W_agg = sum over the completions through that prefix of omega_{i,t} A_i. With uniform
token weights (dr_grpo) the advantages of a prefix that *every* completion shares sum to
zero, so W_agg = 0 there; with GRPO's 1/|o_i| weights they do not, and the shared tokens
are pushed by the completions' lengths.

This script brings its own model (a small flax NNX module, not jgrpo's), wraps it as
``logprob_fn(params, tokens, prompt) -> logp`` (the protocol of jgrpo.policies), and calls
``analysis.prefix.decompose`` under ``jax.jit``: the exact gradient split into shared-prefix /
divergent / per-depth parts. The model is causal, so the shared prefixes (here the first two
positions) need the backward pass over ``depth=2`` positions only.

    python examples/decompose_own_model.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jgrpo
from analysis import prefix


class TinyLM(nnx.Module):
    """Your model: ids [N, L] -> next-token logits [N, L, V], causal (position t sees ids[:, :t+1] only).

    An embedding, a running mean over the positions so far (a cumulative sum), an MLP and a head.
    """

    def __init__(self, vocab: int, width: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.hidden = nnx.Linear(2 * width, width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)  # [N, L, W]
        past = jnp.cumsum(x, axis=1) / jnp.arange(1, ids.shape[1] + 1)[:, None]  # mean of x_0..x_t
        return self.head(jax.nn.gelu(self.hidden(jnp.concatenate([x, past], axis=-1))))


def make_logprob_fn(graphdef):
    """``(params, tokens [B, G, T], prompt [B, P]) -> logp [B, G, T]``: log pi(y_t | prompt, y_<t)."""

    def logprob_fn(params, tokens, prompt):
        b, g, t = tokens.shape
        prompt_g = jnp.broadcast_to(prompt[:, None, :], (b, g, prompt.shape[-1]))
        ids = jnp.concatenate([prompt_g, tokens], axis=-1).reshape(b * g, -1)  # [N, P + T]
        logits = nnx.merge(graphdef, params)(ids)[:, prompt.shape[-1] - 1 : -1]  # the positions predicting y_t
        logp_v = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, g, t, -1)
        return jnp.take_along_axis(logp_v, tokens[..., None], axis=-1)[..., 0]

    return logprob_fn


def main(*, vocab: int = 12, width: int = 32, seed: int = 0, methods=("dr_grpo", "grpo"), verbose: bool = True) -> dict:
    model = nnx.jit(lambda: TinyLM(vocab, width, rngs=nnx.Rngs(seed)))()  # initialised in one compiled program
    graphdef, params = nnx.split(model)  # the explicit params pytree that the analysis differentiates
    logprob_fn = make_logprob_fn(graphdef)

    # One prompt, a group of G = 4 completions: all share token 3, two also share (3, 5); lengths differ.
    prompt = jnp.array([[1, 2]])
    tokens = jnp.array([[[3, 5, 7, 9, 0], [3, 5, 8, 0, 0], [3, 6, 10, 11, 4], [3, 4, 0, 0, 0]]])
    lengths = np.array([[4, 3, 5, 2]])
    mask = jnp.asarray(np.arange(5) < lengths[..., None], jnp.float32)
    rewards = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    logp_old = jax.jit(logprob_fn)(params, tokens, prompt)  # the sampling policy's log-probs (here: the same model)
    batch = jgrpo.GroupBatch(mask=mask, logp_old=logp_old, rewards=rewards, tokens=tokens)

    # decompose takes a spec and a function: close over them and pass the arrays (one compile per method).
    def decompose(spec):
        @jax.jit
        def run(params, batch, prompt):
            subsets = prefix.depth_subsets(prefix.prefix_tree(batch.tokens, batch.mask), 2)  # depth 0 and depth 1
            dec = prefix.decompose(spec, logprob_fn, params, batch, subsets, prompt=prompt, depth=2)
            # exact split: total = shared + divergent, and here the per-depth parts add up to the shared part
            split_gap = jax.tree.map(lambda t, s, d: t - s - d, dec.total, dec.shared, dec.divergent)
            depth_gap = jax.tree.map(lambda s, k: s - k.sum(0), dec.shared, dec.subsets)
            norms = {k: prefix.tree_norm(v) for k, v in (("split", split_gap), ("depth", depth_gap))}
            return dec, norms | {"shared": prefix.tree_norm(dec.shared), "total": prefix.tree_norm(dec.total)}

        return run(params, batch, prompt)

    out = {}
    for name in methods:
        dec, norms = decompose(jgrpo.methods.get(name, beta=0.0))
        out[name] = {
            "w_agg_first_token": float(dec.w_agg[0, 0, 0]),  # the prefix (3,) shared by all four completions
            "w_agg_second_token": float(dec.w_agg[0, 0, 1]),  # the prefix (3, 5) of completions 0 and 1 only
            "shared_norm": float(norms["shared"]),
            "total_norm": float(norms["total"]),
            "split_error": float(norms["split"] / norms["total"]),
            "depth_error": float(norms["depth"] / jnp.maximum(norms["shared"], 1e-30)),
        }
        if verbose:
            r = out[name]
            print(
                f"{name:8s} W_agg on (3,): {r['w_agg_first_token']:+.2e}   on (3, 5): {r['w_agg_second_token']:+.2e}   "
                f"|shared| / |total| = {r['shared_norm'] / r['total_norm']:.3f}   "
                f"split error {r['split_error']:.1e}"
            )
    if verbose:
        print("W_agg on the prefix that every completion shares: 0 under dr_grpo (uniform weights, sum_i A_i = 0),")
        print("non-zero under grpo (1/|o_i| weights, Prop. 1); a prefix of two completions is pushed by both.")
    return out


if __name__ == "__main__":
    main()
