"""`dreamlab doctor`: check the installation, the hardware, the store and (optionally) a model, tokenizer and data file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dreamlab import doctor as checks
from dreamlab.cli.options import DbOption, JsonOption, resolve_db

MARKS = {"ok": "[green]ok  [/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def doctor(
    model: Annotated[str | None, typer.Option(help="A model folder or hub id to check (`tiny` for the preset).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="A tokenizer folder to check (default: the --model folder's, if any).")] = None,
    data: Annotated[list[Path] | None, typer.Option(help="A training data file to check (repeatable).")] = None,
    expect: Annotated[str, typer.Option(help="The checkpoint kind the recipe expects: base or instruct.")] = "base",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check and explain, one line each with a fix; exit code 1 only when a check fails (warnings pass)."""
    store_path = resolve_db(db)
    found = [checks.check_python(), *checks.check_packages(), checks.check_cuda(), checks.check_gpu_memory(),
             checks.check_nccl(), checks.check_disk(store_path.parent), checks.check_store(store_path)]
    if model is not None:
        found.append(checks.check_model(model, expect=expect))
        folder = Path(model).expanduser()
        if tokenizer is None and (model == "tiny" or any((folder / name).is_file() for name in TOKENIZER_FILES)):
            tokenizer = model
    if tokenizer is not None:
        found.append(checks.check_tokenizer(tokenizer))
    for path in data or []:
        found.append(checks.check_data(path))
    overall = checks.worst(found)
    if as_json:
        typer.echo(json.dumps({"status": overall, "checks": [check.as_dict() for check in found]}, indent=2))
    else:
        console = Console(highlight=False, soft_wrap=True)
        for check in found:
            line = f"{MARKS[check.status]} {check.name}: {escape(check.message)}"
            if check.fix and check.status != "ok":
                line += f" [dim]-> {escape(check.fix)}[/dim]"
            console.print(line)
        counts = {status: sum(c.status == status for c in found) for status in ("ok", "warn", "fail")}
        console.print(f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failures")
    raise typer.Exit(1 if overall == "fail" else 0)
