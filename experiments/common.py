"""Shared experiment plumbing: result records, atomic output files, figures, Markdown."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCALES = ("quick", "paper")


@dataclasses.dataclass
class Context:
    """What every experiment receives.

    Attributes:
      scale: 'quick' (CPU, minutes) or 'paper' (GPU/TPU, larger).
      out: the experiment's own output folder.
      seed: base seed; every random draw derives from it.
      progress: ``progress(fraction_done, message)`` callback for the CLI's bar.
    """

    scale: str
    out: Path
    seed: int = 0
    progress: Callable[[float, str], None] = lambda frac, msg: None

    @property
    def quick(self) -> bool:
        return self.scale == "quick"


@dataclasses.dataclass
class Outcome:
    """What an experiment reports back: its headline claims for the summary table."""

    name: str
    claims: list[tuple[str, str, bool | None]]  # (claim, measured, reproduced?)
    figure: str | None = None
    table: str | None = None


def to_jsonable(x: Any) -> Any:
    """Converts numpy/jax arrays and scalars to JSON types (NaN/inf as strings)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_figure(fig: Any, path: Path) -> None:
    """Saves a matplotlib figure atomically as PNG and closes it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, axes


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 4 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            v = float(v)
            if v == 0:
                return "0"
            if not math.isfinite(v):
                return str(v)
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def finish(ctx: Context, name: str, title: str, result: dict, table: str, claims, figure: str | None, notes: str = ""):
    """Writes result.json and table.md for an experiment and returns its :class:`Outcome`."""
    write_json(ctx.out / "result.json", {"experiment": name, "scale": ctx.scale, "seed": ctx.seed, **result})
    lines = [f"## {title}", ""]
    if figure:
        lines += [f"![{name}]({figure})", ""]
    lines += [table, ""]
    if claims:
        lines += [markdown_table(["claim", "measured", "reproduced"], [(c, m, _yes(r)) for c, m, r in claims]), ""]
    if notes:
        lines += [notes.strip(), ""]
    write_text(ctx.out / "table.md", "\n".join(lines))
    return Outcome(name=name, claims=list(claims), figure=figure, table=table)


def _yes(r: bool | None) -> str:
    return "n/a" if r is None else ("yes" if r else "**no**")
