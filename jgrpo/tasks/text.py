"""Text tasks for real checkpoints: the checkpoint's tokenizer and Countdown, a procedurally generated verifiable task.

The loop a text task runs::

    tok = load_tokenizer(path)                           # tokenizer.json (+ tokenizer_config.json) of the checkpoint
    problems = countdown_problems(task, seed, n=B)       # no dataset download: generated
    prompt, prompt_mask = tok.encode_left_padded([countdown_prompt(task, p) for p in problems])
    s = jgrpo.sample(decoder, params, prompt, key, group_size=G, max_len=T, eos_id=tok.eos_id,
                     pad_id=tok.pad_id, prompt_mask=prompt_mask)
    texts = tok.decode_completions(s.tokens, s.mask)     # [B][G] strings
    rewards = countdown_rewards(task, problems, texts)   # [B, G] in {0, 1}

(:func:`rollout` does exactly this). Countdown (as in TinyZero): given ``num_numbers``
integers and a target, write an arithmetic expression with ``+ - * /`` and parentheses
that uses each number exactly once and equals the target. Every generated problem is
solvable: its target is the value of a random expression over its numbers. The answer is
read from the last ``<answer>...</answer>`` of the completion and checked by an exact
rational parser (never ``eval``), so the reward is verifiable.

Host-side (Python) code: tokenization and verification run on the host between the
jitted sampler and the jitted loss.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CountdownProblem",
    "CountdownTask",
    "TextTokenizer",
    "countdown_problems",
    "countdown_prompt",
    "countdown_rewards",
    "countdown_score",
    "evaluate_expression",
    "load_tokenizer",
    "rollout",
]


# ----------------------------------------------------------------------------- tokenizer


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


@dataclasses.dataclass(frozen=True, eq=False)
class TextTokenizer:
    """A checkpoint's tokenizer (``tokenizers.Tokenizer``) with its EOS and padding ids.

    Attributes:
      tokenizer: the ``tokenizers.Tokenizer``.
      eos_id: id that ends a completion (``eos_token`` of tokenizer_config.json, else
        ``eos_token_id`` of generation_config.json / config.json).
      pad_id: id used for padding (``pad_token``, else ``eos_id``).
      bos_id: id prepended to each prompt when the tokenizer's post-processor does not
        add it itself and the config asks for it (``add_bos_token``); None otherwise.
    """

    tokenizer: Any
    eos_id: int
    pad_id: int
    bos_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens of the post-processor included, plus ``bos_id`` when set)."""
        ids = list(self.tokenizer.encode(text).ids)
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_left_padded(self, texts: Sequence[str], *, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, P] int32, mask [B, P] int32)``: prompts left-padded with ``pad_id`` to a common length.

        Args:
          texts: B prompt strings.
          length: P; default the longest prompt. A longer prompt is an error (not truncated).

        Raises:
          ValueError: an empty text list, an empty encoding, or a prompt longer than ``length``.
        """
        if not texts:
            raise ValueError("texts must hold at least one prompt")
        encoded = [self.encode(t) for t in texts]
        longest = max(len(e) for e in encoded)
        if min(len(e) for e in encoded) == 0:
            raise ValueError("a prompt encodes to zero tokens; the sampler needs at least one")
        p = longest if length is None else int(length)
        if longest > p:
            raise ValueError(f"a prompt has {longest} tokens, more than length = {p}")
        ids = np.full((len(texts), p), self.pad_id, np.int32)
        mask = np.zeros((len(texts), p), np.int32)
        for b, e in enumerate(encoded):
            ids[b, p - len(e) :] = e
            mask[b, p - len(e) :] = 1
        return ids, mask

    def decode_completions(self, tokens: Any, mask: Any) -> list[list[str]]:
        """``[B][G]`` texts of completions ``tokens [B, G, T]`` (masked-in tokens, special tokens dropped)."""
        tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
        if tokens.ndim != 3 or tokens.shape != mask.shape:
            raise ValueError(f"tokens and mask must have the same shape [B, G, T], got {tokens.shape}, {mask.shape}")
        return [[self.decode(tokens[b, g][mask[b, g]]) for g in range(tokens.shape[1])] for b in range(tokens.shape[0])]


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        out = json.load(f)
    return out if isinstance(out, dict) else {}


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """The tokenizer of a checkpoint directory: ``tokenizer.json`` (the ``tokenizers`` package, the "hf" extra).

    Special tokens come from ``tokenizer_config.json`` (``eos_token``, ``pad_token``,
    ``bos_token`` + ``add_bos_token``), falling back to the ``eos_token_id`` of
    ``generation_config.json`` or ``config.json``.

    Raises:
      FileNotFoundError: no tokenizer.json in the directory.
      ValueError: no EOS token can be found, or a special token missing from the vocabulary.
    """
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no tokenizer.json in the checkpoint directory {path}")
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - the "hf" extra
        raise ImportError("load_tokenizer needs the 'tokenizers' package: pip install 'jgrpo[hf]'") from e
    tok = Tokenizer.from_file(file)
    cfg = _read_json(os.path.join(path, "tokenizer_config.json"))

    def token_id(name: str) -> int | None:
        content = _token_content(cfg.get(name))
        if content is None:
            return None
        i = tok.token_to_id(content)
        if i is None:
            raise ValueError(f"{path}: tokenizer_config.json {name} {content!r} is not in tokenizer.json's vocabulary")
        return int(i)

    eos = token_id("eos_token")
    if eos is None:
        for name in ("generation_config.json", "config.json"):
            value = _read_json(os.path.join(path, name)).get("eos_token_id")
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int):
                eos = value
                break
    if eos is None:
        raise ValueError(f"{path}: no EOS token (eos_token in tokenizer_config.json or eos_token_id in config.json)")
    pad = token_id("pad_token")
    bos = token_id("bos_token") if cfg.get("add_bos_token") else None
    return TextTokenizer(tokenizer=tok, eos_id=eos, pad_id=eos if pad is None else pad, bos_id=bos)


# ----------------------------------------------------------------------------- countdown


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountdownTask:
    """Countdown problems (frozen, hashable, keyword-only).

    Attributes:
      num_numbers: how many numbers a problem gives (each used exactly once), >= 2.
      min_number, max_number: the numbers are drawn uniformly from this range.
      max_target: targets are kept in ``[1, max_target]`` (redrawn otherwise).
    """

    num_numbers: int = 3
    min_number: int = 1
    max_number: int = 20
    max_target: int = 200

    def __post_init__(self) -> None:
        for name, low in (("num_numbers", 2), ("min_number", 1), ("max_number", 1), ("max_target", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"CountdownTask.{name} must be an int >= {low}, got {value!r}")
        if self.max_number < self.min_number:
            raise ValueError(f"CountdownTask.max_number ({self.max_number}) must be >= min_number ({self.min_number})")


class CountdownProblem(NamedTuple):
    """``numbers`` to combine, the ``target`` value, and one ``solution`` expression (for warm-ups and tests)."""

    numbers: tuple[int, ...]
    target: int
    solution: str


def _random_expression(rng: np.random.Generator, numbers: list[int]) -> tuple[str, Fraction]:
    """A random binary expression tree over ``numbers`` (each once), with its exact value."""
    items: list[tuple[str, Fraction]] = [(str(n), Fraction(n)) for n in numbers]
    while len(items) > 1:
        i, j = rng.choice(len(items), size=2, replace=False)
        (a, va), (b, vb) = items[i], items[j]
        ops = ["+", "-", "*"] + (["/"] if vb != 0 and (va / vb).denominator == 1 else [])
        op = ops[int(rng.integers(len(ops)))]
        value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else None}[op]
        items = [x for k, x in enumerate(items) if k not in (i, j)] + [(f"({a} {op} {b})", value)]
    expr, value = items[0]
    return (expr[1:-1] if expr.startswith("(") else expr), value


def countdown_problems(task: CountdownTask, seed: int | np.random.Generator, n: int) -> list[CountdownProblem]:
    """``n`` solvable problems: random numbers, the target being a random expression's value in ``[1, max_target]``."""
    if not isinstance(task, CountdownTask):
        raise TypeError(f"task must be a CountdownTask, got {type(task).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = []
    while len(out) < n:
        numbers = [int(x) for x in rng.integers(task.min_number, task.max_number + 1, size=task.num_numbers)]
        expr, value = _random_expression(rng, numbers)
        if value.denominator == 1 and 1 <= value <= task.max_target:
            out.append(CountdownProblem(numbers=tuple(numbers), target=int(value), solution=expr))
    return out


def countdown_prompt(task: CountdownTask, problem: CountdownProblem) -> str:
    """The prompt text of a problem (plain text; apply a chat template around it for instruct models)."""
    nums = ", ".join(str(n) for n in problem.numbers)
    return (
        f"Using the numbers [{nums}], create an equation that equals {problem.target}. "
        "Use + - * / and parentheses, each number exactly once. "
        "Show your work, then give the equation in <answer> </answer> tags, for example <answer>(1 + 2) * 3</answer>.\n"
    )


_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value and the integer literals of an arithmetic expression (``+ - * /``, parentheses, integers).

    A recursive-descent parser over rationals: no ``eval``, no floats.

    Raises:
      ValueError: anything else (other characters, unbalanced parentheses, division by zero,
        unary operators, more than 200 characters).
    """
    if len(expr) > 200:
        raise ValueError("expression longer than 200 characters")
    tokens = []
    for m in _TOKEN.finditer(expr.strip()):
        if m.group(1) is not None:
            tokens.append(("num", int(m.group(1))))
        elif m.group(2) in "+-*/()":
            tokens.append(("op", m.group(2)))
        elif m.group(2).strip():
            raise ValueError(f"unexpected character {m.group(2)!r}")
    pos = 0
    literals: list[int] = []

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def atom() -> Fraction:
        nonlocal pos
        kind, value = peek()
        if kind == "num":
            pos += 1
            literals.append(value)
            return Fraction(value)
        if (kind, value) == ("op", "("):
            pos += 1
            inner = sum_()
            if peek() != ("op", ")"):
                raise ValueError("missing ')'")
            pos += 1
            return inner
        raise ValueError(f"expected a number or '(' at token {pos}")

    def product() -> Fraction:
        nonlocal pos
        value = atom()
        while peek() in (("op", "*"), ("op", "/")):
            op = peek()[1]
            pos += 1
            rhs = atom()
            if op == "/" and rhs == 0:
                raise ValueError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def sum_() -> Fraction:
        nonlocal pos
        value = product()
        while peek() in (("op", "+"), ("op", "-")):
            op = peek()[1]
            pos += 1
            rhs = product()
            value = value + rhs if op == "+" else value - rhs
        return value

    if not tokens:
        raise ValueError("empty expression")
    value = sum_()
    if pos != len(tokens):
        raise ValueError(f"unexpected token at {pos}")
    return value, literals


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def countdown_score(problem: CountdownProblem, completion: str) -> float:
    """1.0 when the last ``<answer>...</answer>`` of ``completion`` is an expression that uses each
    of the problem's numbers exactly once and equals the target exactly; else 0.0."""
    answers = _ANSWER.findall(completion)
    if not answers:
        return 0.0
    try:
        value, literals = evaluate_expression(answers[-1])
    except ValueError:
        return 0.0
    return float(value == problem.target and sorted(literals) == sorted(problem.numbers))


def countdown_rewards(task: CountdownTask, problems: Sequence[CountdownProblem], texts: Sequence[Sequence[str]]):
    """Rewards ``[B, G]`` float32 of the completions ``texts[b][g]`` of problem ``b``."""
    if len(texts) != len(problems):
        raise ValueError(f"texts must hold one list per problem ({len(problems)}), got {len(texts)}")
    return np.asarray(
        [[countdown_score(p, t) for t in row] for p, row in zip(problems, texts, strict=True)], np.float32
    )


class Rollout(NamedTuple):
    """One batch of text rollouts: the :class:`jgrpo.Samples`, prompts, texts and rewards ``[B, G]``."""

    samples: Any
    prompt: np.ndarray
    prompt_mask: np.ndarray
    texts: list[list[str]]
    rewards: np.ndarray


def rollout(
    policy: Any,
    params: Any,
    tokenizer: TextTokenizer,
    task: CountdownTask,
    problems: Sequence[CountdownProblem],
    key: Any,
    *,
    group_size: int,
    max_len: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Rollout:
    """Prompt text -> ids -> G sampled completions each -> text -> verifiable rewards.

    ``policy`` is a sampler policy (e.g. ``jgrpo.models.decoder(model_fn)``); the result's
    ``samples.to_batch(rewards)`` is the :class:`jgrpo.GroupBatch` of the loss.
    """
    from jgrpo.sampling import sample

    prompt, prompt_mask = tokenizer.encode_left_padded([countdown_prompt(task, p) for p in problems])
    s = sample(
        policy,
        params,
        prompt,
        key,
        group_size=group_size,
        max_len=max_len,
        temperature=temperature,
        top_p=top_p,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        prompt_mask=prompt_mask,
    )
    texts = tokenizer.decode_completions(s.tokens, s.mask)
    return Rollout(s, prompt, prompt_mask, texts, countdown_rewards(task, problems, texts))
