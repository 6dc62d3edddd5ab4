"""`dreamlab data prepare`: options, lengths, the report, bad input and the real GSM8K train split."""

from __future__ import annotations

import json
import random

import datasets
import pytest

from dreamlab.data.formats import DreamRow
from dreamlab.data.lengths import LengthCounter
from dreamlab.models import build_char_tokenizer
from tests.conftest import SHARED_DATA
from tests.data_helpers import prepare, read_jsonl, user, write_jsonl

# Character tokenizer: the prompt [user "Hi"] templates to 21 tokens (3 specials + 18 characters).
# The response below is 13 tokens (<think> and </think> are one token each), 14 with the EOS.
SHORT_PROMPT = [{"role": "user", "content": "Hi"}]
RESPONSE = "<think>\nabcdef\n</think>\n42"


def numbered_rows(count: int) -> list[dict]:
    """GSM8K rows whose response grows by 3 characters a row (i stays one digit for count <= 10)."""
    return [{"question": f"What is {i} + 0?", "answer": f"{i} + 0 = {i}" + " so" * i + f"\n#### {i}"}
            for i in range(count)]


def run_ok(*args):
    result = prepare(*args)
    assert result.exit_code == 0, result.output
    return result


def test_lengths_follow_dreams_template_and_eos():
    counter = LengthCounter(build_char_tokenizer())
    row = DreamRow(SHORT_PROMPT, RESPONSE, {})
    assert counter.prompt_text(row) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert counter.response_text(row) == RESPONSE + "<|endoftext|>"
    [length] = counter.count([row])
    assert (length.prompt, length.response, length.total) == (21, 14, 35)


@pytest.mark.parametrize("side, kept", [("right", "<think>\nabcdef"), ("left", "def\n</think>\n42")])
def test_truncation_cuts_the_response_side_and_keeps_room_for_eos(tmp_path, side, kept):
    source = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": SHORT_PROMPT, "response": RESPONSE}])
    out = tmp_path / "out.jsonl"
    run_ok(str(source), "--out", str(out), "--max-length", "30", "--truncation", side)
    [row] = read_jsonl(out)
    assert row["response"] == kept
    [length] = LengthCounter(build_char_tokenizer()).count([DreamRow(row["prompt"], row["response"], {})])
    assert length.total == 30
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert (report["truncated"], report["over_max_length"], report["dropped"]["over_length"]) == (1, 1, 0)


def test_report_counts_every_drop_reason_and_length_percentiles(tmp_path):
    rows = numbered_rows(10) + [{"question": "broken", "answer": "no final line"}]
    source = write_jsonl(tmp_path / "gsm.jsonl", rows)
    out = tmp_path / "out.jsonl"
    # Row i (one digit): prompt 71 tokens (5 specials, 66 characters), response 16 + 3i with the EOS.
    result = run_ok(str(source), "--out", str(out), "--on-invalid", "drop", "--where", "index!=0",
                    "--fraction", "0.9", "--seed", "1", "--max-length", "105", "--truncation", "drop")
    kept = sorted(random.Random(1).sample(range(1, 10), 8))
    written = [i for i in kept if 87 + 3 * i <= 105]
    assert [row["meta"]["index"] for row in read_jsonl(out)] == written
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    responses = sorted(16 + 3 * i for i in kept)
    assert report["rows_read"] == 11 and report["rows_written"] == len(written)
    assert report["dropped"] == {"filter": 1, "fraction": 1, "invalid": 1, "over_length": len(kept) - len(written)}
    assert report["over_max_length"] == len(kept) - len(written)
    assert report["lengths"] == {
        "prompt": {"p50": 71, "p90": 71, "p99": 71, "max": 71},
        "response": {"p50": responses[3], "p90": responses[7], "p99": responses[7], "max": responses[7]},
        "total": {"p50": 71 + responses[3], "p90": 71 + responses[7], "p99": 71 + responses[7], "max": 71 + responses[7]},
    }
    assert "rows written" in result.stdout and "p99" in result.stdout


