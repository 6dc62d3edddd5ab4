"""Eval batches: samples bucketed by prompt length, what `--batch-size auto` starts from, and its out-of-memory back-off.

Batches are contiguous runs of the samples sorted by prompt length, so a batch pads its prompts only
up to its own longest one (for batches of a fixed size this gives the least padding of any split).
`auto` starts from every remaining sample in one batch on CUDA and, on an out-of-memory error,
retries with 0.9 x the size (accelerate's `find_executable_batch_size`); a retry starts from the
samples not yet handled, so none is lost and none is done twice. Off CUDA, `auto` is a fixed
CPU_AUTO_BATCH_SIZE (measured in bench/README.md, "Eval throughput"), with the same back-off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from accelerate.utils import find_executable_batch_size
from accelerate.utils.memory import should_reduce_batch_size

from dreamlab.evals.tasks import Sample

AUTO = "auto"
CPU_AUTO_BATCH_SIZE = 32
BatchSize = int | Literal["auto"]


def parse_batch_size(value: str | int) -> BatchSize:
    """A whole number >= 1, or `auto`; ValueError naming --batch-size otherwise."""
    text = str(value).strip()
    if text == AUTO:
        return AUTO
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"--batch-size must be a whole number >= 1 or auto; got {value!r}") from None
    if number < 1:
        raise ValueError(f"--batch-size must be a whole number >= 1 or auto; got {number}")
    return number


def length_batches(samples: Sequence[Sample], prompts: Mapping[int, list[int]], batch_size: int) -> list[list[Sample]]:
    """Consecutive batches of `batch_size` samples in (prompt length, idx) order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    ordered = sorted(samples, key=lambda s: (len(prompts[s.idx]), s.idx))
    return [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]


def padding_count(batches: Sequence[Sequence[Sample]], prompts: Mapping[int, list[int]]) -> tuple[int, int]:
    """(pad positions, all prompt positions) of these batches once each is left-padded to its longest prompt."""
    padded = total = 0
    for batch in batches:
        width = max(len(prompts[s.idx]) for s in batch)
        padded += sum(width - len(prompts[s.idx]) for s in batch)
        total += width * len(batch)
    return padded, total


def starting_batch_size(requested: BatchSize, device: torch.device, pending: int) -> int:
    """The first size to try: the number asked for; `auto`: every pending sample (at most CPU_AUTO_BATCH_SIZE off CUDA)."""
    if requested != AUTO:
        return int(requested)
    return max(1, pending) if device.type == "cuda" else max(1, min(pending, CPU_AUTO_BATCH_SIZE))


def run_in_batches(pending: Callable[[], list[Sample]], handle: Callable[[list[Sample]], None],
                   prompts: Mapping[int, list[int]], requested: BatchSize, device: torch.device,
                   on_backoff: Callable[[int, int], None] | None = None) -> int | None:
    """Hand every pending sample to `handle` in length-bucketed batches; returns the batch size the last batch was cut at.

    `pending()` is asked again after each out-of-memory retry (auto only), so it must leave out the
    samples `handle` has finished. `on_backoff(old, new)` hears of each reduction. None when nothing was pending.
    """
    todo = pending()
    if not todo:
        return None
    if requested != AUTO:
        try:
            for batch in length_batches(todo, prompts, int(requested)):
                handle(batch)
        except RuntimeError as error:
            if not should_reduce_batch_size(error):
                raise
            raise ValueError(f"out of memory at --batch-size {requested}: use a smaller one, or auto to find the "
                             "largest that fits (finished samples are saved)") from error
        return int(requested)
    size = starting_batch_size(AUTO, device, len(todo))

    def reduce() -> int:
        nonlocal size
        smaller = int(size * 0.9)
        if on_backoff is not None:
            on_backoff(size, smaller)
        size = smaller
        return smaller

    @find_executable_batch_size(starting_batch_size=size, reduce_batch_size_fn=reduce)
    def attempt(batch_size: int) -> int:
        for batch in length_batches(pending(), prompts, batch_size):
            handle(batch)
        return batch_size

    try:
        return attempt()
    except RuntimeError as error:
        if "No executable batch size found" not in str(error):
            raise
        raise ValueError("--batch-size auto: out of memory even at batch size 1; lower --max-new-tokens or --shots, "
                         "or use a device with more memory") from error
