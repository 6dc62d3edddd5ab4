"""Store under load: 8 writer processes and the console's readers on one SQLite file.

    python -m bench.store_load [--seconds 60] [--writers 8] [--readers 2]

Half the writers behave like trainers (a run each; one transaction per step with a burst of metric
keys, a heartbeat between bursts), half like evaluators (an eval row each; batches of sample rows).
Reader processes run the console's refresh queries in a loop (runs table, a run's curves, the
eval list) and time each. Every writer counts what it committed; at the end the rows in the store
are counted and compared, "database is locked" errors are counted wherever they surface, and the
readers' latency percentiles are reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

KEYS = [f"train/k{i}" for i in range(12)]


def _locked(error: BaseException) -> bool:
    return "locked" in str(error) or "busy" in str(error)


def trainer_writer(db: str, index: int, seconds: float, out: Any) -> None:
    """A run's metric bursts: one transaction per step with 12 keys, a heartbeat after each."""
    from dreamlab.store import RunStore

    store = RunStore(db)
    run = store.create_run(name=f"load-{index}", recipe={"optim": {"lr": 1e-3}})
    store.mark_started(run.id, pid=0, pgid=0)
    committed, locked, other = 0, 0, []
    step, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        step += 1
        try:
            store.record_metrics(run.id, step, {key: step * 0.001 + i for i, key in enumerate(KEYS)})
            committed += len(KEYS)
            store.heartbeat(run.id)
        except Exception as error:  # noqa: BLE001 - counted, never hidden
            locked += _locked(error)
            other += [] if _locked(error) else [repr(error)]
    store.finish(run.id, "completed")
    out.put({"kind": "metrics", "run_id": run.id, "committed": committed, "locked": locked, "errors": other[:3]})


def eval_writer(db: str, index: int, seconds: float, out: Any) -> None:
    """An eval's sample rows, 4 per transaction, with unique idx."""
    from dreamlab.store import RunStore

    store = RunStore(db)
    record = store.create_or_resume_eval({"model": f"load-{index}", "task": "load", "alg": "entropy", "steps": 8,
                                          "max_new_tokens": 8})
    committed, locked, other = 0, 0, []
    idx, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        rows = [{"idx": idx + i, "question": "q" * 40, "gold": "1", "generation": "g" * 200, "correct": i % 2,
                 "nfe": 8, "seconds": 0.01} for i in range(4)]
        try:
            store.record_eval_samples(record.id, rows)
            committed += len(rows)
            idx += len(rows)
        except Exception as error:  # noqa: BLE001 - counted, never hidden
            locked += _locked(error)
            other += [] if _locked(error) else [repr(error)]
    store.finish_eval(record.id, "completed")
    out.put({"kind": "samples", "eval_id": record.id, "committed": committed, "locked": locked, "errors": other[:3]})


def reader(db: str, seconds: float, out: Any) -> None:
    """The console's refresh queries in a loop; latency of each refresh."""
    from dreamlab.store import RunStore
    from dreamlab.tui.queries import load_curves, load_runs

    store = RunStore(db)
    latencies, locked, other = [], 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            rows = load_runs(store, lost_after_s=600)
            if rows:
                load_curves(store, rows[0].id, ["train/k0", "train/k1"])
            store.list_evals()
            latencies.append(time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - counted, never hidden
            locked += _locked(error)
            other += [] if _locked(error) else [repr(error)]
        time.sleep(0.05)  # the console polls; it does not spin
    out.put({"kind": "reader", "latencies": latencies, "locked": locked, "errors": other[:3]})


def run_load(db: Path, seconds: float, writers: int = 8, readers: int = 2) -> dict[str, Any]:
    """Run the load, then count: committed vs stored rows, locked errors, reader latency percentiles."""
    from dreamlab.store import RunStore

    RunStore(db).close()  # create and migrate once, before the crowd arrives
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=trainer_writer if i % 2 == 0 else eval_writer, args=(str(db), i, seconds, out))
             for i in range(writers)]
    procs += [context.Process(target=reader, args=(str(db), seconds, out)) for _ in range(readers)]
    for proc in procs:
        proc.start()
    reports = [out.get(timeout=seconds + 300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    conn = sqlite3.connect(db)
    stored_metrics = {run_id: n for run_id, n in conn.execute("SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id")}
    distinct_metrics = conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT run_id, step, key FROM metrics)").fetchone()[0]
    stored_samples = {e: n for e, n in conn.execute("SELECT eval_id, COUNT(*) FROM eval_samples GROUP BY eval_id")}
    distinct_samples = conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT eval_id, idx FROM eval_samples)").fetchone()[0]
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    writes = [r for r in reports if r["kind"] != "reader"]
    latencies = sorted(t for r in reports if r["kind"] == "reader" for t in r["latencies"])

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else None

    lost = {f"run {r['run_id']}": r["committed"] - stored_metrics.get(r["run_id"], 0) for r in writes if r["kind"] == "metrics"}
    lost |= {f"eval {r['eval_id']}": r["committed"] - stored_samples.get(r["eval_id"], 0) for r in writes if r["kind"] == "samples"}
    return {
        "seconds": seconds, "writers": writers, "readers": readers,
        "metric_rows_committed": sum(r["committed"] for r in writes if r["kind"] == "metrics"),
        "metric_rows_stored": sum(stored_metrics.values()), "metric_rows_distinct": distinct_metrics,
        "sample_rows_committed": sum(r["committed"] for r in writes if r["kind"] == "samples"),
        "sample_rows_stored": sum(stored_samples.values()), "sample_rows_distinct": distinct_samples,
        "lost_per_writer": lost,
        "locked_errors": sum(r["locked"] for r in reports),
        "other_errors": [e for r in reports for e in r["errors"]],
        "reader_refreshes": len(latencies),
        "reader_ms_p50": statistics.median(latencies) * 1000 if latencies else None,
        "reader_ms_p99": pct(0.99), "reader_ms_max": latencies[-1] * 1000 if latencies else None,
        "integrity": integrity,
    }


def main() -> None:
    """Command-line entry: print the report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = run_load(Path(folder) / "runs" / "dreamlab.db", args.seconds, args.writers, args.readers)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