def test_fraction_is_a_seeded_subsample_in_original_order(tmp_path):
    source = write_jsonl(tmp_path / "gsm.jsonl", numbered_rows(10))
    picks = {}
    for seed in (3, 3, 4):
        out = tmp_path / f"out{seed}.jsonl"
        run_ok(str(source), "--out", str(out), "--fraction", "0.5", "--seed", str(seed))
        picks.setdefault(seed, []).append([row["meta"]["index"] for row in read_jsonl(out)])
    assert picks[3][0] == picks[3][1] == sorted(random.Random(3).sample(range(10), 5))
    assert picks[4][0] != picks[3][0] and len(picks[4][0]) == 5


def test_orders_shuffle_and_curriculum(tmp_path):
    rows = [{"question": "q" * (3 - i), "answer": "<think>\nt\n</think>\na", "source": "s", "difficulty": d,
             "thinking_tokens": 1, "answer_tokens": 1} for i, d in enumerate([2, 3, 1])]
    source = write_jsonl(tmp_path / "simple.jsonl", rows)

    def order(*args):
        out = tmp_path / "out.jsonl"
        run_ok(str(source), "--out", str(out), *args)
        return [row["meta"]["index"] for row in read_jsonl(out)]

    assert order() == [0, 1, 2]
    assert order("--order", "curriculum") == [2, 1, 0]  # shortest question first
    assert order("--order", "curriculum", "--curriculum-by", "difficulty") == [2, 0, 1]
    shuffled = list(range(3))
    random.Random(5).shuffle(shuffled)
    assert order("--order", "shuffle", "--seed", "5") == shuffled


