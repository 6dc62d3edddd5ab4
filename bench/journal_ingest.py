"""What a Slurm job's journal costs, side by side with writing the store directly (a local run).

For N steps of rank-0 records (one metrics record a step, a heartbeat every 10), measured in one run:
the job side (`Journal.write` per record against `StoreSink.write`: a SQLite transaction per record),
and the reader side (one `ingest_run` of the whole journal, and a second, empty one). Both end with
the same rows, checked.

    python -m bench.journal_ingest --steps 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dreamlab.store import RunStore
from dreamlab.store.ingest import ingest_run
from dreamlab.store.journal import JOURNAL_NAME, Journal
from dreamlab.train.sinks import StoreSink

VALUES = {"train/loss": 1.0, "train/lr": 1e-5, "train/grad_norm": 0.5, "train/tokens_per_s": 1000.0,
          "train/step_seconds": 0.2, "train/epoch": 0.1}


def records(steps: int):
    """Rank 0's records for `steps` optimizer steps."""
    for step in range(1, steps + 1):
        yield "metrics", {"step": step, "values": {**VALUES, "train/loss": 1.0 / step}}
        if step % 10 == 0:
            yield "heartbeat", {"progress": [step, time.time(), 0.2]}


def main() -> None:
    """Print the job-side and reader-side times and their ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "dreamlab.db")
        direct = store.create_run(name="direct")
        journaled = store.mark_submitted(store.create_run(name="journaled").id, "1")
        sink = StoreSink(store.path, direct.id)
        started = time.perf_counter()
        for kind, fields in records(args.steps):
            sink.write(kind, **fields)
        direct_s = time.perf_counter() - started
        sink.close()
        writer = Journal(Path(journaled.run_dir) / JOURNAL_NAME)
        started = time.perf_counter()
        for kind, fields in records(args.steps):
            writer.write(kind, **fields)
        writer.close()
        journal_s = time.perf_counter() - started
        started = time.perf_counter()
        applied = ingest_run(store, journaled)
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        again = ingest_run(store, journaled)
        empty_s = time.perf_counter() - started
        same = ([(p.step, p.key, p.value) for p in store.metrics(direct.id)]
                == [(p.step, p.key, p.value) for p in store.metrics(journaled.id)])
        size = (Path(journaled.run_dir) / JOURNAL_NAME).stat().st_size
    lines = applied
    print(f"{args.steps} steps, {lines} records, journal {size / 1e6:.2f} MB; same metric rows: {same}; "
          f"second ingest applied {again}")
    print(f"job side:    store writes {direct_s:.2f} s ({1e6 * direct_s / lines:.0f} us/record), "
          f"journal writes {journal_s:.3f} s ({1e6 * journal_s / lines:.0f} us/record): "
          f"{direct_s / journal_s:.0f}x less time in the job")
    print(f"reader side: one ingest of the whole journal {ingest_s:.2f} s ({1e6 * ingest_s / lines:.0f} us/record, "
          f"{ingest_s / direct_s:.2f}x the direct writes), an ingest with nothing new {1e3 * empty_s:.1f} ms")


if __name__ == "__main__":
    main()
