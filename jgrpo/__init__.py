"""jgrpo: exact, functional analysis of GRPO-style objectives in JAX.

Implements the unified surrogate objective (Eq. 1) of *On the Hidden Objective
Biases of Group-based Reinforcement Learning* (arXiv 2601.05002) and its ten
Table-1 methods as presets.
"""

from jgrpo import methods, optim, policies, sampling
from jgrpo.batch import GroupBatch
from jgrpo.methods import MethodSpec
from jgrpo.objective import Terms, advantages, checked_loss, loss, terms
from jgrpo.policies import TabularPolicy, TransformerConfig, make_transformer, nnx_logprob_fn
from jgrpo.sampling import Samples, sample

__all__ = [
    "GroupBatch",
    "MethodSpec",
    "Samples",
    "TabularPolicy",
    "Terms",
    "TransformerConfig",
    "advantages",
    "checked_loss",
    "loss",
    "make_transformer",
    "methods",
    "nnx_logprob_fn",
    "optim",
    "policies",
    "sample",
    "sampling",
    "terms",
]
__version__ = "0.1.0"
