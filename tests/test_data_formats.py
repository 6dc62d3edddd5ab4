"""Each input schema, built with its real column names, converts to exact Dream rows."""

from __future__ import annotations

import datasets
import pytest

from tests.data_helpers import prepare, read_jsonl, user, write_jsonl

S1K_SIMPLE = [{
    "question": "What is 2 + 3?", "answer": "<think>\n2 plus 3 is 5.\n</think>\n\n**5**",
    "source": "s1K", "difficulty": 2, "thinking_tokens": 6, "answer_tokens": 2,
}]

S1K = [{
    "question": "Find $x$ if $x + 1 = 13$.", "solution": "12", "cot_type": "math",
    "source_type": "AI-MO/NuminaMath-CoT/aops_forum", "metadata": "{'source': 'aops_forum'}", "cot": None,
    "thinking_trajectories": ["Subtract 1 from both sides.\nSo x = 12."], "attempt": "$x = \\boxed{12}$",
}, {
    "question": "Is 7 prime?", "solution": "Yes", "cot_type": "math", "source_type": "qfq/openaimath/Number Theory",
    "metadata": "{'level': 1}", "cot": None, "thinking_trajectories": ["7 has no divisor", "between 2 and 6."],
    "attempt": "Yes, 7 is prime.",
}]

S1K_1_1 = [{
    "question": "What is 6 * 7?", "solution": "42", "cot_type": "math", "source_type": "gsm-like",
    "metadata": "{}", "gemini_thinking_trajectory": "Six sevens are 42.", "gemini_attempt": "42",
    "deepseek_thinking_trajectory": ["Okay, 6 * 7.", "That is 42."], "deepseek_attempt": ["**42**"],
    "gemini_grade": "Yes", "gemini_grade_reason": "matches", "deepseek_grade": "No", "deepseek_grade_reason": "bold",
}]

GSM8K = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "What is 25 * 85?", "answer": "25 * 85 = <<25*85=2125>>2125 dollars\n#### 2,125"},
]


def convert(tmp_path, rows, *options):
    source = write_jsonl(tmp_path / "source.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = prepare(str(source), "--out", str(out), *options)
    assert result.exit_code == 0, result.output
    return read_jsonl(out)


def test_simplified_s1k_keeps_the_think_block_and_its_metadata(tmp_path):
    assert convert(tmp_path, S1K_SIMPLE) == [{
        "prompt": user("What is 2 + 3?"),
        "response": "<think>\n2 plus 3 is 5.\n</think>\n**5**",
        "meta": {"format": "s1k-simple", "index": 0, "source": "s1K", "difficulty": 2,
                 "thinking_tokens": 6, "answer_tokens": 2},
    }]


def test_simplified_s1k_accepts_an_empty_think_block_but_not_a_missing_answer(tmp_path):
    rows = [{"question": "Solve: 1 + 2", "answer": "<think>\n</think>\n3"}]
    assert convert(tmp_path, rows, "--format", "s1k-simple")[0]["response"] == "<think>\n</think>\n3"
    source = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Q?", "answer": "<think>\nt\n</think>\n  "}])
    result = prepare(str(source), "--out", str(tmp_path / "bad-out.jsonl"), "--format", "s1k-simple")
    assert result.exit_code != 0 and "no final answer after </think>" in result.output


def test_s1k_joins_the_trajectories_and_answers_with_the_attempt(tmp_path):
    rows = convert(tmp_path, S1K)
    assert rows == [{
        "prompt": user("Find $x$ if $x + 1 = 13$."),
        "response": "<think>\nSubtract 1 from both sides.\nSo x = 12.\n</think>\n$x = \\boxed{12}$",
        "meta": {"format": "s1k", "index": 0, "source_type": "AI-MO/NuminaMath-CoT/aops_forum",
                 "cot_type": "math", "metadata": "{'source': 'aops_forum'}"},
    }, {
        "prompt": user("Is 7 prime?"),
        "response": "<think>\n7 has no divisor\nbetween 2 and 6.\n</think>\nYes, 7 is prime.",
        "meta": {"format": "s1k", "index": 1, "source_type": "qfq/openaimath/Number Theory",
                 "cot_type": "math", "metadata": "{'level': 1}"},
    }]


def test_s1k_read_from_parquet_as_the_hub_serves_it(tmp_path):
    source = tmp_path / "s1k.parquet"
    datasets.Dataset.from_list(S1K).to_parquet(str(source))
    out = tmp_path / "out.jsonl"
    assert prepare(str(source), "--out", str(out)).exit_code == 0
    assert read_jsonl(out) == convert(tmp_path, S1K)


@pytest.mark.parametrize("who, response, grade", [
    ("deepseek", "<think>\nOkay, 6 * 7.\nThat is 42.\n</think>\n**42**", "No"),
    ("gemini", "<think>\nSix sevens are 42.\n</think>\n42", "Yes"),
])
def test_s1k_1_1_uses_the_chosen_trajectory(tmp_path, who, response, grade):
    assert convert(tmp_path, S1K_1_1, "--trajectory", who) == [{
        "prompt": user("What is 6 * 7?"),
        "response": response,
        "meta": {"format": "s1k-1.1", "index": 0, "source_type": "gsm-like", "cot_type": "math",
                 "metadata": "{}", "trajectory": who, "grade": grade},
    }]


def test_gsm8k_solution_becomes_the_trace_and_n_the_answer(tmp_path):
    assert convert(tmp_path, GSM8K) == [
        {"prompt": user("Tom has 3 apples and buys 4. How many?"), "response": "<think>\n3 + 4 = 7\n</think>\n7",
         "meta": {"format": "gsm8k", "index": 0}},
        {"prompt": user("What is 25 * 85?"), "response": "<think>\n25 * 85 = 2125 dollars\n</think>\n2125",
         "meta": {"format": "gsm8k", "index": 1}},
    ]


def test_gsm8k_can_keep_calculator_notes_and_drop_the_system_turn(tmp_path):
    rows = convert(tmp_path, GSM8K[:1], "--no-strip-calculator", "--no-system")
    assert rows == [{"prompt": [{"role": "user", "content": "Tom has 3 apples and buys 4. How many?"}],
                     "response": "<think>\n3 + 4 = <<3+4=7>>7\n</think>\n7", "meta": {"format": "gsm8k", "index": 0}}]
    rows = convert(tmp_path, GSM8K[:1], "--system", "Think first.")
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Think first."}


def test_prepared_rows_pass_through_with_their_meta(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    given = [
        {"prompt": messages, "response": "<think>\nhello\n</think>\nHello!", "meta": {"format": "gsm8k", "index": 7}},
        {"prompt": "Say yes.", "response": "yes"},
    ]
    assert convert(tmp_path, given) == [
        {"prompt": messages, "response": "<think>\nhello\n</think>\nHello!", "meta": {"format": "gsm8k", "index": 7}},
        {"prompt": user("Say yes."), "response": "yes", "meta": {"format": "dream", "index": 1}},
    ]


def test_format_option_overrides_detection(tmp_path):
    # Question/answer rows with a <think> answer but no s1K metadata columns: detection says gsm8k.
    rows = [{"question": "Q?", "answer": "<think>\nt\n</think>\nA"}]
    assert convert(tmp_path, rows, "--format", "s1k-simple") == [
        {"prompt": user("Q?"), "response": "<think>\nt\n</think>\nA", "meta": {"format": "s1k-simple", "index": 0}}]
