"""Bad input, property-based: random and adversarial rows, generations, recipes and hostile files (not UTF-8,
not SQLite, a truncated store) never end in a traceback: one `error:` line naming the file, exit code 2."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest.mock import patch

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


# -- hostile files: bytes that are not UTF-8, files that are not SQLite, truncated stores ------------------------

# Each can never be read as UTF-8 where it stands (an invalid byte, an overlong form, a surrogate, a cut sequence).
NEVER_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xc3", b"\xe2\x82"]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


text_bytes = st.one_of(st.binary(max_size=30), texts.map(str.encode),
                       records.map(lambda record: (json.dumps(record, ensure_ascii=False) + "\n").encode()))
not_utf8 = st.builds(lambda head, bad, tail: head + bad + tail, text_bytes, st.sampled_from(NEVER_UTF8),
                     text_bytes).filter(lambda data: not _is_utf8(data))


def one_error_line(args: list[str], names: Path | str) -> str:
    """Run the CLI: exit code 2 and a single `error:` line on stderr that names the file; returns the line."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(names) in lines[0], result.stderr
    return lines[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=not_utf8, suffix=st.sampled_from([".jsonl", ".json"]))
def test_data_prepare_on_bytes_that_are_not_utf8_names_the_file_and_line(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"rows{suffix}"
        source.write_bytes(data)
        line = one_error_line(["data", "prepare", str(source), "--out", str(Path(folder) / "out.jsonl")], source)
    assert "not UTF-8 text" in line


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), reader=st.sampled_from(["prepare", "eval"]))
def test_a_parquet_file_of_random_bytes_is_one_error_line(data, reader):
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "rows.parquet"
        source.write_bytes(data)
        args = (["data", "prepare", str(source), "--out", str(Path(folder) / "out.jsonl")] if reader == "prepare"
                else ["eval", "--task", "jsonl", "--data", str(source), "--db", str(Path(folder) / "d.db")])
        one_error_line(args, source)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=not_utf8, how=st.sampled_from(["train", "estimate", "extends", "model config"]))
def test_a_recipe_or_model_config_that_is_not_utf8_is_one_error_line_naming_it(data, how):
    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "bad.yaml"
        (Path(folder) / "model").mkdir()
        hostile = Path(folder) / "model" / "config.json" if how == "model config" else recipe
        hostile.write_bytes(data)
        db = Path(folder) / "runs" / "dreamlab.db"
        if how == "extends":
            child = Path(folder) / "child.yaml"
            child.write_text(f"extends: {recipe}\ntrainer:\n  seed: 1\n")
        args = {"train": ["train", str(recipe), "--db", str(db)], "estimate": ["train", "--estimate", str(recipe)],
                "extends": ["train", str(Path(folder) / "child.yaml"), "--db", str(db)],
                "model config": ["train", f"model.partial_pretrain={hostile.parent}", "--db", str(db)]}[how]
        assert "not UTF-8 text" in one_error_line(args, hostile)
        assert not db.exists() or RunStore(db).list_runs() == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=not_utf8, which=st.sampled_from(["generations", "task", "data.jsonl", "data.json", "data.csv"]))
def test_eval_files_that_are_not_utf8_are_one_error_line_naming_them(data, which):
    with tempfile.TemporaryDirectory() as folder:
        hostile = Path(folder) / {"generations": "gens.jsonl", "task": "task.yaml"}.get(which, which)
        hostile.write_bytes(data)
        generations = Path(folder) / "ok.jsonl"
        generations.write_text(json.dumps({"question": "q", "gold": "1", "generation": "1"}) + "\n")
        args = {"generations": ["eval", "score", str(hostile), "--task", "arithmetic"],
                "task": ["eval", "score", str(generations), "--task", str(hostile)]}.get(
            which, ["eval", "--task", "jsonl", "--data", str(hostile), "--db", str(Path(folder) / "d.db")])
        one_error_line(args, hostile)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), records.map(json.dumps), texts), min_size=1, max_size=4))
