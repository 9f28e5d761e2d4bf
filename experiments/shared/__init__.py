"""Pieces several experiments share (one copy each), apart from the experiments themselves.

- :mod:`experiments.shared.seeds`: summaries over seeds — intervals over the finite values, paired
  intervals, their text, and the 95% bands of the figures.
- :mod:`experiments.shared.progress`: comparisons at matched progress (first crossing of a progress
  level along an η sweep or along training).
- :mod:`experiments.shared.sweep`: the GRPO training sweep with a switched optimizer (Adam, RMSProp, SGD
  momentum, the momentum-aware transforms) on the tabular policy or the tiny transformer, one compile for
  every optimizer (overshoot, clipping).
- :mod:`experiments.shared.tasks`: the exact expected reward of "the completion contains a token", the
  methods compared on the length tasks, one-hot method selectors, compile options.
- :mod:`experiments.shared.policy`: the warmed-up arithmetic transformer and its rollouts.
"""
