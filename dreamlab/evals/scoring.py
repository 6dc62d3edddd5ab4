"""Scoring one generation: Math-Verify on the extracted answer (primary) and lm-eval's flexible extract.

Math-Verify's timeouts use signal.alarm, which only works in the main thread: scoring refuses to
run anywhere else rather than silently losing its timeouts (use a process pool to parallelise).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from dreamlab.evals.extract import extract, flexible_match

SCORERS = ("math_verify", "exact")


@dataclass(frozen=True)
class SampleScore:
    """Both verdicts plus what extraction saw; field names match the store's eval_samples columns."""

    extracted: str | None
    correct: bool
    flexible_extracted: str | None
    flexible_correct: bool
    leftover_masks: int
    unclosed_boxed: bool
    n_boxed: int

    def as_row(self) -> dict:
        """The store's column names and values."""
        return asdict(self)


def _require_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("math-verify's timeouts only work in the main thread: score there or in a worker process")


def math_verify_equal(gold: str, answer: str | None) -> bool:
    """verify(parse(gold), parse(answer)), gold first, both read as LaTeX math (`$...$`)."""
    if answer is None or not answer.strip():
        return False
    _require_main_thread()
    from math_verify import parse, verify  # heavy (sympy): imported on first use

    gold_parsed = parse(f"${gold}$") or parse(gold)
    answer_parsed = parse(f"${answer}$") or parse(answer)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed))


def score_generation(generation: str, gold: str, *, extractor: str, scorer: str = "math_verify",
                     numeric: bool = False, mask_token: str | None = None) -> SampleScore:
    """Extract the answer from a generation and judge it against the gold answer both ways."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}: use one of {', '.join(SCORERS)}")
    found = extract(generation, extractor, mask_token=mask_token, numeric=numeric)
    if scorer == "exact":
        correct = found.answer is not None and found.answer.strip() == gold.strip()
    else:
        correct = math_verify_equal(gold, found.answer)
    text = generation.replace(mask_token, "") if mask_token else generation
    flexible, flexible_ok = flexible_match(text, gold)
    return SampleScore(extracted=found.answer, correct=correct, flexible_extracted=flexible, flexible_correct=flexible_ok,
                       leftover_masks=found.leftover_masks, unclosed_boxed=found.unclosed_boxed, n_boxed=found.n_boxed)
