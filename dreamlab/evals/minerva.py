"""lm-eval's Minerva MATH answer handling (minerva_math/utils.py of lm-eval 0.4.13), re-implemented.

lm-eval is a test dependency only, and importing its task utilities needs a pinned antlr4; these
functions reproduce it character for character and tests/test_eval_lm_eval_parity.py checks them
against lm-eval's own on real data and on a generations corpus.
"""

from __future__ import annotations

import re
import signal
from functools import lru_cache
from typing import Any, Callable

INVALID_ANSWER = "[invalidanswer]"
_END = "I hope it is correct."
_FINAL = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")

SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
REMOVED_EXPRESSIONS = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
                       "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
                       "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}",
                       "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}",
                       r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots"]


def last_boxed_only_string(text: str) -> str | None:
    """The last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x` up to a `$`) with its command, as lm-eval finds it."""
    index = text.rfind("\\boxed")
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    if index < 0:
        index = text.rfind("\\fbox")
        if index < 0:
            return None
    depth = 0
    for position in range(index, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if text[position] == "}" and depth == 0:
            return text[index:position + 1]
    return None


def remove_boxed(boxed: str) -> str:
    """The contents of `\\boxed{...}` / `\\boxed x` (lm-eval asserts the shape; so does this)."""
    if "\\boxed " in boxed:
        if not boxed.startswith("\\boxed "):
            raise ValueError(f"not a box: {boxed[:40]!r}")
        return boxed[len("\\boxed "):]
    if not (boxed.startswith("\\boxed{") and boxed.endswith("}")):
        raise ValueError(f"not a box: {boxed[:40]!r}")
    return boxed[len("\\boxed{"):-1]


def gold_answer(solution: str) -> str:
    """lm-eval's gold for a MATH row: the normalised contents of the solution's last box."""
    boxed = last_boxed_only_string(solution)
    if boxed is None:
        raise ValueError("the reference solution has no \\boxed{} answer")
    return normalize_final_answer(remove_boxed(boxed))


def unnormalized_answer(text: str) -> str:
    """What follows 'Final Answer: The final answer is' up to 'I hope it is correct.' ([invalidanswer] without it)."""
    match = _FINAL.search(text + _END)
    return match.group(1).strip() if match else INVALID_ANSWER


def normalize_final_answer(final_answer: str) -> str:
    """Minerva's answer normalisation (Lewkowycz et al. 2022, appendix D) as lm-eval 0.4.13 applies it."""
    final_answer = final_answer.split("=")[-1]
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            final_answer = re.sub(rf"(?<!\\)\b{expr}\b", "", final_answer)
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            segments = re.split(r"(\\[a-zA-Z]+)", final_answer)
            for i in range(0, len(segments), 2):
                segments[i] = segments[i].replace(expr, "")
            final_answer = "".join(segments)
        else:
            final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", final_answer):
        final_answer = final_answer.replace(",", "")
    return final_answer


@lru_cache(maxsize=1)
def latex_parser() -> Callable[[str], Any] | None:
    """sympy's ANTLR LaTeX parser, as lm-eval uses it; None where it cannot run (it needs antlr4 4.11)."""
    from sympy.parsing.latex import parse_latex

    try:
        parse_latex("1")
    except ImportError:
        return None
    return parse_latex


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("is_equiv timed out")


def is_equiv(x1: str, x2: str) -> bool:
    """lm-eval's is_equiv: identical strings, else sympy says the parsed difference simplifies to 0 (5 s limit).

    Without a working sympy LaTeX parser lm-eval raises; here only identical strings match then.
    """
    if x1 and x1 == x2:
        return True
    parse_latex = latex_parser()
    if parse_latex is None:
        return False
    import sympy

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    try:
        return bool(sympy.simplify(parse_latex(x1) - parse_latex(x2)) == 0)
    except Exception:  # noqa: BLE001 - lm-eval returns False for every parse, subtraction, simplify or timeout failure
        return False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
