"""Random parameters of a jgrpo.models config drawn with NumPy (no XLA compile: keeps the tests fast)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo.models as M


def random_params(config: M.ModelConfig, seed: int = 0, *, std: float = 0.3) -> dict:
    """Normal(0, std) weights and biases, norms 1 + normal(0, 0.1), in ``config.dtype``."""
    rng = np.random.default_rng(seed)
    shapes = M.param_shapes(config)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        base = 1.0 if "norm" in name else 0.0
        scale = 0.1 if "norm" in name else std
        return jnp.asarray(base + scale * rng.standard_normal(shape), jnp.dtype(config.dtype))

    return jax.tree_util.tree_map_with_path(draw, shapes, is_leaf=lambda s: isinstance(s, tuple))
