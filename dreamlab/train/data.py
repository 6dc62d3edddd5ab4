"""Rows for training: read prepared files (or the built-in task), tokenise as Dream does, shard."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from dreamlab.data.collate import Example
from dreamlab.data.errors import DataError
from dreamlab.data.formats import CONVERTERS, ConvertOptions, DreamRow, resolve_format
from dreamlab.data.sources import read_source


def load_rows(files: Sequence[str], *, split: str, system_prompt: str | None) -> list[DreamRow]:
    """Dream rows from prepared files or any format `data prepare` reads (builtin:arithmetic uses `split`)."""
    rows: list[DreamRow] = []
    options = ConvertOptions(system=system_prompt)
    for spec in files:
        records = read_source(spec, split=split)
        converter = CONVERTERS[resolve_format("auto", set(records[0].record))]
        rows.extend(converter(record, options) for record in records)
    return rows


def split_held_out(rows: Sequence[DreamRow], count: int, *, seed: int) -> tuple[list[DreamRow], list[DreamRow]]:
    """(training rows, `count` held-out validation rows) drawn by a seeded shuffle; both keep file order."""
    held = set(random.Random(seed).sample(range(len(rows)), count))
    return ([row for i, row in enumerate(rows) if i not in held], [row for i, row in enumerate(rows) if i in held])


def tokenize_rows(
    rows: Sequence[DreamRow], tokenizer: PreTrainedTokenizerBase, *, max_length: int, truncation: str
) -> tuple[list[Example], dict[str, int]]:
    """Prompt = chat template + generation prompt; response = text + EOS; both without special tokens.

    Over-long rows: `error` refuses, `drop` drops, `right` / `left` cut the response's end / start
    (keeping its EOS). Returns the examples and counts of dropped / truncated rows.
    """
    prompts = [tokenizer.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=False) for r in rows]
    responses = [r.response + tokenizer.eos_token for r in rows]
    prompt_ids = tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False, verbose=False)["input_ids"]
    examples, counts = [], {"dropped": 0, "truncated": 0}
    for index, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if len(p) + len(r) > max_length:
            room = max_length - len(p) - 1
            if truncation == "error":
                raise DataError(
                    f"row {index} has {len(p) + len(r)} tokens, over data.max_length {max_length}: raise max_length, "
                    "set data.truncation to drop / left / right, or filter with `dreamlab data prepare --max-length`"
                )
            if truncation == "drop" or room <= 0:
                counts["dropped"] += 1
                continue
            body = r[:-1]
            r = (body[:room] if truncation == "right" else body[len(body) - room:]) + r[-1:]
            counts["truncated"] += 1
        examples.append(Example(prompt_ids=p, response_ids=r))
    if not examples:
        raise DataError(f"no training rows left after data.truncation={truncation} at max_length {max_length}")
    return examples, counts


def epoch_order(size: int, *, epoch: int, seed: int) -> list[int]:
    """The shuffled row order of one epoch (the same on every rank)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def rank_batches(order: list[int], *, rank: int, world: int, micro_batch: int) -> list[list[int]]:
    """This rank's micro-batches: global batches of world * micro_batch rows, one slice per rank."""
    global_batch = world * micro_batch
    usable = len(order) - len(order) % global_batch
    return [
        order[start + rank * micro_batch : start + (rank + 1) * micro_batch]
        for start in range(0, usable, global_batch)
    ]
