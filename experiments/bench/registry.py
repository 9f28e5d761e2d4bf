"""The registry of benchmark sections: one module per section, each exporting ``SECTION``.

To add a section: write ``experiments/bench/sections/NAME.py`` with a
``SECTION = Section(...)`` (see :class:`Section`), add its sizes to
:class:`experiments.bench.config.Config`, its goal targets (if any) to
:data:`experiments.bench.goals.GOALS`, and one line to :data:`SECTIONS` below.
The runner, bench.md, the goals table and the README section pick it up from here.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.bench.config import Config

__all__ = ["SECTIONS", "Context", "Section", "load", "plan"]

# name -> module, in the order the sections run and appear in bench.md
SECTIONS: dict[str, str] = {
    "bandwidth": "experiments.bench.sections.bandwidth",
    "loss": "experiments.bench.sections.loss",
    "decomposition": "experiments.bench.sections.decomposition",
    "sweep": "experiments.bench.sections.sweep",
    "train": "experiments.bench.sections.train",
    "scaling": "experiments.bench.sections.scaling",
    "share": "experiments.bench.sections.share",
    "hf_train": "experiments.bench.sections.hf_train",
}


@dataclasses.dataclass
class Context:
    """What a section's ``measure`` receives besides the configuration.

    Attributes:
      peers: the peer namespace of :func:`experiments.bench.env.load_peers`, or None.
      peer_skip: why the peer rows are skipped (None when peers are loaded).
      log: progress messages (stderr).
      results: the results of the sections that ran before, by name.
    """

    peers: Any = None
    peer_skip: str | None = None
    log: Callable[[str], None] = print
    results: dict[str, Any] = dataclasses.field(default_factory=dict)


def _nothing(result: dict[str, Any]) -> list:
    return []


@dataclasses.dataclass(frozen=True)
class Section:
    """One benchmark section.

    Attributes:
      name: its key in :data:`SECTIONS`, ``Config.sections`` and bench.json.
      title: its heading in bench.md.
      measure: ``measure(cfg, ctx) -> dict``, the JSON-able result (bench.json[name]).
      goals: ``goals(result) -> [goal dict]`` (see :func:`experiments.bench.goals.goal`); pure.
      render: ``render(result) -> [Markdown lines]``, the body under the heading; pure.
      summary: ``summary(result) -> [Markdown lines]``, the measured facts the README quotes
        (what bounds each missed goal); pure, every number read from ``result``.
      needs: sections whose results ``measure`` requires; they run first even when not selected.
    """

    name: str
    title: str
    measure: Callable[[Config, Context], dict[str, Any]]
    goals: Callable[[dict[str, Any]], list[dict[str, Any]]] = _nothing
    render: Callable[[dict[str, Any]], list[str]] = _nothing
    summary: Callable[[dict[str, Any]], list[str]] = _nothing
    needs: tuple[str, ...] = ()


def load(name: str) -> Section:
    """The :class:`Section` registered as ``name`` (imports its module)."""
    if name not in SECTIONS:
        raise ValueError(f"unknown benchmark section {name!r}; known: {', '.join(SECTIONS)}")
    section = importlib.import_module(SECTIONS[name]).SECTION
    if section.name != name:
        raise ValueError(f"{SECTIONS[name]}.SECTION is named {section.name!r}, registered as {name!r}")
    return section


def plan(selected: tuple[str, ...]) -> list[str]:
    """The sections to run for ``selected``, with what they need, in registry order."""
    todo: set[str] = set()
    stack = list(selected)
    while stack:
        name = stack.pop()
        if name not in todo:
            todo.add(name)
            stack += load(name).needs
    return [n for n in SECTIONS if n in todo]
