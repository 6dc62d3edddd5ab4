"""The k-shot form of the built-in arithmetic task: fixed exemplars, the same prompt in training and eval, bad inputs."""

from __future__ import annotations

import pytest

from dreamlab.config import RecipeError, load_recipe
from dreamlab.data.arithmetic import MAX_SHOTS, arithmetic_rows, exemplars, fewshot_examples
from dreamlab.data.errors import DataError, InvalidRow
from dreamlab.data.formats import ConvertOptions, convert_s1k_simple
from dreamlab.data.sources import SourceRow, read_source
from dreamlab.evals.tasks import load_task
from dreamlab.models.tokenizer import build_char_tokenizer
from dreamlab.train.data import load_rows, tokenize_rows
from dreamlab.train.launcher import model_context_length

FIRST_TWO = [
    {"question": "Solve: 23 + 73", "solution": "<think>\n3+3+0=6 c0\n2+7+0=9 c0\n</think>\n96"},
    {"question": "Solve: 67 - 55", "solution": "<think>\n7-5-0=2 b0\n6-5-0=1 b0\n</think>\n12"},
]


def test_the_exemplars_are_fixed_train_questions_with_the_kinds_in_turn():
    assert fewshot_examples(1, 2) == FIRST_TWO
    assert [p.kind for p in exemplars(1)] == ["add", "sub"] * 4
    assert [p.question for p in exemplars(1, 3)] == [p.question for p in exemplars(1)][:3]
    assert fewshot_examples(1, 1, trace=False) == [{"question": "Solve: 23 + 73", "solution": "<think>\n</think>\n96"}]
    assert {p.kind for p in exemplars(2)} == {"add", "sub", "mul", "eq"}
    assert exemplars(1, 0) == []


def test_k_shot_rows_carry_the_exemplars_and_never_their_questions():
    plain, shot = arithmetic_rows("train", seed=0), arithmetic_rows("train", seed=0, shots=8)
    shown = {p.question for p in exemplars(1)}
    assert shown <= {r["question"] for r in plain}
    assert not shown & {r["question"] for r in shot}
    assert len(shot) == len(plain) - 8
    assert shot[0]["fewshot"] == fewshot_examples(1, 8)
    assert "fewshot" not in plain[0]
    assert arithmetic_rows("test", shots=8)[0]["question"] == arithmetic_rows("test")[0]["question"]


def test_the_training_prompt_is_the_exemplars_as_chat_turns():
    rows = load_rows(["builtin:arithmetic:2shot"], split="test", system_prompt=None)
    question = arithmetic_rows("test")[0]["question"]
    text = build_char_tokenizer().apply_chat_template(rows[0].prompt, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>user\nSolve: 23 + 73<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n3+3+0=6 c0\n2+7+0=9 c0\n</think>\n96<|im_end|>\n"
        "<|im_start|>user\nSolve: 67 - 55<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n7-5-0=2 b0\n6-5-0=1 b0\n</think>\n12<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = load_rows(["builtin:arithmetic:1shot"], split="test", system_prompt="Be exact.")[0].prompt
    assert [m["role"] for m in with_system] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize("shots", [1, 8])
def test_the_eval_task_renders_the_training_prompt(shots):
    tokenizer = build_char_tokenizer()
    task = load_task("arithmetic")
    assert task.fewshot == fewshot_examples(1, MAX_SHOTS)
    sample = task.load_samples(limit=1)[0]
    row = load_rows([f"builtin:arithmetic:{shots}shot"], split="test", system_prompt=None)[0]
    trained = tokenizer.apply_chat_template(row.prompt, add_generation_prompt=True, tokenize=False)
    assert task.render(sample.question, tokenizer, "chat", shots) == trained


def test_the_8_shot_prompt_is_557_tokens_for_every_level_1_question():
    tokenizer = build_char_tokenizer()
    rows = load_rows(["builtin:arithmetic:8shot"], split="validation", system_prompt=None)
    examples, _ = tokenize_rows(rows, tokenizer, max_length=605, truncation="error")
    assert {len(e.prompt_ids) for e in examples} == {557}
    assert max(len(e.prompt_ids) + len(e.response_ids) for e in examples) <= 605


def test_the_zero_shot_task_keeps_its_prompt_and_hash():
    task = load_task("arithmetic")
    assert task.shots == 0
    assert task.template_hash("chat", 0) == "b5469edd93e7"
    assert task.render("Solve: 1 + 2", build_char_tokenizer(), "chat", 0) == (
        "<|im_start|>user\nSolve: 1 + 2<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("source", [
    "builtin:arithmetic:9shot", "builtin:arithmetic:8shot:8shot", "builtin:arithmetic:eightshot",
    "builtin:arithmetic:1:2:8shot", "builtin:arithmeticx",
])
def test_bad_builtin_shot_specs_name_the_expected_form(source):
    with pytest.raises(DataError, match=rf"{source}: expected builtin:arithmetic\[:LEVEL\]\[:notrace\]\[:Kshot\].* K from 0 to 8"):
        read_source(source, split="test")


