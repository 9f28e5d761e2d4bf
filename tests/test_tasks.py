"""The verifiable addition task (jgrpo.tasks) and the supervised warm-up (jgrpo.train.warmup)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrpo import policies, tasks
from jgrpo import train as jtrain

TASK = tasks.ArithmeticTask()  # operands 0..9, up to 4 warm-up fillers, T = 11
# Shared with tests/test_train.py so the compiled warm-up is reused in one pytest run.
WARMUP_STEPS, WARMUP_BATCH = 150, 64
# CPU: compiles the tiny model 2-3x faster (results differ from the default compile in float rounding only).
# GPU: deterministic scatter-adds, so that a resumed run is bitwise the uninterrupted one.
COMPILE_OPTIONS = {
    "cpu": {"xla_backend_optimization_level": 0},
    "gpu": {"xla_gpu_deterministic_ops": True},
}.get(jax.default_backend())


def _batch(rows, t=None):
    """Right-padded ``(tokens [N, T], mask [N, T])`` from strings; ``mask_len`` overrides the mask."""
    t = t or max(len(tasks.encode(r[0])) for r in rows) + 2
    tokens = np.full((len(rows), t), tasks.PAD, np.int32)
    mask = np.zeros((len(rows), t), np.float32)
    for n, (text, mask_len) in enumerate(rows):
        ids = tasks.encode(text)
        tokens[n, : len(ids)] = ids
        mask[n, : len(ids) if mask_len is None else mask_len] = 1.0
    return tokens, mask


# (completion, mask length or None for "all written tokens", answer, reward)
HAND_CASES = [
    ("12$", None, 12, 1.0),
    ("..12$", None, 12, 1.0),
    (".......7$", None, 7, 1.0),  # more fillers than the warm-up's max_filler: still fine
    ("0$", None, 0, 1.0),
    ("..0$", None, 0, 1.0),
    ("13$", None, 12, 0.0),  # wrong answer
    ("1$", None, 12, 0.0),  # a prefix of the answer
    ("12", None, 12, 0.0),  # no EOS (truncated)
    ("12$", 2, 12, 0.0),  # EOS outside the mask
    ("$", None, 0, 0.0),  # no digit
    ("", None, 0, 0.0),  # empty
    (".1.2$", None, 12, 0.0),  # filler inside the number
    ("12.$", None, 12, 0.0),  # filler after the number
    ("012$", None, 12, 0.0),  # leading zero
    ("00$", None, 0, 0.0),  # leading zero
    ("+12$", None, 12, 0.0),  # token out of place
    ("1=2$", None, 12, 0.0),
    ("12$$", None, 12, 0.0),  # EOS twice
    ("^12$", None, 12, 0.0),  # BOS in a completion
    ("100$", None, 100, 0.0),  # more digits than any answer (max 18) has
    ("12$34", 3, 12, 1.0),  # tokens after the mask are ignored
    ("12$..", 3, 12, 1.0),
]


def test_vocabulary_constants():
    ids = [tasks.PAD, tasks.BOS, tasks.EOS, tasks.PLUS, tasks.EQUALS, tasks.FILLER] + [
        tasks.DIGIT_0 + d for d in range(10)
    ]
    assert sorted(ids) == list(range(tasks.VOCAB_SIZE)) and TASK.vocab_size == tasks.VOCAB_SIZE == 16
    assert tasks.decode(tasks.encode("^07+12=..19$_")) == "^07+12=..19$_"


def test_task_config_validation():
    assert TASK.max_len == 2 * 4 + 2 + 1 and TASK.prompt_len == 5
    big = tasks.ArithmeticTask(max_operand=99, max_filler=2)
    assert (big.operand_digits, big.answer_digits, big.prompt_len, big.max_len) == (2, 3, 7, 8)
    with pytest.raises(ValueError, match="max_operand"):
        tasks.ArithmeticTask(max_operand=0)
    with pytest.raises(ValueError, match="max_filler"):
        tasks.ArithmeticTask(max_filler=-1)
    with pytest.raises(ValueError, match=r"max_len must be an int >= max_filler \+ answer_digits \+ 1 = 7"):
        tasks.ArithmeticTask(max_len=6)
    hash(TASK)


@pytest.mark.parametrize("text,mask_len,answer,expected", HAND_CASES, ids=[c[0] or "empty" for c in HAND_CASES])
def test_reward_hand_cases(text, mask_len, answer, expected):
    tokens, mask = _batch([(text, mask_len)], t=12)
    r = tasks.reward(TASK, tokens[:, None], mask[:, None], np.array([answer]))
    assert r.shape == (1, 1) and r.dtype == jnp.float32
    assert float(r[0, 0]) == expected


def test_reward_batched_and_jitted_agree_with_hand_cases():
    rows = [(c[0], c[1]) for c in HAND_CASES]
    tokens, mask = _batch(rows, t=12)
    answers = np.array([c[2] for c in HAND_CASES])
    expected = np.array([c[3] for c in HAND_CASES], np.float32)
    # [B, G, T] with B = 1 prompt per case and G = 2 copies.
    tok3, mask3 = np.repeat(tokens[:, None], 2, 1), np.repeat(mask[:, None], 2, 1)
    fn = jax.jit(lambda t, m, a: tasks.reward(TASK, t, m, a))
    np.testing.assert_array_equal(fn(tok3, mask3, answers), np.repeat(expected[:, None], 2, 1))
    parsed = tasks.parse(TASK, tokens, mask)
    assert int(parsed.value[1]) == 12 and int(parsed.num_filler[1]) == 2 and int(parsed.length[1]) == 5
    assert int(parsed.value[np.argmax([c[0] == "012$" for c in HAND_CASES])]) == -1


def test_reward_bad_input():
    tokens, mask = _batch([("12$", None)])
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, G, T\]"):
        tasks.reward(TASK, tokens, mask, np.array([12]))
    with pytest.raises(ValueError, match=r"answers must have shape \[B\] = \(1,\)"):
        tasks.reward(TASK, tokens[:, None], mask[:, None], np.array([12, 3]))
    with pytest.raises(TypeError, match="integer"):
        tasks.parse(TASK, tokens.astype(np.float32), mask)


def test_sample_prompts_encode_their_answers():
    task = tasks.ArithmeticTask(max_operand=99)
    prompt, answers = jax.jit(lambda k: tasks.sample_prompts(task, k, 64))(jax.random.key(0))
    assert prompt.shape == (64, task.prompt_len) and prompt.dtype == jnp.int32
    for row, ans in zip(np.asarray(prompt), np.asarray(answers), strict=True):
        text = tasks.decode(row)
        assert text[0] == "^" and text[3] == "+" and text[-1] == "="
        a, b = int(text[1:3]), int(text[4:6])
        assert 0 <= a <= 99 and 0 <= b <= 99 and a + b == ans
    again, _ = tasks.sample_prompts(task, jax.random.key(0), 64)
    np.testing.assert_array_equal(prompt, again)


def test_correct_completions_get_reward_one():
    answers = jnp.arange(19)
    tokens, mask = tasks.correct_completions(TASK, jax.random.key(1), answers)
    assert tokens.shape == (19, TASK.max_len)
    r = tasks.reward(TASK, tokens[:, None], mask[:, None], answers)
    np.testing.assert_array_equal(r, 1.0)
    parsed = tasks.parse(TASK, tokens, mask)
    assert int(parsed.num_filler.min()) >= 0 and int(parsed.num_filler.max()) <= TASK.max_filler
    np.testing.assert_array_equal(parsed.length, parsed.num_filler + np.where(answers >= 10, 2, 1) + 1)
    fixed, _ = tasks.correct_completions(TASK, None, jnp.array([7, 18]), num_filler=jnp.array([0, 3]))
    assert [tasks.decode(row) for row in np.asarray(fixed)] == ["7$_________", "...18$_____"]


def test_warmup_raises_accuracy_above_chance():
    config = policies.TransformerConfig.tiny(vocab=TASK.vocab_size, max_len=TASK.prompt_len + TASK.max_len)
    graphdef, params = policies.make_transformer(jax.random.key(0), config)
    mesh = jtrain.data_mesh()
    params = jtrain._replicate(params, mesh)
    evaluate = lambda p: jtrain.evaluate(  # noqa: E731
        TASK, graphdef, p, jax.random.key(7), num_prompts=256, compiler_options=COMPILE_OPTIONS
    )
    before = evaluate(params)
    trained, losses = jtrain.warmup(
        TASK,
        graphdef,
        params,
        jax.random.key(1),
        steps=WARMUP_STEPS,
        batch_size=WARMUP_BATCH,
        mesh=mesh,
        compiler_options=COMPILE_OPTIONS,
    )
    after = evaluate(trained)
    assert losses.shape == (WARMUP_STEPS,) and float(losses[-1]) < 0.5 * float(losses[0])
    # Chance: a random policy essentially never writes FILLER* digits EOS with the right digits.
    assert before["accuracy"] < 0.02
    assert after["accuracy"] > 0.1 and after["valid_frac"] > 0.8
