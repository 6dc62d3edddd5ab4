"""Helpers for the data tests: write fixtures, run `dreamlab data prepare`, read its output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dreamlab.cli import app

runner = CliRunner()
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prepare(*args: str):
    return runner.invoke(app, ["data", "prepare", *args])


def user(content: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": content}]
