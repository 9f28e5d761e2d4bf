"""jgrpo: exact, functional analysis of GRPO-style objectives in JAX.

Implements the unified surrogate objective (Eq. 1) of *On the Hidden Objective
Biases of Group-based Reinforcement Learning* (arXiv 2601.05002) and its ten
Table-1 methods as presets.
"""

from jgrpo import methods
from jgrpo.batch import GroupBatch
from jgrpo.methods import MethodSpec
from jgrpo.objective import Terms, advantages, loss, terms

__all__ = ["GroupBatch", "MethodSpec", "Terms", "advantages", "loss", "methods", "terms"]
__version__ = "0.1.0"
