"""Reading the user's text files (data, recipes, tasks, generations, model configs) as UTF-8, failing on one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_utf8(path: Path, error: type[Exception]) -> str:
    """The text of `path`; an unreadable file or bytes that are not UTF-8 raise `error` naming the file (line, byte)."""
    try:
        data = path.read_bytes()
    except OSError as bad:
        raise error(f"{path}: cannot read ({bad.strerror or bad})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        column = bad.start - data.rfind(b"\n", 0, bad.start)
        raise error(f"{path} line {line}: not UTF-8 text (byte 0x{data[bad.start]:02x} at column {column})") from None


def json_lines(path: Path, error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSON-lines file; a bad line raises `error` naming it.

    Split at newlines only: JSON strings may hold U+2028 and friends, which `str.splitlines` splits at.
    """
    for number, line in enumerate(read_utf8(path, error).split("\n"), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as bad:
                raise error(f"{path} line {number}: malformed JSON ({bad.msg} at column {bad.colno})") from None


def read_json(path: Path, error: type[Exception]) -> Any:
    """A JSON file's value; bytes that are not UTF-8 or bad JSON raise `error` naming the file and line."""
    try:
        return json.loads(read_utf8(path, error))
    except json.JSONDecodeError as bad:
        raise error(f"{path} line {bad.lineno}: malformed JSON ({bad.msg} at column {bad.colno})") from None


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A JSON file holding one object; bytes that are not UTF-8, bad JSON or another type raise `error` naming it."""
    value = read_json(path, error)
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
