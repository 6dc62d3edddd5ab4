"""Run store at scale: 1,000 runs and 1,000,000 metric rows; list / compare / latest timings (API and CLI).

    python -m bench.store_scale [--runs 1000] [--steps 250] [--keys 4]

Builds the store in a temporary folder (metrics inserted with executemany, 100,000 rows a transaction),
then times each read as the median of several calls. The CLI rows are timed in-process with typer's
CliRunner (the command's own work); the last row is a fresh `python` process running `dreamlab runs
list`, which also pays for importing the whole `dreamlab` CLI.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import median_seconds
from dreamlab.store import RunStore

KEYS = ("train/loss", "lr", "grad_norm", "tokens_per_s", "eval/acc", "train/mask_ratio")


def build(path: Path, runs: int, steps: int, keys: int) -> tuple[RunStore, float]:
    store = RunStore(path)
    rng = random.Random(0)
    start = time.perf_counter()
    ids = []
    statuses = ("completed", "failed", "diverged", "stopped")
    for index in range(runs):
        recipe = {"model": {"name": "tiny", "layers": 4}, "optim": {"lr": rng.choice([1e-4, 3e-4, 1e-3]),
                  "warmup": 100}, "diffusion": {"reweight": rng.choice(["original", "linear", "cart"])},
                  "seed": index % 5}
        run = store.create_run(name=f"run-{index:04d}", recipe=recipe, sweep_id=f"sweep-{index // 10}",
                               meta={"host": "bench", "gpus": ["H100"] * 8,
                                     "versions": {"torch": "2.13.0", "transformers": "5.24", "dreamlab": "0.1.0"}})
        store.mark_started(run.id, pid=100_000 + index, pgid=100_000 + index)
        if index < runs - 10:  # the newest ten are still running
            store.finish(run.id, statuses[index % 4])
        ids.append(run.id)
    chunk = max(1, 100_000 // (steps * keys))
    for offset in range(0, runs, chunk):
        rows = ((run_id, step, KEYS[k], rng.random(), 1.7e9 + step)
                for run_id in ids[offset:offset + chunk] for step in range(steps) for k in range(keys))
        store.record_metrics_bulk(rows)
    return store, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--keys", type=int, default=4, choices=range(1, len(KEYS) + 1))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from typer.testing import CliRunner

    from dreamlab.cli import app

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runs" / "dreamlab.db"
        store, build_s = build(path, args.runs, args.steps, args.keys)
        metric_rows = RunStore.query_readonly(path, "SELECT COUNT(*) FROM metrics")[1][0][0]
        size_mb = sum(p.stat().st_size for p in path.parent.glob("dreamlab.db*")) / 2**20
        print(f"built {args.runs} runs, {metric_rows:,} metric rows in {build_s:.1f} s ({size_mb:.0f} MiB)\n")
        runner = CliRunner()
        env = {"COLUMNS": "160"}

        def cli(*argv: str) -> None:
            result = runner.invoke(app, ["runs", *argv, "--db", str(path)], env=env)
            assert result.exit_code == 0, result.output

        last = store.list_runs(limit=1)[0]
        timings = {
            "API list_runs() (1,000 runs)": lambda: store.list_runs(),
            "API list_runs + max_steps + latest train/loss": lambda: (
                ids := [run.id for run in store.list_runs()], store.max_steps(ids),
                store.latest_metrics_for(ids, keys=["train/loss"])),
            "API latest_metrics(one run)": lambda: store.latest_metrics(last.id),
            "API compare(2 runs)": lambda: store.compare(["run-0000", "run-0001"]),
            "API compare(10 runs of a sweep)": lambda: store.compare([f"run-{i:04d}" for i in range(10)]),
            "API metrics(one run, train/loss) (250 points)": lambda: store.metrics(last.id, "train/loss"),
            "CLI runs list (newest 50, the default; in-process)": lambda: cli("list"),
            "CLI runs list --all --json (1,000 runs; in-process)": lambda: cli("list", "--all", "--json"),
            "CLI runs list --all (rich table, 1,000 rows; in-process)": lambda: cli("list", "--all"),
            "CLI runs compare A B (in-process)": lambda: cli("compare", "run-0000", "run-0001"),
            "CLI runs compare --sweep (10 runs, in-process)": lambda: cli("compare", "--sweep", "sweep-0"),
        }
        print("| operation | median |\n|---|---:|")
        for label, fn in timings.items():
            print(f"| {label} | {median_seconds(fn, args.repeats) * 1000:.2f} ms |")
        code = "from dreamlab.cli import main; main()"
        command = [sys.executable, "-c", code, "runs", "list", "--db", str(path)]
        environment = {**os.environ, "COLUMNS": "160"}
        wall = median_seconds(lambda: subprocess.run(command, env=environment, check=True, capture_output=True), 1)
        imports = median_seconds(lambda: subprocess.run([sys.executable, "-c", "import dreamlab.cli"], check=True), 1)
        print(f"| fresh process: dreamlab runs list | {wall * 1000:.0f} ms |")
        print(f"| fresh process: import dreamlab.cli alone | {imports * 1000:.0f} ms |")
        store.close()


if __name__ == "__main__":
    main()
