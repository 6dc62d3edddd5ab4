"""lm-eval's own verdicts, reproduced for the lm-eval-named columns (strict / flexible) of a task.

`gsm8k_cot`: the `strict-match` filter (first "The answer is N.") and `flexible-extract` (the last
number-like run), each compared with lm-eval's `exact_match` (regexes_to_ignore, ignore_case).
`minerva`: `exact_match` (Minerva's "Final Answer: The final answer is X" normalised, then is_equiv)
in the strict column and lm-eval's `math_verify` (the full solution against the full generation) in
the flexible one. Both run on the generation after the until-cut, as lm-eval scores it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dreamlab.evals import minerva

SCHEMES = ("gsm8k_cot", "minerva")
FALLBACK = "[invalid]"
STRICT_PATTERN = re.compile(r"The answer is (\-?[0-9\.\,]+).")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORED = (",", r"\$", "(?s).*#### ", r"\.$")


@dataclass(frozen=True)
class LmEvalVerdicts:
    """What lm-eval's filters extracted (None for its fallback) and its two verdicts."""

    strict_extracted: str | None
    strict_correct: bool
    flexible_extracted: str | None
    flexible_correct: bool


def regex_filter(text: str, pattern: re.Pattern[str], group_select: int) -> str:
    """lm-eval's RegexFilter on one response: the selected match (first non-empty group of a tuple), stripped."""
    matches = pattern.findall(text)
    if not matches:
        return FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((part for part in match if part), FALLBACK)
        if match == FALLBACK:
            return match
    return match.strip()


def exact_match(prediction: str, reference: str) -> bool:
    """lm-eval's exact_match with gsm8k_cot's regexes_to_ignore and ignore_case."""
    for pattern in IGNORED:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


def gsm8k_cot(text: str, gold: str) -> LmEvalVerdicts:
    """strict-match and flexible-extract of lm-eval's gsm8k_cot on a cut generation."""
    strict = regex_filter(text, STRICT_PATTERN, 0)
    flexible = regex_filter(text, FLEXIBLE_PATTERN, -1)
    return LmEvalVerdicts(strict_extracted=None if strict == FALLBACK else strict,
                          strict_correct=exact_match(strict, gold),
                          flexible_extracted=None if flexible == FALLBACK else flexible,
                          flexible_correct=exact_match(flexible, gold))


def minerva_math(text: str, reference: str) -> LmEvalVerdicts:
    """lm-eval's minerva_math exact_match (strict) and math_verify (flexible); `reference` is the full solution."""
    from math_verify import parse, verify  # heavy (sympy): imported on first use

    answer = minerva.normalize_final_answer(minerva.unnormalized_answer(text))
    strict_ok = minerva.is_equiv(answer, minerva.gold_answer(reference))
    parsed = parse(text)
    flexible_ok = bool(verify(gold=parse(reference), target=parsed))
    invalid = minerva.normalize_final_answer(minerva.INVALID_ANSWER)
    return LmEvalVerdicts(strict_extracted=None if answer == invalid else answer, strict_correct=strict_ok,
                          flexible_extracted=str(parsed[-1]) if parsed else None, flexible_correct=flexible_ok)


def verdicts(scheme: str, text: str, gold: str, reference: str | None) -> LmEvalVerdicts:
    """One scheme's verdicts; minerva judges against `reference` (the worked solution), else the gold."""
    if scheme == "gsm8k_cot":
        return gsm8k_cot(text, gold)
    if scheme == "minerva":
        return minerva_math(text, reference if reference is not None else f"\\boxed{{{gold}}}")
    raise ValueError(f"unknown lm-eval scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
