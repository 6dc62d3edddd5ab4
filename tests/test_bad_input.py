"""Bad input, property-based: random and adversarial rows, generations and recipes never end in a traceback."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.config import Recipe, RecipeError, load_recipe
from dreamlab.data.errors import DataError
from dreamlab.data.formats import CONVERTERS, ConvertOptions, DreamRow, detect_format
from dreamlab.data.sources import SourceRow
from dreamlab.evals.extract import EXTRACTORS, extract, flexible_match
from dreamlab.evals.scoring import SCORERS, score_generation
from dreamlab.store import RunStore
from dreamlab.train.launcher import check_before_launch

FIELDS = ["question", "answer", "solution", "thinking_trajectories", "attempt", "deepseek_thinking_trajectory",
          "deepseek_attempt", "gemini_thinking_trajectory", "gemini_attempt", "prompt", "response", "meta", "role",
          "content", "thinking_tokens", "difficulty", "cot_type", "source_type", "metadata"]
# Pieces the parsers look for, so random text hits their edge cases often.
TOKENS = ["<think>", "</think>", "<think>\n", "####", "#### ", "\\boxed{", "\\fbox{", "}", "{", "$", "<<", ">>", "=",
          "\n", " ", ",", ".", "-", "1", "42", "3.5", "1,000", "\\frac{1}{2}", "answer", "\u200b", "\x00", "\U0001f600",
          "<|mask|>", "\\", "\\\\", "\\text{", "...", "user", "assistant", "system"]
texts = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(TOKENS), max_size=25).map("".join))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), texts),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["role", "content", "x", *FIELDS[:3]]), children, max_size=4)),
    max_leaves=12,
)
records = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), json_values, max_size=8)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot", 3]),
                                           "content": st.one_of(texts, st.integers(), st.none())}), max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(CONVERTERS)), record=records, prompt=st.one_of(st.none(), messages),
       system=st.one_of(st.none(), texts), trajectory=st.sampled_from(["deepseek", "gemini"]), strip=st.booleans())
def test_converters_convert_or_reject_with_a_message(fmt, record, prompt, system, trajectory, strip):
    if prompt is not None:
        record = {**record, "prompt": prompt}
    row = SourceRow(index=0, where="rows.jsonl line 1", record=record)
    try:
        out = CONVERTERS[fmt](row, ConvertOptions(system=system, trajectory=trajectory, strip_calculator=strip))
    except DataError as error:
        assert str(error).startswith("rows.jsonl line 1") and "\n" not in str(error)
        return
    assert isinstance(out, DreamRow) and isinstance(out.response, str) and out.response
    assert all(isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant") for m in out.prompt)
    json.dumps(out.as_record())  # what prepare writes must serialise


@settings(max_examples=100, deadline=None)
@given(columns=st.sets(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), max_size=8))
def test_format_detection_names_a_format_or_says_it_cannot(columns):
    try:
        assert detect_format(columns) in CONVERTERS
    except DataError as error:
        assert "unknown format" in str(error)


@settings(max_examples=200, deadline=None)
@given(generation=texts, extractor=st.sampled_from(EXTRACTORS), numeric=st.booleans(),
       mask=st.sampled_from([None, "<|mask|>", ""]))
def test_the_answer_extractor_never_raises(generation, extractor, numeric, mask):
    found = extract(generation, extractor, mask_token=mask, numeric=numeric)
    assert found.answer is None or isinstance(found.answer, str)
    assert found.n_boxed >= 0 and found.leftover_masks >= 0 and isinstance(found.unclosed_boxed, bool)
    answer, ok = flexible_match(generation, "42")
    assert answer is None or isinstance(answer, str)
    assert isinstance(ok, bool)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generation=texts, gold=texts, extractor=st.sampled_from(EXTRACTORS), scorer=st.sampled_from(SCORERS),
       numeric=st.booleans())
def test_scoring_random_generations_against_random_golds_never_raises(generation, gold, extractor, scorer, numeric):
    score = score_generation(generation, gold, extractor=extractor, scorer=scorer, numeric=numeric, mask_token="<|mask|>")
    assert isinstance(score.as_row(), dict)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.one_of(records.map(json.dumps), texts), min_size=1, max_size=6),
       on_invalid=st.sampled_from(["error", "drop"]))
def test_data_prepare_on_garbage_rows_exits_with_a_message_not_a_traceback(rows, on_invalid):
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "rows.jsonl"
        source.write_text("\n".join(rows) + "\n")
        result = CliRunner().invoke(app, ["data", "prepare", str(source), "--out", str(Path(folder) / "out.jsonl"),
                                          "--on-invalid", on_invalid])
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


# -- recipes --------------------------------------------------------------------------------------

RECIPE_KEYS = [f"{section}.{key}" for section, values in Recipe().to_dict().items() for key in values]
wrong_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=4), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.one_of(st.sampled_from(RECIPE_KEYS), st.text(max_size=10).map(lambda k: f"data.{k}")),
                               wrong_values, min_size=1, max_size=3))
def test_recipes_with_wrong_values_are_refused_with_a_recipe_error_or_run(changes):
    document: dict = {}
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        document.setdefault(section, {})[key] = value
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump(document, handle)
        handle.flush()
        try:
            recipe = load_recipe(handle.name)
            check_before_launch(recipe)
        except RecipeError as error:
            assert str(error) and "\n" not in str(error)
            return
    for value in recipe.flat().values():  # accepted: everything numeric is finite and sizes positive
        for number in value if isinstance(value, list) else [value]:
            assert not isinstance(number, float) or math.isfinite(number)


@pytest.mark.parametrize("override,message", [
    ("optim.lr=nan", "optim.lr: must be a finite number"),
    ("optim.lr=inf", "optim.lr: must be a finite number"),
    ("optim.lr=0", "optim.lr: must be > 0"),
    ("optim.clip_grad=0", "optim.clip_grad: must be > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0"),
    ("diffusion.eps=0", "diffusion.eps: must be in (0, 1)"),
    ("trainer.device=tpu", "trainer.device: 'tpu' is not one of"),
    ("trainer.seed=-1", "trainer.seed: must be >= 0"),
    ("data.micro_batch_size_per_gpu=0", "must be > 0"),
    ("data.gradient_accumulation_steps=-1", "must be > 0"),
    ("trainer.save_checkpoint_steps=0", "must be > 0"),
    ("model.tiny_num_heads=5", "model.tiny_*: num_attention_heads (5) must be divisible"),
    ("data.max_length=100000", "above the model's context"),
    ("data.micro_batch_size_per_gpu=[1]", "expected an integer"),
    ("trainer.total_epochs=two", "expected an integer"),
    ("model.compile=sometimes", "expected true or false"),
    ("optim.unknown=1", "unknown recipe key"),
])
def test_bad_recipes_are_refused_before_any_process_or_run_exists(tmp_path, override, message):
    db = tmp_path / "runs" / "dreamlab.db"
    result = CliRunner().invoke(app, ["train", override, "--name", "never", "--db", str(db)])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not db.exists() or RunStore(db).list_runs() == []
    assert not (tmp_path / "runs" / "never").exists()
