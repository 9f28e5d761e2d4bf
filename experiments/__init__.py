"""Runnable experiments reproducing arXiv 2601.05002's claims; ``python -m experiments --help``."""

# name -> "module:function"; each function takes an experiments.common.Context and returns an Outcome.
REGISTRY: dict[str, str] = {
    "presets": "experiments.presets:run",
    "prefix_bias": "experiments.prefix_bias:run",
    "reward_scaling": "experiments.reward_scaling:run",
    "overshoot": "experiments.overshoot:run",
    "loss_proxy": "experiments.loss_proxy:run",
    "length_bias": "experiments.length_bias:run",
    "clipping": "experiments.clipping:run",
}

# The experiments that run on a model and accept ``--model PATH`` (a Hugging Face checkpoint directory in place of
# the tiny NNX transformer); the others run on exact tabular policies, where a checkpoint has no place.
MODEL_EXPERIMENTS: dict[str, str] = {
    "prefix_bias": "part (A): W_agg and the shared-prefix gradient of every preset on the checkpoint's rollouts",
    "reward_scaling": "the transformer part: the checkpoint's parameters and Countdown rollouts (synthetic rewards)",
    "overshoot": "parts (b, c): escape at matched progress and the momentum-aware transforms, trained on Countdown "
    "with a graded verifier reward on the host, members (η, seed) one after another; part (a) as usual",
}
NO_MODEL_REASON: dict[str, str] = {
    "presets": "it evaluates each preset's loss on one fixed sample group (no policy)",
    "loss_proxy": "it needs the exact expected reward of the policy, which only the tabular policy gives",
    "length_bias": "it needs the exact drift of E[len | incorrect], which only the tabular policy gives",
    "clipping": "it measures the exact reward gain, which only the tabular policy gives",
}

DESCRIPTIONS: dict[str, str] = {
    "presets": "every preset's loss and diagnostics on one sample group (a table)",
    "prefix_bias": "Prop. 1: W_agg per preset; the shared-prefix gradient's exact effect on length (prefix tree)",
    "reward_scaling": "Prop. 2: trajectory deviation vs reward scale for AdamW/SGD x beta x Adam eps",
    "overshoot": "Prop. 3/7: closed forms vs optax; escape at matched progress; momentum-aware transforms",
    "loss_proxy": "Prop. 4: first-step identities; surrogate vs exact reward gain at fixed θ_old; SNIS monitor",
    "length_bias": "length-coupled task: exact drift of E[len | incorrect] per method, training at matched progress",
    "clipping": "is clipping needed? exact reward gain per sample for mu x {clip, no clip, guard, projection}",
}