def test_eval_score_on_garbage_generations_scores_or_says_why_in_one_line(lines):
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "gens.jsonl"
        source.write_text("\n".join(lines) + "\n")
        result = CliRunner().invoke(app, ["eval", "score", str(source), "--task", "arithmetic"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"error: {source}")


# Every command that opens the store (the empty list is the console), with arguments that would reach it.
STORE_COMMANDS = [
    ["runs", "list"], ["runs", "show", "alpha"], ["runs", "compare", "alpha", "beta"], ["runs", "stop", "alpha"],
    ["runs", "rm", "alpha", "--yes"], ["runs", "query", "SELECT COUNT(*) FROM runs"], ["eval", "compare", "1", "2"],
    ["eval", "--run", "latest"], ["eval", "--limit", "1"], ["generate", "--run", "latest"], ["train", "--name", "never"],
    ["sweep", "optim.lr=1e-3,2e-3"], ["evals", "list"], ["evals", "stop", "1"], ["eval", "--limit", "1", "--detach"], [],
]


@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory) -> bytes:
    """A real store of several pages: runs, params, metrics and events."""
    path = tmp_path_factory.mktemp("store") / "dreamlab.db"
    with RunStore(path) as store:
        for name in ("alpha", "beta", "gamma"):
            run = store.create_run(name=name, recipe=Recipe().to_dict())
            for step in range(1, 301):
                store.record_metrics(run.id, step, {"train/loss": 1 / step, "lr": 1e-4})
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the one file, as a copied store would be
    conn.close()
    return path.read_bytes()


def refused_store(args: list[str], path: Path) -> str:
    """The command refuses the store on one line naming it, and leaves the file as it was."""
    before = path.read_bytes()
    with patch("dreamlab.tui.app.build_app", side_effect=AssertionError("the console would open this store")):
        line = one_error_line([*args, "--db", str(path)], f"cannot open run store {path}: ")
    assert path.read_bytes() == before
    return line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=300).filter(lambda data: not data.startswith(b"SQLite format 3\0")),
       args=st.sampled_from(STORE_COMMANDS))
def test_a_store_file_that_is_not_sqlite_is_refused_on_one_line_and_left_alone(data, args):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dreamlab.db"
        path.write_bytes(data)
        assert refused_store(args, path).endswith(("not a SQLite database (one byte)", "file is not a database"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True), args=st.sampled_from(STORE_COMMANDS))
def test_a_truncated_store_is_refused_on_one_line_and_left_alone(store_bytes, cut, args):
    page = 4096  # at least a whole page is missing
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dreamlab.db"
        path.write_bytes(store_bytes[:1 + int(cut * (len(store_bytes) - page - 1))])
        refused_store(args, path)


def test_the_cases_of_the_issue_are_one_error_line_each(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b'{"question": "a", "answer": "x\\n#### 1"}\n{"question": "caf\xe9"}\n')
    assert one_error_line(["data", "prepare", str(rows), "--out", str(tmp_path / "out.jsonl")], rows) == (
        f"error: {rows} line 2: not UTF-8 text (byte 0xe9 at column 18)")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"optim:\n  lr: 1e-3  # \xb5\n")
    assert one_error_line(["train", str(recipe), "--db", str(tmp_path / "runs" / "dreamlab.db")], recipe) == (
        f"error: {recipe} line 2: not UTF-8 text (byte 0xb5 at column 15)")
    store = tmp_path / "dreamlab.db"
    store.write_bytes(b"x")  # SQLite alone would take this for an empty database and overwrite it
    for args in (["runs", "list"], []):
        assert refused_store(args, store) == f"error: cannot open run store {store}: not a SQLite database (one byte)"


def test_the_console_on_a_bad_store_exits_2_with_one_line_and_no_traceback(tmp_path, store_bytes):
    for name, data in (("not-sqlite.db", b"not a database\n" * 40), ("truncated.db", store_bytes[:len(store_bytes) // 2])):
        store = tmp_path / name
        store.write_bytes(data)
        done = subprocess.run([sys.executable, "-c", "from dreamlab.cli import main; main()", "--db", str(store)],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: cannot open run store {store}: ") and done.stderr.count("\n") == 1
        assert store.read_bytes() == data
