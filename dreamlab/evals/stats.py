"""Small exact statistics: Wilson score intervals, McNemar's paired test, an eval's summary (no scipy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for correct / total (95% by default); (0, 1) when total is 0."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be in [0, total]; got {correct} of {total}")
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # The bounds are exactly 0 and 1 at the extremes (float rounding would leave 0.9999999999999999).
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == total else centre + half)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips: 2 * P(X <= min(k, n - k)), capped at 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar(only_a: int, only_b: int, exact_below: int = 25) -> tuple[float, str]:
    """McNemar's p-value from the discordant counts (A right B wrong, A wrong B right) and the method used.

    Exact binomial when there are fewer than `exact_below` discordant pairs, else the chi-square
    statistic with continuity correction, (|b - c| - 1)^2 / (b + c), on one degree of freedom.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    n = only_a + only_b
    if n < exact_below:
        return binomial_two_sided(only_a, n), "exact"
    statistic = (abs(only_a - only_b) - 1) ** 2 / n
    return math.erfc(math.sqrt(statistic / 2)), "chi2"


def column_accuracy(samples: Sequence[dict[str, Any]], column: str) -> float | None:
    """The fraction of samples a verdict column calls correct (None when no sample has that verdict)."""
    judged = [s[column] for s in samples if s.get(column) is not None]
    return sum(1 for verdict in judged if verdict) / len(judged) if judged else None


def summarize(samples: Sequence[dict[str, Any]], max_new_tokens: int, total: int) -> dict[str, Any]:
    """Accuracy with a Wilson 95% interval, the strict / flexible accuracies, mean NFE and speed over recorded samples.

    tokens_per_s counts every generated position (padding included), answer_tokens_per_s only the
    answer (up to EOS or a stop string's cut); tokens_per_forward is generated positions per model call; wall_seconds sums
    the samples' shares of their batches' time.
    """
    done = len(samples)
    correct = sum(1 for s in samples if s["correct"])
    low, high = wilson_interval(correct, done)
    seconds = sum(s.get("seconds") or 0.0 for s in samples)
    calls = sum(s.get("nfe") or 0 for s in samples)
    answers = [s["answer_tokens"] for s in samples if s.get("answer_tokens") is not None]
    return {"n_done": done, "n_correct": correct, "n_samples": total, "accuracy": correct / done if done else None,
            "strict_accuracy": column_accuracy(samples, "strict_correct"),
            "flexible_accuracy": column_accuracy(samples, "flexible_correct"),
            "ci_low": low if done else None, "ci_high": high if done else None,
            "nfe_mean": calls / done if done else None,
            "tokens_per_s": done * max_new_tokens / seconds if seconds > 0 else None,
            "tokens_per_forward": done * max_new_tokens / calls if calls else None,
            "answer_tokens_per_s": sum(answers) / seconds if answers and len(answers) == done and seconds > 0 else None,
            "wall_seconds": seconds if done else None}
