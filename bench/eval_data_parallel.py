"""Data-parallel evals: the same `dreamlab eval` with 1 process and with 2 (torchrun, gloo), same samples, wall ratio.

Each repeat runs both commands, alternating which goes first, each into a fresh store; the model is the
tiny architecture with peaky random weights (every problem gets its own generation). Every process gets
`--threads-per-process` threads (torchrun's default is 1), so the ratio is that of the processes alone.

Run: python -m bench.eval_data_parallel [--limit 32] [--steps 16] [--batch-size 8] [--repeats 3] [--threads-per-process 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dreamlab.models import build_char_tokenizer, build_tiny_model
from dreamlab.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def run_eval(model: Path, db: Path, args: argparse.Namespace, processes: int) -> tuple[float, float]:
    """Wall seconds of the whole command and of the eval itself (the cells' started -> ended)."""
    command = [sys.executable, "-m", "dreamlab", "eval", "--model", str(model), "--alg", "entropy,origin",
               "--steps", str(args.steps), "--max-new-tokens", str(args.steps), "--limit", str(args.limit),
               "--batch-size", str(args.batch_size), "--db", str(db), "--json"]
    if processes > 1:
        command += ["--nproc-per-node", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads_per_process)}
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - started
    records = RunStore(db).list_evals()
    return wall, sum(r.ended - r.started for r in records)


def samples(db: Path) -> list[list[dict]]:
    """Every cell's samples without their timing."""
    store = RunStore(db)
    return [[{k: v for k, v in s.items() if k != "seconds"} for s in store.eval_samples(r.id)] for r in store.list_evals()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads-per-process", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "model"
        build_tiny_model(seed=0, initializer_range=0.1).save_pretrained(model)
        build_char_tokenizer().save_pretrained(model)
        times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
        identical = True
        for repeat in range(args.repeats):
            order = (1, 2) if repeat % 2 == 0 else (2, 1)
            dbs = {}
            for processes in order:
                dbs[processes] = Path(folder) / f"r{repeat}-p{processes}.db"
                times[processes].append(run_eval(model, dbs[processes], args, processes))
            identical &= samples(dbs[1]) == samples(dbs[2])
    print(f"{args.limit} problems x 2 cells (entropy, origin), {args.steps} steps = new tokens, batch {args.batch_size}, "
          f"{args.repeats} repeats, {args.threads_per_process} thread(s) per process")
    for processes, measured in times.items():
        walls, evals = [w for w, _ in measured], [e for _, e in measured]
        print(f"  {processes} process{'es' if processes > 1 else ''}: command {statistics.median(walls):6.1f} s "
              f"(range {min(walls):.1f}-{max(walls):.1f}), eval {statistics.median(evals):6.1f} s "
              f"(range {min(evals):.1f}-{max(evals):.1f})")
    for repeat, (one, two) in enumerate(zip(times[1], times[2])):
        print(f"  repeat {repeat}: eval {one[1]:.1f} s / {two[1]:.1f} s = x{one[1] / two[1]:.2f}, "
              f"command {one[0]:.1f} s / {two[0]:.1f} s = x{one[0] / two[0]:.2f}")
    ratios = [one[1] / two[1] for one, two in zip(times[1], times[2])]
    walls = [one[0] / two[0] for one, two in zip(times[1], times[2])]
    print(f"  1 / 2 processes: eval x{min(ratios):.2f}-{max(ratios):.2f}, whole command x{min(walls):.2f}-{max(walls):.2f}")
    print(f"  identical samples (every column but seconds): {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
