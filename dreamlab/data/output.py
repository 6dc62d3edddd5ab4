"""Writing prepared rows and reports without ever leaving a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dreamlab.data.errors import DataError

OUTPUT_SUFFIXES = (".jsonl", ".parquet")


def check_output_path(path: Path) -> None:
    """Refuse an output name whose extension picks no writer."""
    if path.suffix not in OUTPUT_SUFFIXES:
        raise DataError(f"--out {path}: the name must end in {' or '.join(OUTPUT_SUFFIXES)}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in the target's folder, moved onto the target only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file the usual mode
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_rows(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Write rows as JSON lines, or as parquet when the name ends in .parquet."""
    check_output_path(path)
    with atomic_path(path) as temporary:
        if path.suffix == ".parquet":
            import datasets

            datasets.Dataset.from_list(list(records)).to_parquet(str(temporary))
        else:
            _write_text(temporary, lambda handle: handle.writelines(
                json.dumps(record) + "\n" for record in records))


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write one JSON document, indented for reading."""
    with atomic_path(path) as temporary:
        _write_text(temporary, lambda handle: handle.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n"))


def _write_text(path: Path, write: Callable[[Any], Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        write(handle)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
