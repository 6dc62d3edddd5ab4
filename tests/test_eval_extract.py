"""Extraction edge cases that diffusion models produce."""

from __future__ import annotations

import pytest

from dreamlab.evals.extract import boxed_contents, clean_numeric, extract, strip_thousands
from dreamlab.evals.scoring import math_verify_equal, score_generation


def test_unclosed_box_is_reported_and_not_used():
    found = extract("so it is \\boxed{12", "boxed")
    assert found.unclosed_boxed and found.answer is None and found.n_boxed == 0
    found = extract("first \\boxed{7} then \\boxed{12", "boxed")
    assert found.unclosed_boxed and found.answer == "7" and found.n_boxed == 1


def test_literal_placeholder_box_from_the_prompt_is_skipped():
    text = "Put your final answer within \\boxed{...}. The sum is 9, so \\boxed{9}."
    assert extract(text, "boxed").answer == "9"
    placeholder_only = extract("answer within \\boxed{}", "boxed")
    assert placeholder_only.answer is None and placeholder_only.n_boxed == 1


def test_conflicting_boxes_take_the_last_and_count_them():
    found = extract("maybe \\boxed{5}, no wait: \\boxed{6}", "boxed")
    assert found.answer == "6" and found.n_boxed == 2
    assert not score_generation("maybe \\boxed{5}, no wait: \\boxed{6}", "5", extractor="boxed").correct


def test_nested_braces_survive():
    assert boxed_contents("\\boxed{\\frac{1}{2}}") == (["\\frac{1}{2}"], False)


def test_units_inside_the_box():
    assert extract("\\boxed{18 \\text{ dollars}}", "gsm8k", numeric=True).answer == "18"
    assert extract("\\boxed{\\$18}", "gsm8k", numeric=True).answer == "18"
    assert extract("\\boxed{18 dollars}", "gsm8k", numeric=True).answer == "18"
    assert score_generation("Total: \\boxed{25\\%}", "25", extractor="boxed", numeric=True).correct


def test_thousands_commas():
    assert strip_thousands("2,125 and 1,000,000 but (1,2) and 1,23") == "2125 and 1000000 but (1,2) and 1,23"
    assert clean_numeric("\\$1,000.") == "1000"
    assert score_generation("#### 2,125", "2125", extractor="gsm8k", numeric=True).correct
    assert extract("The total is 1,234 apples", "last_number").answer == "1234"


def test_fractions_against_decimals():
    assert math_verify_equal("\\frac{1}{2}", "0.5")
    assert math_verify_equal("0.75", "\\frac{3}{4}")
    assert not math_verify_equal("\\frac{1}{3}", "0.5")


def test_leftover_mask_tokens_are_counted_and_removed():
    text = "3 + 4 = <|mask|>7<|mask|> so \\boxed{7}<|mask|>"
    found = extract(text, "boxed", mask_token="<|mask|>")
    assert found.leftover_masks == 3 and found.answer == "7"
    score = score_generation(text, "7", extractor="boxed", mask_token="<|mask|>")
    assert score.correct and score.flexible_correct and score.leftover_masks == 3


@pytest.mark.parametrize("text, answer", [
    ("Step 1... The answer is 42.", "42"),
    ("Final Answer: The final answer is $\\frac{2}{3}$. I hope it is correct.", "\\frac{2}{3}"),
])
def test_answer_is_fallback_without_a_box(text, answer):
    assert extract(text, "boxed").answer == answer


def test_after_think_and_gsm8k_extractors():
    assert extract("<think>\n7+5+0=2 c1\n</think>\n72", "after_think").answer == "72"
    assert extract("Janet sells 9 eggs. 9 * 2 = 18. The answer is 18.", "gsm8k").answer == "18"
    assert extract("$4.00 + $2.00 = $6.00\n#### 6", "gsm8k", numeric=True).answer == "6"
    assert extract("we get 5 then 7", "gsm8k").answer == "7"
    with pytest.raises(ValueError, match="unknown extractor"):
        extract("x", "nope")


def test_scoring_refuses_threads_where_math_verify_timeouts_fail():
    import threading

    errors = []
    thread = threading.Thread(target=lambda: errors.append(_try_score()))
    thread.start()
    thread.join()
    assert "main thread" in errors[0]


def _try_score() -> str:
    try:
        math_verify_equal("1", "1")
    except RuntimeError as error:
        return str(error)
    return "no error"
