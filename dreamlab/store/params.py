"""A nested recipe flattened into typed `dotted.key -> text` params, and back to Python values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any


def flatten(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`dotted.key -> value` for every leaf of a nested recipe; lists and empty dicts are leaves."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_recipe(recipe: Mapping[str, Any]) -> Iterator[tuple[str, str | None, str]]:
    """Yield (dotted key, value as text, type) for every leaf (see `flatten`)."""
    for key, value in flatten(recipe).items():
        yield (key, *encode_value(value))


def encode_value(value: Any) -> tuple[str | None, str]:
    """(text, type) for one param value; types: null, bool, int, float, str, json."""
    if value is None:
        return None, "null"
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, float):
        return repr(value), "float"
    if isinstance(value, str):
        return value, "str"
    try:
        return json.dumps(value, sort_keys=True, default=str), "json"
    except (TypeError, ValueError):
        return str(value), "str"


def decode_value(text: str | None, kind: str) -> Any:
    """The Python value of a stored (text, type) pair."""
    if kind == "null" or text is None:
        return None
    if kind == "bool":
        return text == "true"
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "json":
        return json.loads(text)
    return text


def same_value(a: Any, b: Any) -> bool:
    """Equality for params: NaN equals NaN, 1 equals 1.0, but True is not 1."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return a == b
