"""Reading the user's text files (data, recipes, tasks, generations, model configs) as UTF-8, failing on one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_utf8(path: Path, error: type[Exception]) -> str:
    """The text of `path`; bytes that are not UTF-8 raise `error` naming the file, line and byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        column = bad.start - data.rfind(b"\n", 0, bad.start)
        raise error(f"{path} line {line}: not UTF-8 text (byte 0x{data[bad.start]:02x} at column {column})") from None


def text_lines(text: str) -> list[str]:
    """Lines split at newlines only: JSON strings may hold U+2028 and friends, which `str.splitlines` splits at."""
    return text.split("\n")


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A JSON file holding one object; bytes that are not UTF-8, bad JSON or another type raise `error` naming it."""
    try:
        value = json.loads(read_utf8(path, error))
    except json.JSONDecodeError as bad:
        raise error(f"{path} line {bad.lineno}: malformed JSON ({bad.msg} at column {bad.colno})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
