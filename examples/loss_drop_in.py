"""The GRPO loss as a drop-in: your own model, your own train step, optax, and ``jgrpo.loss``.

A plain-JAX policy (a parameter dict, no framework) learns a toy verifiable task: the
reward of a completion is the fraction of its tokens equal to ``TARGET``. Each iteration

1. samples a group of G completions per prompt from the current policy (π_old),
2. scores them (the rewards) and records log π_old and log π_ref of the sampled tokens,
3. takes μ optimizer steps on ``jgrpo.loss(spec, logp, batch)`` (= −J of Eq. 1) with the
   batch fixed: the GRPO inner loop.

The whole iteration is one jitted function; ``spec`` (a frozen, hashable
``jgrpo.MethodSpec``) is closed over, so it is static and one compile serves every
iteration. Swap ``"grpo"`` for any preset (``jgrpo.methods.names()``).

    python examples/loss_drop_in.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo

VOCAB, LENGTH, TARGET = 6, 8, 2  # tokens 0..5, completions of 8 tokens, reward: the share of token 2


# ----------------------------------------------------------------------------- your model (plain JAX)


def init_params(seed):
    """A first-order policy: logits of token t = prev[y_{t-1}] + pos[t] (row VOCAB of prev: the start)."""
    rng = np.random.default_rng(seed)
    return {
        "prev": jnp.asarray(0.1 * rng.normal(size=(VOCAB + 1, VOCAB)), jnp.float32),
        "pos": jnp.asarray(0.1 * rng.normal(size=(LENGTH, VOCAB)), jnp.float32),
    }


def logits_of(params, tokens):
    """``tokens [..., T]`` -> next-token logits ``[..., T, V]`` for every position (teacher forcing)."""
    prev = jnp.concatenate([jnp.full(tokens.shape[:-1] + (1,), VOCAB), tokens[..., :-1]], axis=-1)
    return params["prev"][prev] + params["pos"]


def logprob(params, tokens):
    """log π(y_t | y_<t) of the given tokens, ``[..., T]`` float32: what jgrpo.loss needs from your model."""
    logp_v = jax.nn.log_softmax(logits_of(params, tokens), axis=-1)
    return jnp.take_along_axis(logp_v, tokens[..., None], axis=-1)[..., 0]


def sample(params, key, shape):
    """Completions ``[*shape, T]`` drawn token by token (one ``lax.scan`` over the positions)."""

    def step(prev, inputs):
        t, k = inputs
        y = jax.random.categorical(k, params["prev"][prev] + params["pos"][t])
        return y, y

    start = jnp.full(shape, VOCAB)
    _, ys = jax.lax.scan(step, start, (jnp.arange(LENGTH), jax.random.split(key, LENGTH)))
    return jnp.moveaxis(ys, 0, -1)


# ----------------------------------------------------------------------------- the train step


def make_iteration(spec: jgrpo.MethodSpec, optimizer: optax.GradientTransformation, *, prompts, group, inner_steps):
    """One GRPO iteration (sample, score, μ inner steps), jitted with ``spec`` and ``optimizer`` closed over."""

    @jax.jit
    def iteration(params, opt_state, ref_params, key):
        tokens = sample(params, key, (prompts, group))  # [B, G, T]
        rewards = jnp.mean(tokens == TARGET, axis=-1)  # [B, G]
        batch = jgrpo.GroupBatch(
            mask=jnp.ones(tokens.shape, jnp.float32),  # [B, G, T] 1 on completion tokens (no EOS here)
            logp_old=jax.lax.stop_gradient(logprob(params, tokens)),  # π_old: the sampling policy
            rewards=rewards,
            logp_ref=logprob(ref_params, tokens),  # the KL term's reference policy (grpo has β = 0.04)
        )

        def inner(carry, _):
            params, opt_state = carry
            (loss, aux), grads = jax.value_and_grad(
                lambda p: jgrpo.loss(spec, logprob(p, tokens), batch), has_aux=True
            )(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss, aux["clip_frac_high"], aux["kl"])

        (params, opt_state), (loss, clip_high, kl) = jax.lax.scan(inner, (params, opt_state), None, inner_steps)
        metrics = {"reward": jnp.mean(rewards), "loss": loss[0], "clip_frac_high": clip_high[-1], "kl": kl[-1]}
        return params, opt_state, metrics

    return iteration


def main(
    *, iterations: int = 60, prompts: int = 4, group: int = 8, inner_steps: int = 4, seed: int = 0, verbose=True
) -> dict:
    spec = jgrpo.methods.get("grpo")  # DeepSeek's GRPO: 1/(G |o_i| σ) weights, clip 0.2, k3 KL with β = 0.04
    optimizer = optax.adam(3e-2)
    key = jax.random.key(seed)
    params = ref_params = init_params(seed)
    opt_state = optimizer.init(params)
    iteration = make_iteration(spec, optimizer, prompts=prompts, group=group, inner_steps=inner_steps)
    history = []
    for it in range(iterations):
        key, sub = jax.random.split(key)
        params, opt_state, metrics = iteration(params, opt_state, ref_params, sub)
        history.append({k: float(v) for k, v in metrics.items()})
        if verbose and (it % 10 == 0 or it == iterations - 1):
            m = history[-1]
            print(f"iter {it:3d}  mean reward {m['reward']:.3f}  loss {m['loss']:+.4f}  KL {m['kl']:.4f}")
    if verbose:  # Prop. 4: at each batch's first inner step grpo's loss is β·R (the KL), not a progress signal
        print("the loss at each batch's first inner step is β·R, R the k3 KL estimate against π_ref: it measures")
        print("the distance to the reference policy, not the reward (Prop. 4)")
    return {"history": history, "params": params}


if __name__ == "__main__":
    main()
