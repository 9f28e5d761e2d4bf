"""Benchmarks: jgrpo's speed against peers, naive baselines and the hardware's measured rates.

``python -m experiments bench [--out DIR] [--quick]`` (or ``make bench``, which first
installs the peers with scripts/install_interop.sh) writes ``bench.json`` and
``bench.md`` into ``DIR`` and prints the table; ``python -m experiments bench-readme``
regenerates the README's performance section from one or more bench.json files.

Method. Every number is a ratio of two timings taken in the same process,
interleaved (A, B, A, B, ..., the order rotated every round) and summarised by
medians, so that a shared or throttled machine slows both sides alike (see
:func:`race`). No absolute timing is a result. Compile time is excluded: every
function runs before it is timed. Reference rates (copy bandwidth, matmul FLOP/s)
are measured in the same run on the same device and labelled with both. A ratio
scaled up from a timed sample is labelled an extrapolation, with the timed part
stated. Where a goal is missed, the section records what bounds it: XLA's cost
analysis (flops, bytes), its temporaries, page faults per call and per-op times
from ``jax.profiler``.

Layout (one concern per module):

- :mod:`~experiments.bench.harness`: :func:`race`, :class:`Timing` and the probes
  (page faults, XLA cost analysis, per-op profiles).
- :mod:`~experiments.bench.env`: the machine and the peers (verl on torch).
- :mod:`~experiments.bench.config`: the frozen :class:`Config` and its presets.
- :mod:`~experiments.bench.registry`: the :class:`~experiments.bench.registry.Section`
  record and the registry of sections; add a section there.
- :mod:`~experiments.bench.sections`: one module per section, in this order:
  ``bandwidth`` (reference rates), ``loss`` (vs verl and the memory floor),
  ``decomposition`` (vs K+1 gradient calls and per-token gradients), ``sweep``
  (vmapped vs loops and per-setting calls), ``train`` (vs a reference matmul),
  ``scaling`` (growth with G and T).
- :mod:`~experiments.bench.goals`: targets and the rule that judges them.
- :mod:`~experiments.bench.render`: bench.md; :mod:`~experiments.bench.readme`: the README section.
- :mod:`~experiments.bench.runner`: :func:`run` and the CLI's :func:`main`.

The benchmarks run unchanged on a GPU (``jax[cuda]``): the peer rows then run
torch on CUDA when it is available and are skipped, with the reason, otherwise.
"""

from experiments.bench.config import SECTIONS, Config
from experiments.bench.goals import GOALS
from experiments.bench.harness import Timing, race
from experiments.bench.runner import main, run

__all__ = ["GOALS", "SECTIONS", "Config", "Timing", "main", "race", "run"]
