"""`dreamlab demo`: the main job on the embedded default in one command (prepare, train, evaluate, report)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dreamlab.cli.eval import _errors, print_results, run_eval
from dreamlab.cli.options import DbOption, resolve_db
from dreamlab.cli.train import follow_to_end
from dreamlab.config import RecipeError, load_recipe
from dreamlab.data.errors import DataError
from dreamlab.data.formats import ConvertOptions
from dreamlab.data.prepare import PrepareOptions, prepare
from dreamlab.data.report import report_tables
from dreamlab.store import RunStore, StoreError

RECIPE = "tiny-arithmetic"
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
DEFAULT_STEPS = "16,32,48"
# Level-1 responses are at most 48 tokens with their EOS (the prepare report's max), so 48 new tokens fit every answer.
MAX_NEW_TOKENS = 48
# Six batches of 16: 12 cells x 96 problems is 2,304 forwards of [16, 81] tokens; one took 51 ms of CPU
# on the recipe's model (1 thread, measured here), so the grid needs about 2-2.5 minutes of one core.
DEFAULT_EVAL_LIMIT = 96
# The headline cell is `entropy` at the grid's largest step count (48 by default). Under this floor the
# model did not learn the task (the recipe's seeds 0-3 scored 95.8-99.9% on the whole test split;
# docs/learning.md), so `dreamlab demo` exits 1 and CI catches it. Reduced runs pass --min-accuracy 0.
HEADLINE_ALG = "entropy"
MIN_HEADLINE_ACCURACY = 0.90


def headline_failure(records: list, floor: float) -> str | None:
    """Why the demo failed its floor (one line), or None: `entropy` at the largest step count against `floor`."""
    if floor <= 0:
        return None
    cells = [r for r in records if r.alg == HEADLINE_ALG]
    if not cells:
        return f"the grid has no {HEADLINE_ALG} cell to check against the {100 * floor:.0f}% floor"
    cell = max(cells, key=lambda r: r.steps)
    accuracy = cell.accuracy or 0.0
    if accuracy >= floor:
        return None
    return (f"headline cell {HEADLINE_ALG} / {cell.steps} steps scored {100 * accuracy:.1f}%, under the "
            f"{100 * floor:.0f}% floor (--min-accuracy): the model did not learn the task")


def demo(
    overrides: Annotated[list[str] | None, typer.Argument(
        help="section.key=value overrides of the tiny-arithmetic recipe (none: the recipe as packaged).")] = None,
    train_steps: Annotated[int | None, typer.Option(min=1, help="Train this many steps (trainer.total_training_steps).")] = None,
    eval_limit: Annotated[int, typer.Option(min=1, help="Evaluate the first N test problems in every cell.")] = DEFAULT_EVAL_LIMIT,
    steps: Annotated[str, typer.Option(help="Comma list of sampler step counts for the grid.")] = DEFAULT_STEPS,
    name: Annotated[str | None, typer.Option(help="Run name (generated if absent).")] = None,
    min_accuracy: Annotated[float, typer.Option(
        min=0.0, max=1.0, help=f"Exit 1 when {HEADLINE_ALG} at the largest step count scores under this "
                               "(0 turns the check off, for reduced runs that cannot learn the task).")] = MIN_HEADLINE_ACCURACY,
    db: DbOption = None,
) -> None:
    """Prepare the built-in task, train the tiny model on the CPU, evaluate 4 algorithms x steps, show the results."""
    console = Console(highlight=False)
    store_path = resolve_db(db)
    started = time.monotonic()
    try:
        words = list(overrides or [])
        if train_steps is not None:
            words.append(f"trainer.total_training_steps={train_steps}")
        recipe = load_recipe(RECIPE, words)
        for count in steps.split(","):
            if not count.strip().isdigit() or int(count) < 1:
                raise RecipeError(f"--steps must be a comma list of positive integers; got {steps!r}")
        store = RunStore(store_path)
        console.rule("[bold]1/3 prepare[/bold] the built-in arithmetic task")
        recipe.data.train_files = [str(_prepare(spec, store.runs_dir / ".data", recipe.data.max_length, console))
                                   for spec in recipe.data.train_files]
        console.rule(f"[bold]2/3 train[/bold] {RECIPE}: {recipe.trainer.total_training_steps or 'all'} steps")
        run = _train(store, store_path, recipe, name, console)
    except (RecipeError, DataError, StoreError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if run.status != "completed":
        console.print(f"the run ended as {run.status}; see {Path(run.run_dir) / 'train.log'}")
        raise typer.Exit(1)
    trained_s = time.monotonic() - started
    console.rule(f"[bold]3/3 evaluate[/bold] {len(ALGS)} algorithms x steps {steps} on {eval_limit} test problems")
    with _errors():
        records = run_eval("arithmetic", run=run.name, limit=eval_limit, db=store_path,
                           sampler={"alg": ",".join(ALGS), "steps": steps, "max_new_tokens": MAX_NEW_TOKENS})
    print_results(records, console)
    best = max(records, key=lambda r: r.accuracy or 0.0)
    headline = max((r for r in records if r.alg == HEADLINE_ALG), key=lambda r: r.steps)
    total_s = time.monotonic() - started
    console.print(f"run [bold]{run.name}[/bold] lives in {run.run_dir} (store {store_path}); "
                  f"headline {HEADLINE_ALG} / {headline.steps} steps: {100 * (headline.accuracy or 0):.1f}%; "
                  f"best cell {best.alg} / {best.steps} steps: {100 * (best.accuracy or 0):.1f}%; "
                  f"train {trained_s / 60:.1f} min, total {total_s / 60:.1f} min", soft_wrap=True)
    db_flag = "" if db is None else f" --db {store_path}"
    steps_text = ",".join(sorted({str(r.steps) for r in records}, key=int))
    next_steps = [
        ("open the console: runs, loss curves, GPU, compare", f"dreamlab{db_flag}"),
        ("the run's recipe, metrics, checkpoints and history", f"dreamlab runs show {run.name}{db_flag}"),
        ("a bigger eval of the same checkpoint", f"dreamlab eval --run {run.name} --alg entropy --steps {steps_text} --limit 500{db_flag}"),
        ("watch the masks fill in", f'dreamlab generate --run {run.name} "Solve: 27 + 45"{db_flag}'),
        ("the real recipe on GPUs", "README.md: The s1K recipe on Dream 7B"),
    ]
    console.print("\nnext:")
    for description, command in next_steps:
        # soft_wrap: a command broken across lines cannot be copied back into a shell.
        console.print(f"  {escape(command)}    [dim]# {description}[/dim]", soft_wrap=True)
    failure = headline_failure(records, min_accuracy)
    if failure is not None:
        typer.echo(f"error: {failure}", err=True)
        raise typer.Exit(1)


def _prepare(spec: str, folder: Path, max_length: int, console: Console) -> Path:
    """Convert one training source into Dream rows beside the store (as `dreamlab data prepare` does)."""
    # `.data`: run names cannot start with a dot, so no run folder can take this one's place.
    from dreamlab.models import build_char_tokenizer  # torch, transformers

    out = folder / (spec.replace(":", "-").replace("/", "-").strip("-.") + "-train.jsonl")
    # No system turn: the rows then equal what the recipe's builtin source gives the trainer directly.
    options = PrepareOptions(max_length=max_length, convert=ConvertOptions(system=None))
    report = prepare(spec, out, options, build_char_tokenizer())
    for table in report_tables(report):
        console.print(table)
    return out


def _train(store, store_path: Path, recipe, name: str | None, console: Console):
    """Record and run the training as `dreamlab train --foreground` does; return the finished run."""
    from dreamlab.train.launcher import launch  # torch

    run, process = launch(store, store_path, recipe, name=name, capture=True)
    console.print(f"run [bold]{run.name}[/bold] in {run.run_dir} (log: train.log)")
    return follow_to_end(store, run, process, console)
