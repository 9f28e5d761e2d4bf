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
      model: a Hugging Face checkpoint directory (``--model PATH``) replacing the tiny transformer
        in the experiments that use a model (``experiments.MODEL_EXPERIMENTS``); None: the default policies.
    """

    scale: str
    out: Path
    seed: int = 0
    progress: Callable[[float, str], None] = lambda frac, msg: None
    model: str | None = None

    @property
    def quick(self) -> bool:
        return self.scale == "quick"


KINDS = ("experiment", "verification")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")
MIN_SEEDS = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim:
    """One claim of the paper (or of jgrpo beyond it) and the verdict of its test.

    The criterion and what would falsify it are written in the experiment's code
    *before* the measurement is made; the verdict is computed from the measured
    numbers by the experiment's claim function, never typed in.

    Attributes:
      claim: what is claimed, in words (e.g. "Prop. 3: at equal surrogate gain, Adam's
        momentum increases escape").
      kind: "experiment" (a measurement that could come out either way, with seeds and a
        confidence interval) or "verification" (an identity or closed form checked to
        rounding: it holds by construction of correct code and says nothing new about
        the paper's claim).
      criterion: the decision rule, stated before the run.
      falsified_if: the outcome that would count against the claim.
      measured: the measured value(s), in words and numbers.
      verdict: "reproduced", "not reproduced" or "inconclusive".
      proposition: which statement of the paper it tests ("Prop. 1", "Eq. 36", "beyond").
      ci: the 95% confidence interval (lo, hi) of the decisive statistic (experiments).
      seeds: independent repetitions behind ``ci`` (experiments: ≥ 5 for a decisive verdict).

    Raises:
      ValueError: unknown kind/verdict; an experiment without a confidence interval or
        seeds; a decisive experiment verdict from fewer than ``MIN_SEEDS`` seeds.
    """

    claim: str
    kind: str
    criterion: str
    falsified_if: str
    measured: str
    verdict: str
    proposition: str = ""
    ci: tuple[float, float] | None = None
    seeds: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Claim.kind must be one of {KINDS}, got {self.kind!r} ({self.claim!r})")
        if self.verdict not in VERDICTS:
            raise ValueError(f"Claim.verdict must be one of {VERDICTS}, got {self.verdict!r} ({self.claim!r})")
        for field in ("claim", "criterion", "falsified_if", "measured"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field).strip():
                raise ValueError(f"Claim.{field} must be a non-empty string ({self.claim!r})")
        if self.kind == "experiment":
            if self.ci is None or len(self.ci) != 2:
                raise ValueError(f"an experiment claim needs a confidence interval ci=(lo, hi) ({self.claim!r})")
            if self.seeds is None or self.seeds < 1:
                raise ValueError(f"an experiment claim needs seeds >= 1 ({self.claim!r})")
            if self.seeds < MIN_SEEDS and self.verdict != "inconclusive":
                raise ValueError(
                    f"an experiment with {self.seeds} < {MIN_SEEDS} seeds can only be 'inconclusive', "
                    f"got {self.verdict!r} ({self.claim!r})"
                )

    @property
    def reproduced(self) -> bool | None:
        """True / False for a decisive verdict, None when inconclusive."""
        return None if self.verdict == "inconclusive" else self.verdict == "reproduced"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["ci"] = None if self.ci is None else [float(self.ci[0]), float(self.ci[1])]
        return d


def verdict(ok: bool | None) -> str:
    """Maps a decision (True / False / None = undecided) to a verdict string."""
    return "inconclusive" if ok is None else ("reproduced" if ok else "not reproduced")


def decided(ok: bool | None, seeds: int) -> str:
    """The verdict of an experiment's decision rule: fewer than ``MIN_SEEDS`` seeds (or units) decide nothing."""
    return verdict(ok if seeds >= MIN_SEEDS else None)


@dataclasses.dataclass
class Outcome:
    """What an experiment reports back: its claims for the summary table."""

    name: str
    claims: list[Claim]
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
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode (0644 under umask 022)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    """Writes table.md and then result.json for an experiment and returns its :class:`Outcome`.

    ``result.json`` gets ``claims``: one object per :class:`Claim` (claim, kind, criterion,
    falsified_if, measured, ci, seeds, verdict, proposition). It is written last, each file
    atomically: an experiment folder whose result.json is there has its table.md (and the
    figure, which the experiment saves before calling this) from the same run.

    Raises:
      TypeError: a claim is not a :class:`Claim`.
    """
    claims = list(claims)
    for c in claims:
        if not isinstance(c, Claim):
            raise TypeError(f"claims must be experiments.common.Claim objects, got {type(c).__name__}: {c!r}")
    lines = [f"## {title}", ""]
    if ctx.model:
        lines += [f"Policy: the checkpoint `{ctx.model}` (`--model`).", ""]
    if figure:
        lines += [f"![{name}]({figure})", ""]
    lines += [table, ""]
    if claims:
        lines += [claims_table(claims), ""]
    if notes:
        lines += [notes.strip(), ""]
    write_text(ctx.out / "table.md", "\n".join(lines))
    write_json(
        ctx.out / "result.json",
        {
            "experiment": name,
            "title": title,
            "scale": ctx.scale,
            "seed": ctx.seed,
            "model": ctx.model,
            "figure": figure,
            **result,
            "claims": [c.to_json() for c in claims],
        },
    )
    return Outcome(name=name, claims=claims, figure=figure, table=table)


def claims_table(claims, *, experiment: str | None = None) -> str:
    """Markdown table of claims: claim, kind, criterion, measured (95% CI, seeds), verdict."""
    rows = []
    for c in claims:
        c = c if isinstance(c, Claim) else Claim(**c)
        measured = c.measured
        if c.ci is not None:
            measured += f"; 95% CI [{float(c.ci[0]):.3g}, {float(c.ci[1]):.3g}]"  # JSON keeps nan/inf as strings
        if c.seeds is not None:
            measured += f", {c.seeds} seeds"
        verdict_ = c.verdict if c.verdict != "not reproduced" else "**not reproduced**"
        row = [c.proposition, c.claim, c.kind, c.criterion, measured, verdict_]
        rows.append(([experiment] if experiment else []) + row)
    header = (["experiment"] if experiment else []) + ["", "claim", "kind", "criterion", "measured", "verdict"]
    return markdown_table(header, rows)
