"""Reading the user's text files (data, recipes, tasks, generations) as UTF-8, failing on one line."""

from __future__ import annotations

from pathlib import Path


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
