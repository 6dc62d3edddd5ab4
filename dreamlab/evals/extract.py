"""Answer extraction from model generations, hardened against what diffusion models leave behind.

Diffusion samplers fill positions in any order, so a generation can hold leftover mask tokens, a
`\\boxed{` whose closing brace never came, the prompt's literal `\\boxed{...}` placeholder, or several
boxes that disagree. Every extractor strips masks first, ignores placeholder boxes, takes the last
real box, and reports what it saw so a bad score can be told apart from a bad extraction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dreamlab.evals.lm_eval_verdicts import FLEXIBLE_PATTERN, IGNORED

EXTRACTORS = ("boxed", "gsm8k", "after_think", "last_number")
BOX_COMMANDS = ("\\boxed", "\\fbox")
# Box contents that are instructions copied from the prompt, not answers.
PLACEHOLDERS = {"", "...", "\\ldots", "\\dots", "\\cdots", "answer", "your answer", "final answer", "\\text{answer}"}
THINK_CLOSE = "</think>"

_BOX_OPEN = re.compile("(?:" + "|".join(re.escape(command) for command in BOX_COMMANDS) + r")\s*\{")
_GSM8K_FINAL = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"(?:final answer|the answer) is[:\s]*(.+?)(?:\.\s|\.?$|\n|\. I hope)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"(?<![\d.])(-?\d{1,3}(?:,\d{3})+)(?![\d,]*\d)(?!\.\d*,)")
_FLEXIBLE_IGNORE = tuple(re.compile(pattern) for pattern in IGNORED)


@dataclass(frozen=True)
class Extraction:
    """The extracted answer (None when nothing answer-like was found) and what the generation held."""

    answer: str | None
    n_boxed: int
    unclosed_boxed: bool
    leftover_masks: int


def strip_masks(text: str, mask_token: str | None) -> tuple[str, int]:
    """Remove leftover mask tokens; return the text and how many there were."""
    if not mask_token:
        return text, 0
    return text.replace(mask_token, ""), text.count(mask_token)


def boxed_contents(text: str) -> tuple[list[str], bool]:
    """Contents of every closed `\\boxed{...}` / `\\fbox{...}` (nested braces kept) and whether one is unclosed."""
    contents: list[str] = []
    unclosed = False
    position = 0
    while (match := _BOX_OPEN.search(text, position)) is not None:
        depth, index = 1, match.end()
        while index < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        if depth:
            unclosed = True
            break
        contents.append(text[match.end():index - 1].strip())
        position = index
    return contents, unclosed


def real_boxes(contents: list[str]) -> list[str]:
    """The boxes that hold an answer, not a copied placeholder."""
    return [box for box in contents if box.strip().strip("$").strip().lower() not in PLACEHOLDERS]


def strip_thousands(text: str) -> str:
    """`2,125` -> `2125`, `1,000,000` -> `1000000`; tuples like `(1,2)` or `1,23` are left alone."""
    return _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), text)


def clean_numeric(answer: str) -> str:
    """A numeric answer without units, currency, thousands commas or a trailing period (`\\$1,000 dollars.` -> `1000`)."""
    text = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", " ", answer)
    text = strip_thousands(text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")).strip()
    text = text.rstrip(".").strip()
    number = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*[A-Za-z][A-Za-z .]*", text)
    return number.group(1) if number else text


def last_number(text: str) -> str | None:
    """The last number in the text, thousands commas removed."""
    numbers = _NUMBER.findall(strip_thousands(text))
    return numbers[-1].rstrip(",") if numbers else None


def extract(generation: str, extractor: str, *, mask_token: str | None = None, numeric: bool = False) -> Extraction:
    """Extract the answer with one of EXTRACTORS; `numeric` also drops units and thousands commas."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}: use one of {', '.join(EXTRACTORS)}")
    text, masks = strip_masks(generation, mask_token)
    contents, unclosed = boxed_contents(text)
    boxes = real_boxes(contents)
    answer: str | None = None
    if extractor == "after_think":
        answer = boxes[-1] if boxes else text.rsplit(THINK_CLOSE, 1)[-1].strip() or None
    elif extractor == "last_number":
        answer = last_number(text)
    else:
        if extractor == "gsm8k" and (final := _GSM8K_FINAL.findall(text)):
            answer = final[-1].strip()
        elif boxes:
            answer = boxes[-1]
        elif said := _ANSWER_IS.findall(text):
            answer = said[-1].strip().strip("$").strip()
        elif extractor == "gsm8k":
            answer = last_number(text)
    if answer is not None and numeric:
        answer = clean_numeric(answer)
    return Extraction(answer=answer or None, n_boxed=len(contents), unclosed_boxed=unclosed, leftover_masks=masks)


def flexible_extract(generation: str) -> str | None:
    """lm-eval's flexible extract: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` (None when there is none)."""
    matches = FLEXIBLE_PATTERN.findall(generation)
    if not matches:
        return None
    group = matches[-1]
    return group[0] or group[1]


def flexible_normalize(text: str) -> str:
    """lm-eval's exact_match normalisation for GSM8K: drop commas, `$`, everything up to `#### `, a final period."""
    for pattern in _FLEXIBLE_IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def flexible_match(generation: str, gold: str) -> tuple[str | None, bool]:
    """The flexible extract and whether it equals the gold after lm-eval's normalisation."""
    found = flexible_extract(generation)
    return found, found is not None and flexible_normalize(found) == flexible_normalize(gold)
