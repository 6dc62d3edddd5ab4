"""Scoring one generation: cut at the task's stop strings, Math-Verify on the extracted answer (primary),
and lm-eval's own verdicts (strict / flexible) where the task names an lm-eval scheme, else the flexible extract.

Math-Verify's timeouts use signal.alarm, which only works in the main thread: scoring refuses to
run anywhere else rather than silently losing its timeouts (use a process pool to parallelise).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dreamlab.evals.extract import extract, flexible_match
from dreamlab.evals.lm_eval_verdicts import verdicts
from dreamlab.evals.stops import apply_cut, stop_position

SCORERS = ("math_verify", "exact")


@dataclass(frozen=True)
class SampleScore:
    """The verdicts plus what extraction saw; field names match the store's eval_samples columns.

    `cut_at` is where a stop string cut the generation (None: not cut); the strict column is None for
    tasks without an lm-eval scheme.
    """

    extracted: str | None
    correct: bool
    flexible_extracted: str | None
    flexible_correct: bool
    strict_extracted: str | None
    strict_correct: bool | None
    cut_at: int | None
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
                     numeric: bool = False, mask_token: str | None = None, until: Sequence[str] = (),
                     lm_eval: str | None = None, reference: str | None = None) -> SampleScore:
    """Cut a generation at the first stop string, extract its answer and judge it against the gold every way."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}: use one of {', '.join(SCORERS)}")
    cut_at = stop_position(generation, until)
    scored = apply_cut(generation, cut_at)
    found = extract(scored, extractor, mask_token=mask_token, numeric=numeric)
    if scorer == "exact":
        correct = found.answer is not None and found.answer.strip() == gold.strip()
    else:
        correct = math_verify_equal(gold, found.answer)
    if lm_eval is None:
        flexible, flexible_ok = flexible_match(scored.replace(mask_token, "") if mask_token else scored, gold)
        strict, strict_ok = None, None
    else:  # lm-eval sees the text as decoded, leftover mask tokens included
        _require_main_thread()
        judged = verdicts(lm_eval, scored, gold, reference)
        flexible, flexible_ok = judged.flexible_extracted, judged.flexible_correct
        strict, strict_ok = judged.strict_extracted, judged.strict_correct
    return SampleScore(extracted=found.answer, correct=correct, flexible_extracted=flexible, flexible_correct=flexible_ok,
                       strict_extracted=strict, strict_correct=strict_ok, cut_at=cut_at,
                       leftover_masks=found.leftover_masks, unclosed_boxed=found.unclosed_boxed, n_boxed=found.n_boxed)
