"""`dreamlab data ...`: turn reasoning data sets into Dream's SFT rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dreamlab.data.errors import DataError
from dreamlab.data.formats import DEFAULT_SYSTEM_PROMPT, FORMATS
from dreamlab.data.lengths import TRUNCATIONS
from dreamlab.data.prepare import ORDERS, ConvertOptions, PrepareOptions, prepare, report_path
from dreamlab.data.report import report_tables

app = typer.Typer(help="Prepare SFT data: s1K, s1K-1.1, GSM8K or prepared rows -> Dream rows.",
                  no_args_is_help=True)


@app.command("prepare")
def prepare_command(
    source: Annotated[str, typer.Argument(help="A .jsonl / .json / .parquet file, a folder of them, or a hub id "
                                               "(simplescaling/s1K, simplescaling/s1K-1.1, openai/gsm8k).")],
    out: Annotated[Path, typer.Option("--out", help="Output rows: FILE.jsonl or FILE.parquet (report: FILE.report.json).")],
    format: Annotated[str, typer.Option(help=f"Input schema: auto or one of {', '.join(FORMATS)}.")] = "auto",
    system: Annotated[str, typer.Option(help="System prompt put before each question.")] = DEFAULT_SYSTEM_PROMPT,
    no_system: Annotated[bool, typer.Option("--no-system", help="No system turn in the prompts.")] = False,
    trajectory: Annotated[str, typer.Option(help="s1K-1.1: whose trace and attempt to use, deepseek or gemini.")] = "deepseek",
    strip_calculator: Annotated[bool, typer.Option(help="GSM8K: remove the <<...>> calculator notes.")] = True,
    where: Annotated[list[str] | None, typer.Option(help="Keep rows whose FIELD=VALUE (or FIELD!=VALUE); repeatable, all must hold.")] = None,
    fraction: Annotated[float, typer.Option(help="Keep this share of the (filtered) rows, sampled with --seed.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for --fraction and --order shuffle.")] = 0,
    order: Annotated[str, typer.Option(help=f"Row order: {', '.join(ORDERS)} (curriculum: ascending --curriculum-by).")] = "original",
    curriculum_by: Annotated[str, typer.Option(help="`tokens` (shortest first) or a numeric meta field such as difficulty.")] = "tokens",
    max_length: Annotated[int | None, typer.Option(help="Longest row in tokens (prompt + response + EOS).")] = None,
    truncation: Annotated[str, typer.Option(help=f"Rows over --max-length: {', '.join(TRUNCATIONS)} (left/right cut the response).")] = "error",
    on_invalid: Annotated[str, typer.Option(help="Rows with a missing or malformed field: error or drop.")] = "error",
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or hub id for AutoTokenizer (default: the tiny preset's).")] = None,
    split: Annotated[str, typer.Option(help="Hub sources and builtin:arithmetic: which split.")] = "train",
    subset: Annotated[str | None, typer.Option(help="Hub sources: configuration name (openai/gsm8k: main by default).")] = None,
) -> None:
    """Convert SOURCE into Dream SFT rows (prompt messages, <think> response, meta) with a report."""
    options = PrepareOptions(
        format=format, convert=ConvertOptions(system=None if no_system else system, trajectory=trajectory,
                                              strip_calculator=strip_calculator),
        where=tuple(where or ()), fraction=fraction, seed=seed, order=order, curriculum_by=curriculum_by,
        max_length=max_length, truncation=truncation, on_invalid=on_invalid, split=split, subset=subset,
    )
    try:
        options.validate()
        loaded = _load_tokenizer(tokenizer)
        with _progress() as progress:
            report = prepare(source, out, options, loaded, tokenizer_name=tokenizer or "tiny", progress=progress)
    except DataError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    console = Console()
    for table in report_tables(report):
        console.print(table)
    console.print(f"wrote {report.rows_written} rows to {out}; report in {report_path(out)}", soft_wrap=True)


def _load_tokenizer(name: str | None):
    if name is None:
        from dreamlab.models import build_char_tokenizer

        return build_char_tokenizer()
    from dreamlab.models.loading import load_tokenizer

    try:
        return load_tokenizer(name)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or ["no message"])[0]
        raise DataError(f"cannot load tokenizer {name}: {first_line}") from None


@contextmanager
def _progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A rich progress bar on stderr, silent when stderr is not a terminal."""
    console = Console(stderr=True)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)

    def stage(description: str, total: int) -> Callable[[int], None]:
        task = bars.add_task(description, total=total)
        return lambda n: bars.advance(task, n)

    with bars:
        yield stage
