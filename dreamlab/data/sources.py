"""Reading source rows from local jsonl / json / parquet files, a folder of them, or the hub."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlab.data.errors import DataError
from dreamlab.textfiles import json_lines, read_utf8

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
# Hub data sets whose loader needs a configuration name; the first one is the default.
HUB_DEFAULT_SUBSETS = {"openai/gsm8k": "main"}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class SourceRow:
    """One input record with its position: `index` counts from 0 over the whole source."""

    index: int
    where: str
    record: dict[str, Any]


BUILTIN_PREFIX = "builtin:arithmetic"


def read_source(source: str, *, split: str = "train", subset: str | None = None) -> list[SourceRow]:
    """Read every record of a local file, a folder of data files, a hub data set, or the built-in task.

    `builtin:arithmetic[:LEVEL][:notrace][:Kshot]` is the built-in arithmetic task (level 1 by default;
    `:8shot` puts the 8 fixed solved exemplars before every question).
    """
    path = Path(source)
    if source.startswith(BUILTIN_PREFIX):
        records = _read_builtin(source, split)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise DataError(f"empty source: no {', '.join(DATA_SUFFIXES)} files in {source}")
        records = [rec for file in files for rec in _read_file(file)]
    elif path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(f"{source}: unsupported file type (expected {', '.join(DATA_SUFFIXES)})")
        records = list(_read_file(path))
    elif path.suffix in DATA_SUFFIXES or not HUB_ID.match(source):
        raise DataError(f"no such file or folder: {source}")
    else:
        records = list(_read_hub(source, split=split, subset=subset))
    rows = [SourceRow(index=i, where=where, record=rec) for i, (where, rec) in enumerate(records)]
    if not rows:
        raise DataError(f"empty source: {source} holds no rows")
    return rows


def _read_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
    elif path.suffix == ".jsonl":
        yield from _read_json_lines(path)
    else:
        yield from _read_json(path)


def _read_json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, record in json_lines(path, DataError):
        where = f"{path.name} line {number}"
        yield where, _as_object(record, where)


def _read_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    text = read_utf8(path, DataError)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several JSON values: the file is JSON lines under a .json name
            yield from _read_json_lines(path)
            return
        raise DataError(f"{path} line {error.lineno}: malformed JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(document, list):
        yield f"{path.name} line 1", _as_object(document, f"{path.name} line 1")
        return
    for position, record in enumerate(document):
        where = f"{path.name} item {position}"
        yield where, _as_object(record, where)


def _as_object(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        with quiet_datasets():
            table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as error:  # pyarrow and datasets raise many types for a corrupt file
        raise DataError(f"{path}: cannot read parquet ({type(error).__name__}: {_first_line(error)})") from None
    for position, record in enumerate(table):
        yield f"{path.name} row {position}", record


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """datasets' log lines and progress bars off while it reads a local file: we report a failure, once."""
    import datasets

    level, bars_were_off = datasets.logging.get_verbosity(), datasets.are_progress_bars_disabled()
    datasets.logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _read_hub(source: str, *, split: str, subset: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    name = subset if subset is not None else HUB_DEFAULT_SUBSETS.get(source)
    try:
        table = datasets.load_dataset(source, name=name, split=split)
    except Exception as error:  # network, auth, missing split: all reported on one line
        raise DataError(f"cannot load {source} from the hub ({type(error).__name__}: {_first_line(error)})") from None
    for position, record in enumerate(table):
        yield f"{source} {split} row {position}", record


def _read_builtin(source: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    from dreamlab.data.arithmetic import LEVELS, MAX_SHOTS, SPLITS, arithmetic_rows

    expected = f"expected builtin:arithmetic[:LEVEL][:notrace][:Kshot] with LEVEL in {LEVELS} and K from 0 to {MAX_SHOTS}"
    if source != BUILTIN_PREFIX and not source.startswith(BUILTIN_PREFIX + ":"):
        raise DataError(f"{source}: {expected}")
    parts = source.removeprefix(BUILTIN_PREFIX).split(":")[1:]
    trace = "notrace" not in parts
    shot_parts = [p for p in parts if re.fullmatch(r"\d+shot", p)]
    levels = [p for p in parts if p != "notrace" and p not in shot_parts]
    if len(levels) > 1 or (levels and levels[0] not in {str(level) for level in LEVELS}):
        raise DataError(f"{source}: {expected}")
    shots = int(shot_parts[0].removesuffix("shot")) if shot_parts else 0
    if len(shot_parts) > 1 or shots > MAX_SHOTS:
        raise DataError(f"{source}: {expected}")
    if split not in SPLITS:
        raise DataError(f"{source}: --split must be one of {', '.join(SPLITS)}; got {split!r}")
    rows = arithmetic_rows(split, level=int(levels[0]) if levels else 1, trace=trace, shots=shots)
    return [(f"{source} {split} row {position}", row) for position, row in enumerate(rows)]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
