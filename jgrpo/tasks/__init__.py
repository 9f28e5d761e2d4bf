"""Verifiable tasks: the token-level addition task (:mod:`jgrpo.tasks.arithmetic`, the CPU experiments'
task; its names are re-exported here) and text tasks for real checkpoints (:mod:`jgrpo.tasks.text`:
a tokenizer from the checkpoint directory and Countdown)."""

from jgrpo.tasks import arithmetic, text
from jgrpo.tasks.arithmetic import (
    BOS,
    DIGIT_0,
    EOS,
    EQUALS,
    FILLER,
    PAD,
    PLUS,
    VOCAB_SIZE,
    ArithmeticTask,
    Parsed,
    correct_completions,
    decode,
    encode,
    parse,
    reward,
    sample_prompts,
)

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
    "arithmetic",
    "correct_completions",
    "decode",
    "encode",
    "parse",
    "reward",
    "sample_prompts",
    "text",
]
