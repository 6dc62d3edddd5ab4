"""The `dreamlab` command: the root only registers command groups, each in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamlab.cli import data as data_cmd
from dreamlab.cli import demo as demo_cmd
from dreamlab.cli import doctor as doctor_cmd
from dreamlab.cli import eval as eval_cmd
from dreamlab.cli import evals as evals_cmd
from dreamlab.cli import generate as generate_cmd
from dreamlab.cli import runs as runs_cmd
from dreamlab.cli import sweep as sweep_cmd
from dreamlab.cli import train as train_cmd
from dreamlab.cli.options import DbOption, resolve_db

app = typer.Typer(
    name="dreamlab",
    help="A lab console for masked diffusion language models (Dream and friends).",
    invoke_without_command=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.command("demo")(demo_cmd.demo)
app.command("doctor")(doctor_cmd.doctor)
app.command("generate")(generate_cmd.generate)
app.command("train")(train_cmd.train)
app.command("sweep")(sweep_cmd.sweep)
app.add_typer(data_cmd.app, name="data")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(evals_cmd.app, name="evals")


@app.callback()
def root(
    ctx: typer.Context,
    db: DbOption = None,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the console to a browser on localhost only "
                                        "(reach it from elsewhere with ssh -L).")] = False,
    port: Annotated[int, typer.Option(help="Port for --serve.")] = 8000,
) -> None:
    """A lab console for masked diffusion language models (Dream and friends); no command opens the console."""
    if ctx.invoked_subcommand is not None:
        return
    path = resolve_db(db)
    if serve:
        from dreamlab.cli.console import serve_console

        serve_console(path, port)
    else:
        from dreamlab.tui import run_console  # Textual loads here, never for a subcommand

        run_console(path)


def main() -> None:
    """Console-script entry point."""
    app()
