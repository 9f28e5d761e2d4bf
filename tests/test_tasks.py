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


@pytest.mark.slow  # make test-all: a warm-up training run
def test_warmup_raises_accuracy_above_chance():
    config = policies.TransformerConfig.tiny(vocab=TASK.vocab_size, max_len=TASK.prompt_len + TASK.max_len)
    graphdef, params = policies.make_transformer(jax.random.key(0), config)
    mesh = jtrain.data_mesh()
    params = jtrain._place(params, mesh)
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


# ----------------------------------------------------------------------------- text tasks: tokenizer and Countdown

import itertools  # noqa: E402
import json  # noqa: E402
from fractions import Fraction  # noqa: E402

from jgrpo.tasks import text as T  # noqa: E402

COUNTDOWN = T.CountdownTask(num_numbers=3, max_number=12, max_target=100)


def make_tokenizer(path, *, eos=True):
    """A tiny byte-level BPE tokenizer (the kind Qwen and Llama 3 use), trained here on Countdown text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        T.countdown_prompt(COUNTDOWN, p) + f"<answer>{p.solution}</answer>"
        for p in T.countdown_problems(COUNTDOWN, 0, 50)
    ]
    tok.train_from_iterator(corpus, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"pad_token": "<pad>"} | ({"eos_token": {"content": "</s>"}} if eos else {})
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return path


def _solvable(numbers, target) -> bool:
    """Independent brute force: every order, every operator triple, both tree shapes of 3 leaves (or 2 leaves)."""
    ops = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b if b else None,
    }
    for perm in itertools.permutations([Fraction(n) for n in numbers]):
        if len(perm) == 2:
            if any(f(*perm) == target for f in ops.values()):
                return True
            continue
        a, b, c = perm
        for f, g in itertools.product(ops.values(), repeat=2):
            left = f(a, b)
            if left is not None and g(left, c) == target:
                return True
            right = g(b, c)
            if right is not None and f(a, right) == target:
                return True
    return False


def test_countdown_problems_are_solvable_and_scored_exactly():
    problems = T.countdown_problems(COUNTDOWN, 1, 40)
    assert len({p.numbers for p in problems}) > 30  # varied
    for p in problems:
        assert 1 <= p.target <= 100 and len(p.numbers) == 3
        assert _solvable(p.numbers, p.target), p
        assert T.countdown_score(p, f"thinking... <answer>{p.solution}</answer>") == 1.0
    assert T.countdown_problems(COUNTDOWN, 1, 40) == problems  # deterministic in the seed
    p = T.CountdownProblem(numbers=(3, 6, 4), target=8, solution="6 / 3 * 4")
    cases = [
        ("<answer>6 / 3 * 4</answer>", 1.0),
        ("<answer> (6/3)*4 </answer>", 1.0),
        ("<answer>4 * 6 / 3</answer>", 1.0),  # exact rationals: 24 / 3
        ("<answer>6 + 3 - 4</answer>", 0.0),  # = 5
        ("<answer>6 / 3 * 4 * 1</answer>", 0.0),  # a number not given
        ("<answer>4 + 4</answer>", 0.0),  # 4 twice, 3 and 6 unused
        ("<answer>6 / (3 - 3) * 4</answer>", 0.0),  # division by zero
        ("<answer>__import__('os')</answer>", 0.0),  # never evaluated
        ("6 / 3 * 4", 0.0),  # no tags
        ("<answer>6 + 3 + 4</answer> no, <answer>6 / 3 * 4</answer>", 1.0),  # the last answer counts
        ("<answer>6 / 3 * 4</answer> <answer>6 + 3</answer>", 0.0),
        ("<answer>-6 / 3 * 4</answer>", 0.0),  # no unary minus
        ("<answer>(6 / 3 * 4</answer>", 0.0),
    ]
    for text, want in cases:
        assert T.countdown_score(p, text) == want, text
    with pytest.raises(ValueError, match="CountdownTask.num_numbers"):
        T.CountdownTask(num_numbers=1)


def test_tokenizer_from_checkpoint_directory(tmp_path):
    tok = T.load_tokenizer(make_tokenizer(tmp_path))
    assert tok.eos_id == tok.tokenizer.token_to_id("</s>") and tok.pad_id == tok.tokenizer.token_to_id("<pad>")
    text = T.countdown_prompt(COUNTDOWN, T.countdown_problems(COUNTDOWN, 3, 1)[0])
    assert tok.decode(tok.encode(text)) == text
    ids, mask = tok.encode_left_padded(["12 + 3", "<answer>7 * 2</answer>"])
    assert ids.shape == mask.shape and mask[1].all() and not mask[0].all() and mask[0, -1] == 1
    assert np.all(ids[mask == 0] == tok.pad_id)
    assert tok.decode(ids[0][mask[0] == 1]) == "12 + 3"
    body = tok.encode("<answer>7 * 2</answer>")
    tokens = np.full((1, 2, len(body) + 3), tok.pad_id, np.int32)
    tokens[0, 0, : len(body)] = body
    tokens[0, 0, len(body)] = tok.eos_id
    completion_mask = np.zeros(tokens.shape, np.float32)
    completion_mask[0, 0, : len(body) + 1] = 1
    assert tok.decode_completions(tokens, completion_mask) == [["<answer>7 * 2</answer>", ""]]
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        T.load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no EOS token"):
        T.load_tokenizer(make_tokenizer(tmp_path / "noeos", eos=False))
    (tmp_path / "noeos" / "config.json").write_text(json.dumps({"eos_token_id": [5, 6]}))
    assert T.load_tokenizer(tmp_path / "noeos").eos_id == 5


def _countdown_policy(tok, kind):
    import jgrpo.models as M

    if kind == "tabular":  # cheap to compile: the same pipeline, a tabular policy over the tokenizer's vocabulary
        return M.tabular_decoder(), policies.tabular_init(jax.random.key(0), vocab=tok.vocab_size, max_len=8)
    cfg = M.ModelConfig.tiny("qwen2", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, head_dim=8)
    return M.decoder(M.model_fn(cfg)), M.init_params(cfg, jax.random.key(0), std=0.3)


@pytest.mark.parametrize("kind", ["tabular", pytest.param("checkpoint_model", marks=pytest.mark.slow)])
def test_countdown_rollout_end_to_end(tmp_path, kind):
    """Text prompt -> ids -> G completions of a policy -> text -> verifiable reward."""
    tok = T.load_tokenizer(make_tokenizer(tmp_path))
    policy, params = _countdown_policy(tok, kind)
    problems = T.countdown_problems(COUNTDOWN, 4, 2)
    out = T.rollout(policy, params, tok, COUNTDOWN, problems, jax.random.key(1), group_size=3, max_len=8)
    assert out.rewards.shape == (2, 3) and set(np.unique(out.rewards)) <= {0.0, 1.0}
    assert len(out.texts) == 2 and all(len(r) == 3 and all(isinstance(t, str) for t in r) for r in out.texts)
    assert out.prompt.shape == out.prompt_mask.shape and out.prompt_mask[:, -1].all()
    batch = out.samples.to_batch(out.rewards)
    assert batch.tokens.shape == (2, 3, 8)
    # The same pipeline rewards a correct completion 1: its text -> ids -> text round trip is exact.
    good = [[f"<answer>{p.solution}</answer>"] for p in problems]
    ids = [tok.encode(g[0]) + [tok.eos_id] for g in good]
    t = max(len(i) for i in ids)
    tokens = np.full((2, 1, t), tok.pad_id, np.int32)
    mask = np.zeros((2, 1, t), np.float32)
    for b, i in enumerate(ids):
        tokens[b, 0, : len(i)], mask[b, 0, : len(i)] = i, 1
    np.testing.assert_array_equal(T.countdown_rewards(COUNTDOWN, problems, tok.decode_completions(tokens, mask)), 1.0)
