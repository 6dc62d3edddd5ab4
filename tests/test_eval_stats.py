"""Exact values for the eval statistics and lm-eval's flexible extract."""

from __future__ import annotations

import pytest

from dreamlab.evals.extract import flexible_extract, flexible_match
from dreamlab.evals.stats import binomial_two_sided, mcnemar, wilson_interval


def test_wilson_interval_matches_published_values():
    # 8/10 and 0/10 at 95%: the textbook Wilson bounds (Newcombe 1998, table I).
    assert wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-7)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775328), abs=1e-7)
    assert wilson_interval(10, 10) == (pytest.approx(0.7224672, abs=1e-7), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_binomial_for_small_discordant_counts():
    assert mcnemar(1, 9) == (22 / 1024, "exact")          # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar(0, 5) == (2 / 32, "exact")
    assert mcnemar(9, 1) == mcnemar(1, 9)
    assert mcnemar(3, 3) == (1.0, "exact")
    assert mcnemar(0, 0) == (1.0, "exact")
    assert binomial_two_sided(2, 12) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_mcnemar_chi_square_with_continuity_correction_for_large_counts():
    p, method = mcnemar(20, 40)  # (|20 - 40| - 1)^2 / 60 = 6.0167 -> p = 0.014171 (chi2, 1 df)
    assert method == "chi2" and p == pytest.approx(0.0141714, abs=1e-6)


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7 apples", "7"),
    ("She pays $18.00.", "$18.00."),
    ("worked... #### 72", "72"),
    ("It is -5 degrees", "-5"),
    ("1,234 and then 2.5", "2.5"),
    ("no digits here", None),
])
def test_flexible_extract_is_lm_evals_last_number(text, expected):
    assert flexible_extract(text) == expected


def test_flexible_match_normalises_like_lm_eval():
    assert flexible_match("She pays $1,234.", "1234") == ("$1,234.", True)
    assert flexible_match("The answer is 18.00", "18") == ("18.00", False)  # lm-eval compares strings
    assert flexible_match("nothing", "3") == (None, False)
