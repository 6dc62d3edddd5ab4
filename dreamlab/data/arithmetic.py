"""The built-in arithmetic task, in the simplified s1K form (question, `<think>` trace, answer).

Generated deterministically. A question's split comes from a hash of its text, so train,
validation and test never share a question whatever the seed; the seed only picks and orders.
The trace makes every digit a local computation: one line per column, right to left, carrying the
carry (or borrow) to the next line, e.g. "Solve: 27 + 45" -> "7+5+0=2 c1", "2+4+1=7 c0" -> 72.

Levels:
  1 (default): 2-digit +/- 2-digit: carries, borrows and negative results.
  2: level 1 plus 2-digit x 1-digit multiplication and linear equations a*x + b = c.
  3: level 2 with 3-digit operands and 2-digit equation constants.

The k-shot form (`shots=k`, `builtin:arithmetic:8shot`) puts k solved exemplars before every
question as earlier chat turns. The exemplars are fixed, as lm-eval fixes gsm8k_cot's eight: every
prompt of a level starts with the same prefix, and the eval task renders the same prompts from the
same list (`exemplars`, the `arithmetic` task's few-shot examples, `--shots k`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

LEVELS = (1, 2, 3)
SPLITS = ("train", "validation", "test")
SOURCE = "dreamlab/arithmetic"
# Level 3 has more questions than are worth enumerating: a fixed-seed sample of this many distinct
# questions is its universe, so the splits are the same on every machine.
SAMPLED_UNIVERSE = 40_000
MAX_SHOTS = 8
EXEMPLAR_SEED = "dreamlab-arithmetic-exemplars"


@dataclass(frozen=True)
class Problem:
    """One question with its worked trace and integer answer."""

    question: str
    trace: tuple[str, ...]
    answer: int
    kind: str


def split_of(question: str) -> str:
    """The split a question belongs to: 8% test, 4% validation, the rest train (by hash)."""
    bucket = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < 8 else "validation" if bucket < 12 else "train"


def _digits(n: int, width: int) -> list[int]:
    """Digits of n, least significant first, zero-padded to width."""
    return [(n // 10**i) % 10 for i in range(width)]


def addition(a: int, b: int) -> Problem:
    """a + b for non-negative a, b, column by column with carries."""
    width = max(len(str(a)), len(str(b)))
    lines, carry = [], 0
    for da, db in zip(_digits(a, width), _digits(b, width)):
        total = da + db + carry
        lines.append(f"{da}+{db}+{carry}={total % 10} c{total // 10}")
        carry = total // 10
    return Problem(f"Solve: {a} + {b}", tuple(lines), a + b, "add")


def subtraction(a: int, b: int) -> Problem:
    """a - b for non-negative a, b, column by column with borrows (negated when a < b)."""
    lines = []
    big, small = (a, b) if a >= b else (b, a)
    if a < b:
        lines.append(f"{a}<{b} so -({b}-{a})")
    width = len(str(big))
    borrow = 0
    for da, db in zip(_digits(big, width), _digits(small, width)):
        value = da - db - borrow
        lines.append(f"{da}-{db}-{borrow}={value % 10} b{int(value < 0)}")
        borrow = int(value < 0)
    return Problem(f"Solve: {a} - {b}", tuple(lines), a - b, "sub")


def multiplication(a: int, d: int) -> Problem:
    """a * d for a single digit d, column by column with carries."""
    lines, carry = [], 0
    for da in _digits(a, len(str(a))):
        total = da * d + carry
        lines.append(f"{da}*{d}+{carry}={total % 10} c{total // 10}")
        carry = total // 10
    return Problem(f"Solve: {a} * {d}", tuple(lines), a * d, "mul")


def linear_equation(a: int, b: int, x: int) -> Problem:
    """a*x + b = c with integer solution x, solved in two lines."""
    c = a * x + b
    sign, magnitude = ("+", b) if b >= 0 else ("-", -b)
    undo = "-" if b >= 0 else "+"
    lines = (f"{a}x={c}{undo}{magnitude}={c - b}", f"x={c - b}/{a}={x}")
    return Problem(f"Solve: {a}x {sign} {magnitude} = {c}", lines, x, "eq")


def _level_one() -> list[Problem]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return [addition(a, b) for a, b in pairs] + [subtraction(a, b) for a, b in pairs]


def _level_two() -> list[Problem]:
    products = [multiplication(a, d) for a in range(10, 100) for d in range(2, 10)]
    equations = [
        linear_equation(a, b, x) for a in range(2, 10) for b in range(-20, 21) for x in range(-9, 21)
    ]
    return _level_one() + products + equations


def _level_three() -> list[Problem]:
    rng = random.Random("dreamlab-arithmetic-level-3")
    low, high, constant = 100, 999, 99

    def draw() -> Problem:
        kind = rng.choice(["add", "sub", "mul", "eq"])
        if kind == "add":
            return addition(rng.randint(low, high), rng.randint(low, high))
        if kind == "sub":
            return subtraction(rng.randint(low, high), rng.randint(low, high))
        if kind == "mul":
            return multiplication(rng.randint(low, high), rng.randint(2, 9))
        b = rng.randint(-constant, constant)
        return linear_equation(rng.randint(2, 9), b, rng.randint(-9, constant))

    universe: dict[str, Problem] = {}
    while len(universe) < SAMPLED_UNIVERSE:
        problem = draw()
        universe.setdefault(problem.question, problem)
    return list(universe.values())


def problems(level: int = 1) -> list[Problem]:
    """Every question of a level (its fixed universe), in a stable order."""
    if level not in LEVELS:
        raise ValueError(f"arithmetic level must be one of {LEVELS}; got {level!r}")
    return {1: _level_one, 2: _level_two, 3: _level_three}[level]()


def response_text(problem: Problem, trace: bool = True) -> str:
    """The answer field: a `<think>` block (empty without the trace) and the final integer."""
    body = "\n".join(problem.trace) + "\n" if trace else ""
    return f"<think>\n{body}</think>\n{problem.answer}"


def exemplars(level: int = 1, shots: int = MAX_SHOTS) -> list[Problem]:
    """The level's first `shots` fixed exemplars: train-split questions, the kinds taken in turn."""
    if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= MAX_SHOTS:
        raise ValueError(f"shots must be an integer from 0 to {MAX_SHOTS}; got {shots!r}")
    pool = [p for p in problems(level) if split_of(p.question) == "train"]
    random.Random(EXEMPLAR_SEED).shuffle(pool)
    by_kind = {kind: [p for p in pool if p.kind == kind] for kind in sorted({p.kind for p in pool})}
    # Round robin over the kinds, so even 2 shots show both + and -.
    ordered = [group[i] for i in range(MAX_SHOTS) for group in by_kind.values() if i < len(group)]
    return ordered[:shots]


