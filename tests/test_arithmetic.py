"""The built-in arithmetic task: exact traces, disjoint splits, determinism, levels."""

from __future__ import annotations

import pytest

from dreamlab.data.arithmetic import (
    SPLITS, addition, arithmetic_rows, linear_equation, multiplication, problems, response_text, split_of, subtraction,
)


def test_traces_make_every_digit_a_local_step():
    assert response_text(addition(27, 45)) == "<think>\n7+5+0=2 c1\n2+4+1=7 c0\n</think>\n72"
    assert response_text(addition(99, 99)) == "<think>\n9+9+0=8 c1\n9+9+1=9 c1\n</think>\n198"
    assert response_text(subtraction(52, 17)) == "<think>\n2-7-0=5 b1\n5-1-1=3 b0\n</think>\n35"
    assert response_text(subtraction(17, 52)) == "<think>\n17<52 so -(52-17)\n2-7-0=5 b1\n5-1-1=3 b0\n</think>\n-35"
    assert response_text(multiplication(47, 6)) == "<think>\n7*6+0=2 c4\n4*6+4=8 c2\n</think>\n282"
    assert response_text(linear_equation(3, 5, 5)) == "<think>\n3x=20-5=15\nx=15/3=5\n</think>\n5"
    assert linear_equation(3, -7, -1).question == "Solve: 3x - 7 = -10"
    assert response_text(addition(27, 45), trace=False) == "<think>\n</think>\n72"


@pytest.mark.parametrize("level", [1, 2, 3])
def test_every_answer_is_right_and_splits_never_share_a_question(level):
    rows = {split: arithmetic_rows(split, level=level) for split in SPLITS}
    questions = {split: {r["question"] for r in rs} for split, rs in rows.items()}
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]
    assert len(rows["test"]) >= 500
    for problem in problems(level)[:2000]:
        a = problem.question.removeprefix("Solve: ")
        if "x" in a:
            left, c = a.split(" = ")
            coefficient, rest = left.split("x ")
            assert int(coefficient) * problem.answer + int(rest.replace(" ", "")) == int(c)
        else:
            assert eval(a) == problem.answer  # noqa: S307 - our own digits and + - *


def test_default_level_has_carries_borrows_and_negative_results():
    test = arithmetic_rows("test")
    assert any("c1" in r["answer"] for r in test)
    assert any("b1" in r["answer"] for r in test)
    assert any(r["gold"].startswith("-") for r in test)
    assert {r["kind"] for r in arithmetic_rows("test", level=2)} == {"add", "sub", "mul", "eq"}


def test_rows_are_deterministic_and_the_seed_only_orders():
    assert arithmetic_rows("train", seed=3, size=50) == arithmetic_rows("train", seed=3, size=50)
    assert arithmetic_rows("train", seed=3, size=50) != arithmetic_rows("train", seed=4, size=50)
    assert {r["question"] for r in arithmetic_rows("test", seed=1)} == {r["question"] for r in arithmetic_rows("test", seed=2)}
    assert split_of("Solve: 27 + 45") == split_of("Solve: 27 + 45")


def test_rows_are_in_the_simplified_s1k_form():
    row = arithmetic_rows("test", size=1)[0]
    assert set(row) >= {"question", "answer", "source", "difficulty", "thinking_tokens", "answer_tokens"}
    assert row["answer"].startswith("<think>\n") and "\n</think>\n" in row["answer"]


def test_bad_levels_and_splits_are_refused():
    with pytest.raises(ValueError, match="level must be one of"):
        arithmetic_rows("test", level=4)
    with pytest.raises(ValueError, match="split must be one of"):
        arithmetic_rows("dev")
