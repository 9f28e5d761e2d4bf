"""Analysis statistics for the training loop's metrics hook (``jgrpo.train.train(..., metrics_fn=...)``).

jgrpo never imports ``analysis``; these hooks bring the analysis into a run from outside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jgrpo
from analysis import prefix
from jgrpo.methods import MethodSpec
from jgrpo.train import masked_mean

__all__ = ["prefix_metrics"]


def prefix_metrics(spec: MethodSpec, logp: jax.Array, batch: jgrpo.GroupBatch) -> dict[str, jax.Array]:
    """Shared-prefix statistics of Prop. 1 at the first inner step (``analysis.prefix``): a ``jgrpo.train.MetricsFn``.

    ``shared_all_frac``: completion tokens in a prefix shared by the whole group;
    ``wagg_shared_all_abs`` / ``wagg_shared_all_mean``: mean |W_agg| and mean W_agg over the
    nodes shared by the whole group (NaN when there are none); ``wagg_shared_abs``: over all
    shared nodes; ``coef_abs_mean``: mean |dJ/dlogp| over completion tokens, for scale.
    """
    coef = prefix.coefficients(spec, logp, batch)
    tree = prefix.prefix_tree(batch.tokens, batch.mask)
    wagg = prefix.w_agg(coef, tree)
    g = batch.mask.shape[-2]
    m = jnp.asarray(batch.mask).astype(bool)
    all_shared = tree.node_size == g  # [B, G, T], shared by the whole group
    node_all = all_shared & tree.representative
    node_shared = tree.shared & tree.representative
    return {
        "shared_all_frac": jnp.sum(all_shared & m) / jnp.maximum(jnp.sum(m), 1),
        "wagg_shared_all_abs": masked_mean(jnp.abs(wagg), node_all),
        "wagg_shared_all_mean": masked_mean(wagg, node_all),
        "wagg_shared_abs": masked_mean(jnp.abs(wagg), node_shared),
        "coef_abs_mean": masked_mean(jnp.abs(coef), m),
    }
