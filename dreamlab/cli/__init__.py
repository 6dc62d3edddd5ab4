"""The `dreamlab` command: the root only registers command groups, each in its own module."""

from __future__ import annotations

import typer

from dreamlab.cli import data as data_cmd
from dreamlab.cli import eval as eval_cmd
from dreamlab.cli import generate as generate_cmd
from dreamlab.cli import runs as runs_cmd
from dreamlab.cli import sweep as sweep_cmd
from dreamlab.cli import train as train_cmd

app = typer.Typer(
    name="dreamlab",
    help="A lab console for masked diffusion language models (Dream and friends).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.command("generate")(generate_cmd.generate)
app.command("train")(train_cmd.train)
app.command("sweep")(sweep_cmd.sweep)
app.add_typer(data_cmd.app, name="data")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(eval_cmd.app, name="eval")


@app.callback()
def root() -> None:
    """A lab console for masked diffusion language models (Dream and friends)."""


def main() -> None:
    """Console-script entry point."""
    app()
