"""Jitted analysis functions, one module per proposition of arXiv 2601.05002.

- :mod:`analysis.prefix` (Prop. 1): shared-prefix gradient attribution through the real model.
- :mod:`analysis.reward_scale` (Prop. 2): AdamW trajectories under reward scaling.
- :mod:`analysis.overshoot` (Prop. 3/7): Adam's momentum past the clip region, closed forms and inner loops.
- :mod:`analysis.proxy` (Prop. 4): the first-step objective, Ω_i and Cov(A, Ω); a progress monitor that works.
- :mod:`analysis.tabular`: exact expectations (reward, length) under the tabular policy.

Each imports :mod:`jgrpo` only (jgrpo never imports analysis).
"""

from analysis import overshoot, prefix, proxy, reward_scale, tabular

__all__ = ["overshoot", "prefix", "proxy", "reward_scale", "tabular"]
