"""An eval grid: one SamplerSettings per cell, from the values a command was given over the task's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from itertools import product
from typing import Any

from dreamlab.diffusion.settings import SamplerSettings, field_types

SAMPLER_TYPES = field_types(SamplerSettings)
# Settings that can be off: `none` in a comma list turns them off in that cell (not the task default).
OPTIONAL = {item.name for item in fields(SamplerSettings) if item.default is None}
OFF = object()
# The loop order, outermost first (cells are recorded and listed in this order); other settings follow.
ORDER = ("max_new_tokens", "alg", "steps", *(name for name in SAMPLER_TYPES if name not in ("max_new_tokens", "alg", "steps")))


def grid_cells(given: Mapping[str, Any], defaults: Mapping[str, Any], task: str) -> list[SamplerSettings]:
    """Every combination of the given settings (a text value is a comma list), unset ones from the task, validated."""
    axes = [_values(name, given.get(name)) for name in ORDER]
    cells = []
    for combination in product(*axes):
        values = {name: defaults.get(name) if value is None else value for name, value in zip(ORDER, combination)}
        values = {"alg": "entropy", **{name: value for name, value in values.items() if value not in (None, OFF)}}
        for required in ("steps", "max_new_tokens"):
            if required not in values:
                raise ValueError(f"task {task} sets no default {required}: pass --{required.replace('_', '-')}")
        cells.append(SamplerSettings(**values))  # validates (unknown alg, steps 0, bad blocks...) before the model loads
    return cells


def _values(name: str, value: Any) -> list[Any]:
    """`a,b,c` -> [a, b, c] of the setting's type (`none` = off); a non-text value as it is; [None] when not given."""
    if not isinstance(value, str):
        return [value]
    flag, kind = f"--{name.replace('_', '-')}", SAMPLER_TYPES[name]
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{flag} is empty")
    try:
        return [OFF if name in OPTIONAL and item.lower() == "none" else _parse(kind, item) for item in items]
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of {kind.__name__}s; got {value!r}") from None


def _parse(kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    return kind(text)


# The settings a cell's label names besides alg and steps (when set), in this order: blocks, a KV cache, decoding rules.
EXTRA_SETTINGS = ("block_length", "cache", "threshold", "factor", "gamma", "commit_gap")


def extra_settings(cell: Any) -> list[str]:
    """The blocks, cache and decoding rules a cell sets (`block 32`, `cache dual`, `threshold 0.9`), in order."""
    return [f"{'block' if name == 'block_length' else name} {getattr(cell, name)}"
            for name in EXTRA_SETTINGS if getattr(cell, name, None) is not None]


def cell_label(cell: Any) -> str:
    """`entropy × 128 steps · block 32 · cache dual · threshold 0.9` for a SamplerSettings or an EvalRecord."""
    return " · ".join([f"{cell.alg} × {cell.steps} steps", *extra_settings(cell)])
