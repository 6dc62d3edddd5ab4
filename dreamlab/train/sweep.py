"""Sweeps: a grid of recipes recorded as queued runs sharing a sweep id, run one after another by a
detached driver (`python -m dreamlab.train.sweep --db DB --sweep-id ID [--gpus 0,1,...] [--evals JSON]`), so
closing the terminal does not stop the queue. Given GPUs, the driver runs as many runs at once as they
hold, each on its own `trainer.nproc_per_node` of them.

A sweep can queue evals too (`dreamlab eval` command lines): one naming its model runs as given, in
turn with the runs; one that does not evaluates each run of the sweep as soon as that run completes
(`--run NAME`). An eval takes its `--nproc-per-node` GPUs (1 by default) like a run; without GPUs
everything runs one after another.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class SweepEval:
    """A `dreamlab eval` command line queued in a sweep, and the GPUs it takes."""

    args: tuple[str, ...]
    after_each_run: bool = False  # evaluate every run of the sweep when it completes (`--run NAME` added)
    nproc: int = 1

    def command(self, db: Path, run_name: str | None = None) -> list[str]:
        """The eval process's command line (for one run of the sweep when `after_each_run`)."""
        target = ["--run", run_name] if run_name is not None else []
        return [sys.executable, "-m", "dreamlab", "eval", *self.args, *target, "--db", str(db)]


@dataclass
class _Job:
    """One thing the driver starts: a queued run, or an eval (of a run of the sweep, or as given)."""

    label: str
    need: int
    run: Any = None
    evaluation: SweepEval | None = None
    of_run: str | None = None


def drive(db: Path, sweep_id: str, gpus: Sequence[int] = (), poll_s: float = 0.5,
          evals: Sequence[SweepEval] = ()) -> int:
    """Run the sweep's queued runs and evals in order: one after another, or, given `gpus`, as many at once as
    their GPUs allow (a run's `trainer.nproc_per_node`, an eval's `nproc`). Each run's own status records how
    it ended; an eval's is its exit code (its results are in the store). A run's evals start as it completes."""
    from dreamlab.config import recipe_from_dict
    from dreamlab.store import RunStore
    from dreamlab.train.launcher import start_process, torchrun_command

    store = RunStore(db)
    queue = [_Job(run.name, recipe_from_dict(run.recipe).trainer.nproc_per_node, run=run)
             for run in sorted(store.list_runs(sweep_id=sweep_id, status="queued"), key=lambda r: r.id)]
    queue += [_Job(f"eval {' '.join(e.args)}", e.nproc, evaluation=e) for e in evals if not e.after_each_run]
    log_folder = store.runs_dir / "evals"
    idle = list(gpus)
    running: list[tuple[_Job, subprocess.Popen, list[int]]] = []
    failures = started_evals = 0
    while queue or running:
        while queue:
            job = queue[0]
            if job.run is not None and not _still_queued(store, job.run.id):  # removed (dreamlab runs rm) while it waited
                queue.pop(0)
                continue
            need = job.need if gpus else 0
            if need > len(gpus):
                reason = f"needs {need} GPUs; the sweep has {len(gpus)}: {','.join(map(str, gpus))}"
                if job.run is not None:
                    store.finish(job.run.id, "failed", exit_reason=reason)
                print(f"{job.label}: failed ({reason})", flush=True)
                failures += 1
                queue.pop(0)
                continue
            if len(idle) < need or (not gpus and running):
                break
            queue.pop(0)
            mine, idle = idle[:need], idle[need:]
            env = gpu_env(mine) if gpus else None
            if job.run is not None:
                run_dir = Path(job.run.run_dir)
                process = start_process(torchrun_command(recipe_from_dict(job.run.recipe), run_dir, db, resume=False),
                                        run_dir, capture=False, extra_env=env)
                store.mark_started(job.run.id, pid=process.pid, pgid=process.pid)
            else:
                started_evals += 1
                log_folder.mkdir(parents=True, exist_ok=True)
                process = start_process(job.evaluation.command(db, job.of_run), log_folder, capture=False, extra_env=env,
                                        log_name=f"{sweep_id}-eval-{started_evals}.log")
            where = f" on GPU {','.join(map(str, mine))}" if mine else ""
            print(f"{job.label}: started{where} (pid {process.pid})", flush=True)
            running.append((job, process, mine))
        time.sleep(poll_s)
        for entry in [e for e in running if e[1].poll() is not None]:
            job, process, mine = entry
            running.remove(entry)
            idle = sorted(idle + mine)
            if job.run is None:
                failed = process.returncode != 0
                failures += failed
                print(f"{job.label}: {f'failed (exit code {process.returncode})' if failed else 'completed'}", flush=True)
                continue
            if store.get_run(job.run.id).status == "running":
                store.finish(job.run.id, "failed", exit_reason=f"torchrun exited with code {process.returncode}")
            status = store.get_run(job.run.id).status
            failures += status != "completed"
            print(f"{job.label}: {status}", flush=True)
            follow_ups = [e for e in evals if e.after_each_run]
            if status == "completed":  # the run's evals go first: on one device it is evaluated before the next run
                queue[0:0] = [_Job(f"eval of {job.run.name}", e.nproc, evaluation=e, of_run=job.run.name) for e in follow_ups]
            elif follow_ups:
                print(f"eval of {job.run.name}: skipped (the run ended {status})", flush=True)
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
    parser.add_argument("--evals", default="[]", help="the queued evals as a JSON list of SweepEval fields")
    args = parser.parse_args(argv)
    evals = [SweepEval(tuple(e["args"]), e["after_each_run"], e["nproc"]) for e in json.loads(args.evals)]
    return drive(args.db, args.sweep_id, parse_gpus(args.gpus), evals=evals)


def evals_argument(evals: Sequence[SweepEval]) -> str:
    """The driver's --evals value."""
    return json.dumps([asdict(e) for e in evals])


if __name__ == "__main__":
    sys.exit(main())