def fewshot_examples(level: int = 1, shots: int = MAX_SHOTS, trace: bool = True) -> list[dict[str, str]]:
    """The exemplars as chat turns' text: {"question", "solution"} (the solution as `response_text` writes it)."""
    return [{"question": p.question, "solution": response_text(p, trace)} for p in exemplars(level, shots)]


def arithmetic_rows(
    split: str = "train", *, level: int = 1, seed: int = 0, size: int | None = None, trace: bool = True,
    shots: int = 0,
) -> list[dict]:
    """Rows of one split in the simplified s1K form, shuffled by `seed`, the first `size` kept.

    With `shots` > 0 each row carries the first `shots` exemplars in `fewshot` (earlier chat turns),
    and the exemplars' own questions are left out of the rows.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    examples = fewshot_examples(level, shots, trace)
    shown = {example["question"] for example in examples}
    chosen = [p for p in problems(level) if split_of(p.question) == split and p.question not in shown]
    random.Random(seed).shuffle(chosen)
    if size is not None:
        chosen = chosen[:size]
    rows = []
    for problem in chosen:
        answer = response_text(problem, trace)
        rows.append({
            "question": problem.question,
            "answer": answer,
            "source": SOURCE,
            "difficulty": level,
            "kind": problem.kind,
            "gold": str(problem.answer),
            "thinking_tokens": len("\n".join(problem.trace)) if trace else 0,
            "answer_tokens": len(str(problem.answer)),
            **({"fewshot": examples} if examples else {}),
        })
    return rows
