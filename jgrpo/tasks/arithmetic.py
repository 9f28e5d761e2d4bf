"""A small verifiable task for end-to-end GRPO: two-operand addition with "thinking" filler tokens.

A prompt is ``BOS a + b =`` with the operands written as zero-padded decimal
digits (``BOS 0 7 + 1 2 =`` for 7 + 12 when ``max_operand`` has two digits). A
completion is any number of ``FILLER`` tokens (the "thinking"), then the sum in
canonical decimal (no leading zero), then ``EOS``::

    FILLER FILLER 1 9 EOS PAD PAD ...

The reward is verifiable: 1.0 when the parsed answer equals a + b exactly, 0.0
otherwise, and 0.0 for any malformed completion (no EOS, no digit, a token out
of place, a leading zero). Completions of one group differ in their number of
fillers, hence in length, so the length biases of the token weights alpha
(Table 1 of arXiv 2601.05002) act on real rollouts; and they often share a
prefix of fillers, which is where Prop. 1's W_agg lives.

Vocabulary (``VOCAB_SIZE`` = 16 ids)::

    PAD 0, BOS 1, EOS 2, PLUS 3, EQUALS 4, FILLER 5, DIGIT_0 .. DIGIT_9 = 6 .. 15

Everything here is jit-able: no Python loop over tokens or completions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BOS",
    "DIGIT_0",
    "EOS",
    "EQUALS",
    "FILLER",
    "PAD",
    "PLUS",
    "VOCAB_SIZE",
    "ArithmeticTask",
    "Parsed",
    "correct_completions",
    "decode",
    "encode",
    "parse",
    "reward",
    "sample_prompts",
]

PAD = 0
BOS = 1
EOS = 2
PLUS = 3
EQUALS = 4
FILLER = 5
DIGIT_0 = 6  # DIGIT_0 + d is the token of digit d
VOCAB_SIZE = 16

_NAMES = {PAD: "_", BOS: "^", EOS: "$", PLUS: "+", EQUALS: "=", FILLER: "."}


def _num_digits(n: int) -> int:
    return len(str(int(n)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArithmeticTask:
    """Static configuration of the addition task (frozen, hashable, keyword-only).

    Attributes:
      max_operand: operands a, b are drawn uniformly from ``{0, ..., max_operand}``.
      max_filler: the supervised warm-up draws its filler counts uniformly from
        ``{0, ..., max_filler}``. The reward accepts any number of fillers that
        fits in ``max_len``.
      max_len: T, the completion budget of sampling (fillers + answer + EOS).
        None (default) gives ``2 * max_filler + answer_digits + 1``, so a policy
        can drift to longer "thinking" than the warm-up showed it.

    Derived (properties): ``operand_digits``, ``answer_digits``, ``prompt_len`` P,
    ``vocab_size`` V.
    """

    max_operand: int = 9
    max_filler: int = 4
    max_len: int | None = None

    def __post_init__(self) -> None:
        for name, low in (("max_operand", 1), ("max_filler", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ArithmeticTask.{name} must be an int >= {low}, got {value!r}")
        if self.max_operand > 99_999_999:
            raise ValueError(f"ArithmeticTask.max_operand must be <= 99999999 (int32 sums), got {self.max_operand}")
        shortest = self.answer_digits + 1 + self.max_filler
        if self.max_len is None:
            object.__setattr__(self, "max_len", shortest + self.max_filler)
        elif isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < shortest:
            raise ValueError(
                f"ArithmeticTask.max_len must be an int >= max_filler + answer_digits + 1 = {shortest} "
                f"(room for the longest warm-up completion), got {self.max_len!r}"
            )

    @property
    def operand_digits(self) -> int:
        """Digits of each (zero-padded) operand in the prompt."""
        return _num_digits(self.max_operand)

    @property
    def answer_digits(self) -> int:
        """Most digits of a correct answer (of ``2 * max_operand``)."""
        return _num_digits(2 * self.max_operand)

    @property
    def prompt_len(self) -> int:
        """P = 1 (BOS) + 2 * operand_digits + 2 (PLUS, EQUALS)."""
        return 2 * self.operand_digits + 3

    @property
    def vocab_size(self) -> int:
        """V (= ``VOCAB_SIZE``)."""
        return VOCAB_SIZE


def _check_task(task: Any) -> ArithmeticTask:
    if not isinstance(task, ArithmeticTask):
        raise TypeError(f"task must be an ArithmeticTask, got {type(task).__name__}")
    return task


def _digits(values, n: int):
    """``[...]`` int -> ``[..., n]`` its n decimal digits, most significant first (zero-padded)."""
    powers = 10 ** jnp.arange(n - 1, -1, -1, dtype=jnp.int32)
    return (values[..., None] // powers) % 10


def sample_prompts(task: ArithmeticTask, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Draws ``batch_size`` prompts ``BOS a + b =`` with a, b uniform in ``{0..max_operand}``.

    Args:
      task: the task.
      key: a PRNG key (the result is a deterministic function of it).
      batch_size: B >= 1 (static).

    Returns:
      ``(prompt, answers)``: ``prompt`` ``[B, P]`` int32 token ids, ``answers`` ``[B]``
      int32 the sums a + b.
    """
    task = _check_task(task)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return _sample_prompts(task, key, int(batch_size))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample_prompts(task: ArithmeticTask, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    ab = jax.random.randint(key, (batch_size, 2), 0, task.max_operand + 1, dtype=jnp.int32)
    d = DIGIT_0 + _digits(ab, task.operand_digits)  # [B, 2, n]
    b = ab.shape[0]
    col = lambda tok: jnp.full((b, 1), tok, jnp.int32)  # noqa: E731
    prompt = jnp.concatenate([col(BOS), d[:, 0], col(PLUS), d[:, 1], col(EQUALS)], axis=1)
    return prompt.astype(jnp.int32), jnp.sum(ab, axis=1)


def correct_completions(
    task: ArithmeticTask, key: jax.Array, answers: Any, *, num_filler: Any = None
) -> tuple[jax.Array, jax.Array]:
    """Correct completions ``FILLER * k, digits(answer), EOS, PAD ...`` of width ``task.max_len``.

    Args:
      task: the task.
      key: a PRNG key for the filler counts (unused when ``num_filler`` is given).
      answers: ``[...]`` int the sums to write (0 <= answer <= 2 * max_operand).
      num_filler: optional ``[...]`` int filler counts; default uniform in
        ``{0..max_filler}``.

    Returns:
      ``(tokens, mask)``: ``[..., T]`` int32 tokens and float32 mask (1 up to and
      including EOS) with T = ``task.max_len``.
    """
    task = _check_task(task)
    answers = jnp.asarray(answers, jnp.int32)
    if num_filler is None:
        num_filler = jax.random.randint(key, answers.shape, 0, task.max_filler + 1, dtype=jnp.int32)
    return _correct_completions(task, answers, jnp.broadcast_to(jnp.asarray(num_filler, jnp.int32), answers.shape))


@functools.partial(jax.jit, static_argnums=0)
def _correct_completions(task: ArithmeticTask, answers: jax.Array, num_filler: jax.Array):
    k = num_filler[..., None]
    n = task.answer_digits
    n_dig = jnp.maximum(1, jnp.sum(answers[..., None] >= 10 ** jnp.arange(1, n, dtype=jnp.int32), axis=-1) + 1)
    n_dig = n_dig[..., None]
    t = jnp.arange(task.max_len, dtype=jnp.int32)
    digits = _digits(answers, n)  # [..., n], zero-padded on the left
    idx = jnp.clip(t - k + (n - n_dig), 0, n - 1)  # index into the zero-padded digits
    digit_tok = DIGIT_0 + jnp.take_along_axis(digits, idx, axis=-1)
    tokens = jnp.where(t < k, FILLER, jnp.where(t < k + n_dig, digit_tok, jnp.where(t == k + n_dig, EOS, PAD))).astype(
        jnp.int32
    )
    mask = (t <= k + n_dig).astype(jnp.float32)
    return tokens, mask


class Parsed(NamedTuple):
    """The parse of completions ``[..., T]`` (all fields ``[...]``).

    Attributes:
      value: int32 the answer written after the fillers (-1 when malformed).
      valid: bool, the completion is ``FILLER* digit+ EOS`` with no leading zero
        and at most ``answer_digits`` digits.
      num_filler: int32 leading FILLER tokens.
      length: int32 completion tokens (EOS included).
    """

    value: jax.Array
    valid: jax.Array
    num_filler: jax.Array
    length: jax.Array


def parse(task: ArithmeticTask, tokens: Any, mask: Any) -> Parsed:
    """Parses completions ``FILLER* digit+ EOS`` (vectorised; jit-able).

    Args:
      task: the task.
      tokens: ``[..., T]`` int token ids.
      mask: ``[..., T]``, 1 on completion tokens. Only the leading run of ones is
        read (a right-padded mask; tokens after its first 0 are ignored).

    Returns:
      A :class:`Parsed`.
    """
    task = _check_task(task)
    tokens = jnp.asarray(tokens)
    mask = jnp.asarray(mask)
    if tokens.ndim < 1 or tokens.shape != mask.shape:
        raise ValueError(f"tokens and mask must have the same shape [..., T], got {tokens.shape} and {mask.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"tokens must be an integer array of token ids, got dtype {tokens.dtype}")
    return _parse(task, tokens.astype(jnp.int32), mask)


@functools.partial(jax.jit, static_argnums=0)
def _parse(task: ArithmeticTask, tokens: jax.Array, mask: jax.Array) -> Parsed:
    live = jnp.cumprod(mask.astype(bool).astype(jnp.int32), axis=-1).astype(bool)  # leading run of the mask
    length = jnp.sum(live, axis=-1, dtype=jnp.int32)
    t = jnp.arange(tokens.shape[-1], dtype=jnp.int32)
    is_filler = (tokens == FILLER) & live
    k = jnp.sum(jnp.cumprod(is_filler.astype(jnp.int32), axis=-1), axis=-1, dtype=jnp.int32)
    n_dig = length - 1 - k
    last = jnp.take_along_axis(tokens, jnp.maximum(length - 1, 0)[..., None], axis=-1)[..., 0]
    first = jnp.take_along_axis(tokens, jnp.clip(k, 0, tokens.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    region = (t >= k[..., None]) & (t < (length - 1)[..., None])
    is_digit = (tokens >= DIGIT_0) & (tokens <= DIGIT_0 + 9)
    valid = (
        (length >= 2)
        & (last == EOS)
        & (n_dig >= 1)
        & (n_dig <= task.answer_digits)
        & jnp.all(is_digit | ~region, axis=-1)
        & ((n_dig == 1) | (first != DIGIT_0))
    )
    power = jnp.clip(length[..., None] - 2 - t, 0, task.answer_digits - 1)
    value = jnp.sum(jnp.where(region, (tokens - DIGIT_0) * 10**power, 0), axis=-1, dtype=jnp.int32)
    return Parsed(value=jnp.where(valid, value, -1), valid=valid, num_filler=k, length=length)


def reward(task: ArithmeticTask, tokens: Any, mask: Any, answers: Any) -> jax.Array:
    """Verifiable reward ``[B, G]`` float32: 1.0 for a well-formed, exactly correct answer, else 0.0.

    Args:
      task: the task.
      tokens: ``[B, G, T]`` int completions.
      mask: ``[B, G, T]`` 1 on completion tokens (up to and including EOS).
      answers: ``[B]`` int the correct sums.

    Returns:
      ``[B, G]`` float32 rewards in {0, 1}.

    Raises:
      ValueError: tokens not of rank 3, or answers not of shape [B].
    """
    shape = tuple(np.shape(tokens))
    if len(shape) != 3:
        raise ValueError(f"tokens must have shape [B, G, T] (rank 3), got shape {shape}")
    if tuple(np.shape(answers)) != shape[:1]:
        raise ValueError(f"answers must have shape [B] = ({shape[0]},), got {tuple(np.shape(answers))}")
    p = parse(task, tokens, mask)
    return _match(p.valid, p.value, jnp.asarray(answers, jnp.int32))


@jax.jit
def _match(valid: jax.Array, value: jax.Array, answers: jax.Array) -> jax.Array:
    return (valid & (value == answers[:, None])).astype(jnp.float32)


def decode(tokens: Any, mask: Any = None) -> str:
    """A readable string of one token sequence ``[T]`` (``^`` BOS, ``$`` EOS, ``.`` FILLER, ``_`` PAD)."""
    toks = np.asarray(tokens).reshape(-1)
    if mask is not None:
        toks = toks[np.asarray(mask).reshape(-1).astype(bool)]
    return "".join(str(int(x) - DIGIT_0) if int(x) >= DIGIT_0 else _NAMES.get(int(x), "?") for x in toks)


def encode(text: str) -> np.ndarray:
    """The inverse of :func:`decode`: ``"..12$"`` -> ``[FILLER, FILLER, DIGIT_0+1, DIGIT_0+2, EOS]`` int32.

    Spaces are ignored. Raises ValueError for any other character.
    """
    inverse = {v: k for k, v in _NAMES.items()}
    out = []
    for ch in text.replace(" ", ""):
        if ch.isdigit():
            out.append(DIGIT_0 + int(ch))
        elif ch in inverse:
            out.append(inverse[ch])
        else:
            raise ValueError(f"encode: unknown character {ch!r} in {text!r}; use digits and {''.join(inverse)}")
    return np.asarray(out, np.int32)