@pytest.mark.parametrize("shots", [-1, 9, 2.0, True])
def test_bad_shot_counts_are_refused(shots):
    with pytest.raises(ValueError, match="shots must be an integer from 0 to 8"):
        arithmetic_rows("test", shots=shots)


@pytest.mark.parametrize("fewshot, field", [
    ("Solve: 1 + 1", "'fewshot' must be a list of {question, solution} objects, got str"),
    ([{"question": "Solve: 1 + 1"}], r"'fewshot\[0\]\.solution' must be a non-empty string"),
    ([{"question": " ", "solution": "<think>\n</think>\n2"}], r"'fewshot\[0\]\.question' must be a non-empty string"),
    (["Solve: 1 + 1"], r"'fewshot\[0\]\.question' must be a non-empty string"),
])
def test_a_malformed_fewshot_field_names_the_row_and_field(fewshot, field):
    record = {"question": "Solve: 2 + 2", "answer": "<think>\n</think>\n4", "difficulty": 1, "fewshot": fewshot}
    with pytest.raises(InvalidRow, match=rf"rows.jsonl line 3: field {field}"):
        convert_s1k_simple(SourceRow(2, "rows.jsonl line 3", record), ConvertOptions(system=None))


def test_the_8_shot_recipe_loads_and_fits_its_prompts():
    recipe = load_recipe("tiny-arithmetic-8shot")
    default = load_recipe("tiny-arithmetic")
    assert recipe.data.train_files == recipe.data.val_files == ["builtin:arithmetic:8shot"]
    assert recipe.data.max_length == 557 + 48
    # It fine-tunes the default's trained model (trained from random weights it stayed at 0%).
    assert recipe.model == default.model.__class__(**{
        **default.model.__dict__, "compile": False, "partial_pretrain": "runs/arithmetic/checkpoints/step-005000/model"})
    assert recipe.optim == default.optim.__class__(**{**default.optim.__dict__, "lr": 1e-3})
    assert recipe.diffusion == default.diffusion


def test_the_8_shot_recipe_without_the_defaults_model_names_the_key_and_a_checkpoints_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"model\.partial_pretrain: no model at runs/arithmetic/checkpoints/step-005000/model .*runs/RUN/checkpoints/step-N/model"):
        model_context_length(load_recipe("tiny-arithmetic-8shot"))


def test_a_task_file_on_the_builtin_gets_its_levels_exemplars_unless_it_lists_its_own(tmp_path):
    level_two = tmp_path / "level2.yaml"
    level_two.write_text("name: l2\nsource: {builtin: arithmetic, level: 2}\nprompt:\n  template: chat\n  shots: 8\n")
    assert load_task(str(level_two)).fewshot == fewshot_examples(2, 8)
    own = tmp_path / "own.yaml"
    own.write_text("name: own\nsource: {builtin: arithmetic}\nfewshot:\n  - {question: 'Solve: 1 + 1', solution: '2'}\n")
    assert load_task(str(own)).fewshot == [{"question": "Solve: 1 + 1", "solution": "2"}]
