"""Sweeps: a grid of recipes recorded as queued runs sharing a sweep id, run one after another by a
detached driver (`python -m dreamlab.train.sweep --db DB --sweep-id ID`), so closing the terminal
does not stop the queue."""

from __future__ import annotations

import argparse
import itertools
import sys
import typing
from pathlib import Path

from dreamlab.config import Recipe, RecipeError, _field_types, _sections, load_recipe, parse_override


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """`key=a,b` (for a key that is not a list) becomes one axis; returns every combination."""
    axes: list[list[str]] = []
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        annotation = _field_types(_sections()[section]).get(name) if section in _sections() else None
        is_list = annotation is not None and typing.get_origin(annotation) is list
        if "," in value and not is_list:
            axes.append([f"{key}={v.strip()}" for v in value.split(",")])
        else:
            axes.append([text])
    return [list(combo) for combo in itertools.product(*axes)]


def plan(recipe_name: str | None, overrides: list[str]) -> list[tuple[list[str], Recipe]]:
    """Every grid point with its validated recipe; refuses the whole sweep if one point is bad."""
    points = []
    for combo in expand_grid(overrides):
        try:
            points.append((combo, load_recipe(recipe_name, combo)))
        except RecipeError as error:
            raise RecipeError(f"grid point {' '.join(combo)}: {error}") from None
    return points


def drive(db: Path, sweep_id: str) -> int:
    """Run the sweep's queued runs in order; each run's own status records how it ended."""
    from dreamlab.config import recipe_from_dict
    from dreamlab.store import RunStore
    from dreamlab.train.launcher import start_process, torchrun_command

    store = RunStore(db)
    failures = 0
    for run in sorted(store.list_runs(sweep_id=sweep_id, status="queued"), key=lambda r: r.id):
        run_dir = Path(run.run_dir)
        recipe = recipe_from_dict(run.recipe)
        process = start_process(torchrun_command(recipe, run_dir, db, resume=False), run_dir, capture=False)
        store.mark_started(run.id, pid=process.pid, pgid=process.pid)
        code = process.wait()
        if store.get_run(run.id).status == "running":
            store.finish(run.id, "failed", exit_reason=f"torchrun exited with code {code}")
        failures += store.get_run(run.id).status != "completed"
        print(f"{run.name}: {store.get_run(run.id).status}", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached sweep driver."""
    parser = argparse.ArgumentParser(prog="dreamlab.train.sweep")
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--sweep-id", required=True)
    args = parser.parse_args(argv)
    return drive(args.db, args.sweep_id)


if __name__ == "__main__":
    sys.exit(main())
