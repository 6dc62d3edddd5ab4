"""Many `bench.learning` configurations at once on one machine (a GPU box has cores to spare).

Each configuration is one `python -m bench.learning` process with its own arguments; up to
`--parallel` run together, each with cores / parallel threads. Results are JSON lines (one per
configuration, written by bench.learning) and a table sorted by exact match.
Run: python -m bench.learning_grid GRID.json --parallel 8 --out results.jsonl
GRID.json is a list of {"label": ..., "args": [bench.learning arguments ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_grid(grid: list[dict], parallel: int, out: Path, logs: Path) -> None:
    """Run every configuration, at most `parallel` at a time, appending results to `out`."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = dict(os.environ, BENCH_THREADS=str(threads), PYTHONUNBUFFERED="1")
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(grid)
    running: list[tuple[subprocess.Popen, dict, float]] = []
    while pending or running:
        while pending and len(running) < parallel:
            config = pending.pop(0)
            command = [sys.executable, "-m", "bench.learning", "--json", str(out), "--label", config["label"],
                       *config["args"]]
            log = (logs / f"{config['label']}.log").open("w")
            running.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), config,
                            time.perf_counter()))
        time.sleep(1)
        for entry in list(running):
            process, config, started = entry
            if process.poll() is not None:
                running.remove(entry)
                print(f"{config['label']}: exit {process.returncode} after {time.perf_counter() - started:.0f} s",
                      flush=True)


def print_table(out: Path) -> None:
    """The results, best exact match first."""
    results = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    results.sort(key=lambda r: -r["accuracy"])
    print("| label | exact match | by kind | steps | train s | final loss |")
    print("|---|---:|---|---:|---:|---:|")
    for r in results:
        kinds = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["by_kind"].items())
        loss = r["loss_curve"][-1][1] if r["loss_curve"] else float("nan")
        print(f"| {r['label']} | {100 * r['accuracy']:.1f}% ({r['rows']}) | {kinds} | {r['steps']} "
              f"| {r['train_seconds']:.0f} | {loss:.4f} |")


def main() -> None:
    """Parse arguments, run the grid, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("learning_grid.jsonl"))
    parser.add_argument("--logs", type=Path, default=Path("learning_grid_logs"))
    args = parser.parse_args()
    run_grid(json.loads(args.grid.read_text()), args.parallel, args.out, args.logs)
    print_table(args.out)


if __name__ == "__main__":
    main()
