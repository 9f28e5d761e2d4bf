"""The optax chains that :class:`TrainConfig.optimizer` names (extra-args form)."""

from __future__ import annotations

import optax

from jgrpo import optim
from jgrpo.train.config import TrainConfig

__all__ = ["make_optimizer"]


def make_optimizer(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """The optax chain named by ``config.optimizer`` (extra-args form).

    Every update is called with the extra args ``new_batch`` (first inner step of
    a batch), ``clip_fraction`` (``clip_frac_high + clip_frac_low`` of the loss at
    the current params) and ``ratio_fn``; transforms ignore those they do not use.
    """
    spec, lr = config.spec, config.learning_rate
    adam = dict(b1=config.b1, b2=config.b2, eps=config.adam_eps)
    name = config.optimizer
    if name == "sgd":
        core = optax.trace(decay=config.momentum) if config.momentum > 0 else optax.identity()
    elif name in ("adamw", "guarded_adamw"):
        core = optax.scale_by_adam(**adam)
    elif name == "adam_with_reset":
        core = optim.scale_by_adam_with_reset(**adam, reset="all")
    elif name == "adam_rel":
        core = optim.scale_by_adam_with_reset(**adam, reset="count")
    else:  # gated_adam
        core = optim.scale_by_gated_adam(**adam)
    parts = []
    if config.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(core)
    if config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.scale_by_learning_rate(lr))
    if name == "guarded_adamw":
        parts.append(optim.trust_region_guard(eps_low=spec.eps_low, eps_high=spec.eps_high))
    return optax.chain(*parts)
