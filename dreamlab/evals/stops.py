"""Stop strings: where a task's `until` strings cut a decoded generation, as lm-eval's generate_until does."""

from __future__ import annotations

from collections.abc import Sequence


def stop_position(text: str, until: Sequence[str]) -> int | None:
    """The character offset of the earliest stop string in `text` (None when none occurs).

    lm-eval splits at each `until` string in turn and keeps the part before it; that leaves the text
    before the earliest occurrence of any of them, which is what this offset cuts.
    """
    found = [text.find(stop) for stop in until if stop]
    found = [index for index in found if index >= 0]
    return min(found) if found else None


def apply_cut(text: str, cut_at: int | None) -> str:
    """The generation as scored: the text before the stop string (all of it when nothing cut it)."""
    return text if cut_at is None else text[:cut_at]