def test_where_matches_source_columns_and_folder_sources_number_rows_across_files(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    base = {"solution": "s", "cot_type": "math", "metadata": "{}", "cot": None, "thinking_trajectories": ["t"],
            "attempt": "a"}
    write_jsonl(folder / "a.jsonl", [{**base, "question": "q0", "source_type": "math"},
                                     {**base, "question": "q1", "source_type": "science"}])
    write_jsonl(folder / "b.jsonl", [{**base, "question": "q2", "source_type": "math"}])
    out = tmp_path / "out.jsonl"
    run_ok(str(folder), "--out", str(out), "--where", "source_type=math", "--where", "solution=s")
    assert [(row["prompt"], row["meta"]["index"]) for row in read_jsonl(out)] == [(user("q0"), 0), (user("q2"), 2)]


def test_parquet_output_holds_the_same_rows(tmp_path):
    source = write_jsonl(tmp_path / "gsm.jsonl", numbered_rows(3))
    run_ok(str(source), "--out", str(tmp_path / "out.jsonl"))
    run_ok(str(source), "--out", str(tmp_path / "out.parquet"))
    from_parquet = datasets.Dataset.from_parquet(str(tmp_path / "out.parquet"), keep_in_memory=True).to_list()
    assert from_parquet == read_jsonl(tmp_path / "out.jsonl")
    assert (tmp_path / "out.parquet.report.json").exists()


# Bad input: one line on stderr, exit code 2, and nothing written.

def refused(tmp_path, *args) -> str:
    out = tmp_path / "out" / "rows.jsonl"
    result = prepare(*args, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_malformed_json_line_names_file_and_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"question": "a", "answer": "x\\n#### 1"}\n{"question": "b", "answer": \n')
    assert f"{source} line 2: malformed JSON" in refused(tmp_path, str(source))


def test_missing_and_wrongly_typed_fields_name_the_row_and_field(tmp_path):
    source = write_jsonl(tmp_path / "gsm.jsonl", numbered_rows(2) + [{"question": "c"}])
    assert refused(tmp_path, str(source)) == "error: gsm.jsonl line 3: field 'answer' is missing"
    source = write_jsonl(tmp_path / "gsm.jsonl", numbered_rows(1) + [{"question": 5, "answer": "x\n#### 1"}])
    assert refused(tmp_path, str(source)) == "error: gsm.jsonl line 2: field 'question' must be a string, got int"
    source = write_jsonl(tmp_path / "s1k.jsonl", [{"question": "q", "thinking_trajectories": [1], "attempt": "a"}])
    assert refused(tmp_path, str(source)) == (
        "error: s1k.jsonl line 1: field 'thinking_trajectories' must be a string or a list of strings, got list")


def test_empty_sources_are_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "empty source" in refused(tmp_path, str(tmp_path / "empty.jsonl"))
    (tmp_path / "folder").mkdir()
    assert "empty source" in refused(tmp_path, str(tmp_path / "folder"))


def test_unknown_formats_are_refused(tmp_path):
    source = write_jsonl(tmp_path / "text.jsonl", [{"text": "hello"}])
    assert "unknown format: cannot tell it from the columns text" in refused(tmp_path, str(source))
    source = write_jsonl(tmp_path / "gsm.jsonl", numbered_rows(1))
    assert "unknown format 'alpaca'" in refused(tmp_path, str(source), "--format", "alpaca")


def test_filter_matching_nothing_is_refused(tmp_path):
    source = write_jsonl(tmp_path / "gsm.jsonl", numbered_rows(2))
    assert refused(tmp_path, str(source), "--where", "format=s1k") == "error: no row matches --where format=s1k"
    assert "no row has that field" in refused(tmp_path, str(source), "--where", "source_type=math")


def test_max_length_refusing_or_dropping_every_row(tmp_path):
    source = write_jsonl(tmp_path / "gsm.jsonl", numbered_rows(2))
    assert refused(tmp_path, str(source), "--max-length", "80") == (
        "error: gsm.jsonl line 1: 87 tokens (prompt 71 + response 16), over --max-length 80 "
        "(and 1 more row); pass --truncation drop, left or right")
    assert "--max-length 50 drops every row" in refused(
        tmp_path, str(source), "--max-length", "50", "--truncation", "drop")


def test_hub_failure_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\n(offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert refused(tmp_path, "openai/gsm8k") == (
        "error: cannot load openai/gsm8k from the hub (ConnectionError: Couldn't reach 'openai/gsm8k' on the Hub)")


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").exists(),
                    reason="the shared reference data (../shared/data/gsm8k) is not checked out beside the repo")
def test_real_gsm8k_train_split_end_to_end(tmp_path):
    out = tmp_path / "gsm8k.jsonl"
    run_ok(str(SHARED_DATA / "gsm8k" / "train.jsonl"), "--out", str(out))
    rows = read_jsonl(out)
    assert len(rows) == 7473
    assert rows[0] == {
        "prompt": user("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                       "May. How many clips did Natalia sell altogether in April and May?"),
        "response": "<think>\nNatalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in "
                    "April and May.\n</think>\n72",
        "meta": {"format": "gsm8k", "index": 0},
    }
    assert not any("<<" in row["response"] or "," in row["response"].rsplit("\n", 1)[1] for row in rows)
    report = json.loads((tmp_path / "gsm8k.jsonl.report.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["format"]) == (7473, 7473, "gsm8k")
    assert report["lengths"] == {
        "prompt": {"p50": 274, "p90": 418, "p99": 584, "max": 1042},
        "response": {"p50": 219, "p90": 422, "p99": 681, "max": 1146},
        "total": {"p50": 502, "p90": 807, "p99": 1124, "max": 1725},
    }


def test_the_builtin_arithmetic_task_is_a_source(tmp_path):
    out = tmp_path / "arith.jsonl"
    result = prepare("builtin:arithmetic:2", "--split", "validation", "--no-system", "--where", "kind=mul",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert rows and all(r["prompt"][0]["content"].startswith("Solve: ") and " * " in r["prompt"][0]["content"] for r in rows)
    assert all(r["response"].startswith("<think>\n") and r["meta"]["difficulty"] == 2 for r in rows)
    bad = prepare("builtin:arithmetic:9", "--out", str(tmp_path / "x.jsonl"))
    assert bad.exit_code == 2 and "builtin:arithmetic[:LEVEL][:notrace]" in bad.output
