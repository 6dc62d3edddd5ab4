"""Trainer throughput (tokens/s) on the tiny preset, 1 vs 2 CPU processes, and the metrics sink's cost.

Part 1 runs `dreamlab train --foreground` with 1 and then 2 processes (same global batch, same steps)
and reads the tokens/s each recorded. Part 2 trains one run in-process and alternates blocks of
steps with the SQLite metrics sink on and off (one record_metrics call per step when on), comparing
the wall time per step of the two kinds of block.
Run: python -m bench.trainer_throughput
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.config import load_recipe
from dreamlab.store import RunStore
from dreamlab.train.trainer import Trainer

COMMON = ["trainer.total_training_steps=60", "trainer.val_check_interval=null", "trainer.log_every=1",
          "data.perbatch_cutoff_type=longest"]


def throughput(folder: Path) -> None:
    db = folder / "runs" / "dreamlab.db"
    results = {}
    for procs, micro in ((1, 64), (2, 32)):
        name = f"procs-{procs}"
        out = CliRunner().invoke(app, ["train", *COMMON, f"trainer.nproc_per_node={procs}",
                                       f"data.micro_batch_size_per_gpu={micro}", "--foreground", "--name", name,
                                       "--db", str(db)])
        assert out.exit_code == 0, out.output
        store = RunStore(db)
        points = [p.value for p in store.metrics(store.get_run(name).id, key="train/tokens_per_s")][10:]
        results[procs] = statistics.median(points)
    print("| processes | micro batch | global batch | tokens/s (median, steps 11-60) |")
    print("|---:|---:|---:|---:|")
    for procs, micro in ((1, 64), (2, 32)):
        print(f"| {procs} | {micro} | 64 | {results[procs]:.0f} |")
    print(f"2 processes / 1 process: {results[2] / results[1]:.2f}x")


def sink_overhead(folder: Path, block: int = 10, blocks: int = 12) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(os.cpu_count() or 1)
    store = RunStore(folder / "sink.db")
    run = store.create_run(name="sink")
    store.mark_started(run.id)
    stamps: list[tuple[int, float]] = []

    def sink(step: int, values: dict[str, float]) -> None:
        if step and (step // block) % 2 == 0:
            store.record_metrics(run.id, step, values)
        stamps.append((step, time.perf_counter()))

    recipe = load_recipe(None, [*COMMON, f"trainer.total_training_steps={block * blocks}"])
    trainer = Trainer(recipe, folder / "sink-run", metrics=sink)
    trainer.setup()
    trainer.fit()
    dist.destroy_process_group()
    on, off = [], []
    for (step, t0), (_, t1) in zip(stamps[1:], stamps[2:]):
        (on if ((step + 1) // block) % 2 == 0 else off).append(t1 - t0)
    on_s, off_s = statistics.median(on), statistics.median(off)
    print(f"step time with the SQLite sink {on_s * 1e3:.1f} ms, without {off_s * 1e3:.1f} ms: "
          f"overhead {100 * (on_s - off_s) / off_s:+.1f}% ({len(on)} vs {len(off)} steps, alternating blocks of {block})")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        throughput(Path(folder))
        sink_overhead(Path(folder))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
