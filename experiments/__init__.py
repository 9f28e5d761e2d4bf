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

DESCRIPTIONS: dict[str, str] = {
    "presets": "every preset's loss and diagnostics on one sample group (a table)",
    "prefix_bias": "Prop. 1: W_agg per preset; the shared-prefix gradient's exact effect on length (prefix tree)",
    "reward_scaling": "Prop. 2: trajectory deviation vs reward scale for AdamW/SGD x beta x Adam eps",
    "overshoot": "Prop. 3/7: closed forms vs optax; escape at matched progress; momentum-aware transforms",
    "loss_proxy": "Prop. 4: first-step identities; surrogate vs exact reward gain at fixed θ_old; SNIS monitor",
    "length_bias": "length-coupled task: exact drift of E[len | incorrect] per method, training at matched progress",
    "clipping": "is clipping needed? exact reward gain per sample for mu x {clip, no clip, guard, projection}",
}
