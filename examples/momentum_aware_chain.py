"""Compose a momentum-aware optax chain from ``jgrpo.optim`` and run it in a GRPO inner loop.

Prop. 3/7 of arXiv 2601.05002: once a token's ratio is beyond the clip bound in its
advantage-favoured direction, its advantage gradient is exactly 0, yet Adam keeps moving
it out (by C_{T,k} ≈ (β1/√β2)^{k+1} of its last step). ``jgrpo.optim`` has optax transforms
that stop this; they compose like any optax transform:

    chain(scale_by_clip_gated_adam,  # Adam that drops the stale momentum pushing clipped tokens out
          scale_by_learning_rate,    # under inject_hyperparams: the learning rate is a traced array
          project_clipped,           # removes what still moves the clipped set outward
          trust_region_guard)        # halves the step until no ratio leaves the region

They read per-step *extra args* (``ratio_fn``: params -> (ratio, advantages, mask);
``new_batch``; ``clip_fraction``) passed to ``update`` as keywords, which ``optax.chain``
forwards to every member. ``analysis.overshoot.simulate_group`` runs μ inner steps on a
fixed group and supplies them; the escape beyond the clip bound is measured after the last.

A learning-rate sweep is one compiled program: ``inject_hyperparams`` puts the learning
rate in the optimizer state, and a ``vmap`` over states runs every rate at once.

    python examples/momentum_aware_chain.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jgrpo
from analysis import overshoot
from jgrpo import optim
from jgrpo.policies import tabular_logprob

EPS_LOW, EPS_HIGH = 0.2, 0.28  # DAPO's clip-higher bounds


def plain_adam(learning_rate, b1=0.9, b2=0.95):
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2), optax.scale_by_learning_rate(learning_rate))


def momentum_aware(learning_rate, b1=0.9, b2=0.95):
    """The chain of the module docstring; every hyperparameter by keyword, as in optax."""
    return optax.chain(
        optim.scale_by_clip_gated_adam(b1=b1, b2=b2, eps_low=EPS_LOW, eps_high=EPS_HIGH),
        optax.scale_by_learning_rate(learning_rate),
        optim.project_clipped(eps_low=EPS_LOW, eps_high=EPS_HIGH),
        optim.trust_region_guard(eps_low=EPS_LOW, eps_high=EPS_HIGH, max_backtracks=8),
    )


def main(
    *, vocab: int = 4, length: int = 6, prompts: int = 2, group: int = 8, inner_steps: int = 16, seed=0, verbose=True
) -> dict:
    # A fixed group batch under a tabular softmax policy (jgrpo.policies: logits[t, previous token], random):
    # completions of random tokens, token 0 is EOS (the mask ends with it), reward 1 when one contains token 1.
    rng = np.random.default_rng(seed)
    params = {"logits": jnp.asarray(rng.normal(size=(length, vocab + 1, vocab)), jnp.float32)}
    tokens = rng.integers(0, vocab, size=(prompts, group, length))
    mask = (np.cumsum(tokens == 0, axis=-1) - (tokens == 0) == 0).astype(np.float32)  # up to the first EOS
    rewards = np.any((tokens == 1) & (mask > 0), axis=-1).astype(np.float32)
    # π_old = the current policy: every ratio is 1 at the first inner step
    batch = jgrpo.GroupBatch(mask=mask, logp_old=tabular_logprob(params, tokens), rewards=rewards, tokens=tokens)
    spec = jgrpo.methods.get("dapo", eps_low=EPS_LOW, eps_high=EPS_HIGH)

    # The policy protocol of jgrpo.policies: logprob_fn(params, tokens, prompt) -> logp. The tabular policy
    # ignores the prompt, so no prompt= is passed below (a model_fn policy gets prompt=prompt).
    logprob_fn = tabular_logprob

    learning_rates = jnp.asarray([0.03, 0.1, 0.3], jnp.float32)
    out = {"learning_rates": np.asarray(learning_rates).tolist()}
    for name, factory in (("adam", plain_adam), ("momentum-aware", momentum_aware)):
        opt = optax.inject_hyperparams(factory)(learning_rate=0.1)  # learning_rate, b1, b2 live in the state

        @jax.jit
        @jax.vmap
        def run(lr, opt=opt):
            state = opt.init(params)
            state.hyperparams["learning_rate"] = lr  # a traced array: every rate shares one compile
            # default extra args per step: new_batch (step 0), clip_fraction (from aux) and the ratio_fn
            traj = overshoot.simulate_group(spec, logprob_fn, params, batch, opt, inner_steps, opt_state=state)
            return traj.final_aux["escape"], traj.final_aux["objective"].mean()

        escape, objective = run(learning_rates)
        out[name] = {
            "escape_frac": np.asarray(escape.frac).tolist(),
            "max_excess": np.asarray(jnp.maximum(escape.max_excess_high, escape.max_excess_low)).tolist(),
            "objective": np.asarray(objective).tolist(),
        }
    if verbose:
        print(f"{inner_steps} inner steps on one group (dapo, clip [{1 - EPS_LOW}, {1 + EPS_HIGH}]):")
        print(f"{'optimizer':>16s} {'lr':>6s} {'escaped tokens':>15s} {'max excess':>11s} {'J after':>9s}")
        for name in ("adam", "momentum-aware"):
            r = out[name]
            for i, lr in enumerate(out["learning_rates"]):
                print(
                    f"{name:>16s} {lr:6.2f} {r['escape_frac'][i]:15.3f} {r['max_excess'][i]:11.3f} "
                    f"{r['objective'][i]:9.4f}"
                )
    return out


if __name__ == "__main__":
    main()
