"""Sweeps: a grid of recipes recorded as queued runs sharing a sweep id, run one after another by a
detached driver (`python -m dreamlab.train.sweep --db DB --sweep-id ID [--gpus 0,1,...]`), so closing the
terminal does not stop the queue. Given GPUs, the driver runs as many runs at once as they hold, each
on its own `trainer.nproc_per_node` of them."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def parse_gpus(text: str) -> list[int]:
    """`0,1,3` -> [0, 1, 3]; empty -> []; anything else is a ValueError naming the bad part."""
    gpus = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit():
            raise ValueError(f"--gpus: {part!r} is not a GPU index (expected e.g. 0,1,2,3, auto or none)")
        gpus.append(int(part))
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus: {text!r} names a GPU twice")
    return gpus


def gpu_env(gpus: Sequence[int]) -> dict[str, str]:
    """The environment that shows a run only its own GPUs, numbered as NVML numbers them."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


def drive(db: Path, sweep_id: str, gpus: Sequence[int] = (), poll_s: float = 0.5) -> int:
    """Run the sweep's queued runs in order: one after another, or, given `gpus`, as many at once as
    their `trainer.nproc_per_node` GPUs each allow. Each run's own status records how it ended."""
    from dreamlab.config import recipe_from_dict
    from dreamlab.store import RunStore
    from dreamlab.train.launcher import start_process, torchrun_command

    store = RunStore(db)
    queue = sorted(store.list_runs(sweep_id=sweep_id, status="queued"), key=lambda r: r.id)
    idle = list(gpus)
    running: list[tuple[Any, subprocess.Popen, list[int]]] = []
    failures = 0
    while queue or running:
        while queue:
            run = queue[0]
            if not _still_queued(store, run.id):  # removed (dreamlab runs rm) while it waited
                queue.pop(0)
                continue
            recipe = recipe_from_dict(run.recipe)
            need = recipe.trainer.nproc_per_node if gpus else 0
            if need > len(gpus):
                store.finish(run.id, "failed", exit_reason=f"needs {need} GPUs; the sweep has {len(gpus)}: "
                                                           f"{','.join(map(str, gpus))}")
                print(f"{run.name}: failed (needs {need} GPUs)", flush=True)
                failures += 1
                queue.pop(0)
                continue
            if len(idle) < need or (not gpus and running):
                break
            queue.pop(0)
            mine, idle = idle[:need], idle[need:]
            run_dir = Path(run.run_dir)
            process = start_process(torchrun_command(recipe, run_dir, db, resume=False), run_dir, capture=False,
                                    extra_env=gpu_env(mine) if gpus else None)
            store.mark_started(run.id, pid=process.pid, pgid=process.pid)
            where = f" on GPU {','.join(map(str, mine))}" if mine else ""
            print(f"{run.name}: started{where} (pid {process.pid})", flush=True)
            running.append((run, process, mine))
        time.sleep(poll_s)
        for entry in [e for e in running if e[1].poll() is not None]:
            run, process, mine = entry
            running.remove(entry)
            idle = sorted(idle + mine)
            if store.get_run(run.id).status == "running":
                store.finish(run.id, "failed", exit_reason=f"torchrun exited with code {process.returncode}")
            status = store.get_run(run.id).status
            failures += status != "completed"
            print(f"{run.name}: {status}", flush=True)
    return 1 if failures else 0


def _still_queued(store: Any, run_id: int) -> bool:
    from dreamlab.store.errors import StoreError

    try:
        return store.get_run(run_id).status == "queued"
    except StoreError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached sweep driver."""
    parser = argparse.ArgumentParser(prog="dreamlab.train.sweep")
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--sweep-id", required=True)
    parser.add_argument("--gpus", default="", help="comma list of GPU indices to run on at once; empty: one at a time")
    args = parser.parse_args(argv)
    return drive(args.db, args.sweep_id, parse_gpus(args.gpus))


if __name__ == "__main__":
    sys.exit(main())
