"""Statuses that tell the truth, end to end: a real worker process (the one torchrun starts, with its
environment), a real SQLite store, thresholds shortened through the recipe so each test takes seconds.

- a worker that sleeps three times the lost threshold inside a checkpoint save stays `running`;
- a worker stopped with SIGSTOP becomes `stalled` (never `lost`), and `running` again after SIGCONT;
- a killed worker becomes `lost`, and `dreamlab runs list` records it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.config import load_recipe
from dreamlab.data.sources import read_source
from dreamlab.store import RunStore
from dreamlab.store.health import Liveness, Thresholds, judge
from dreamlab.train.launcher import write_run_spec
from dreamlab.train.processes import assess

pytestmark = pytest.mark.slow

TINY = ["model.compile=false", "data.micro_batch_size_per_gpu=4", "data.val_files=[]", "model.tiny_hidden_size=32", "model.tiny_num_layers=1",
        "model.tiny_num_heads=2", "model.tiny_intermediate_size=64", "data.max_length=160", "data.truncation=drop",
        "trainer.val_check_interval=null", "model.enable_gradient_checkpointing=false", "trainer.heartbeat_s=0.2"]
# The worker, with its first checkpoint save held for PAUSE seconds (0: not held); markers say when.
CHILD = """
import sys, time
from pathlib import Path
from dreamlab.train import trainer, worker
held, pause = Path(sys.argv[1]), float(sys.argv[2])
real_save = trainer.save_checkpoint
def slow_save(**kwargs):
    if pause and not held.exists():
        held.write_text(str(time.time()))
        time.sleep(pause)
        held.with_suffix(".done").write_text(str(time.time()))
    return real_save(**kwargs)
trainer.save_checkpoint = slow_save
sys.exit(worker.main(sys.argv[3:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 180.0, every: float = 0.1):
    """Poll until `predicate()` is truthy (returned) or fail after a deadline generous for a busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every)


def start_worker(tmp_path: Path, name: str, overrides: list[str], pause: float = 0.0):
    """A store, a run of the tiny model and its one-rank worker process (this test is its launcher)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row.record) + "\n" for row in read_source("builtin:arithmetic")[:64]))
    db = tmp_path / "runs" / "dreamlab.db"
    store = RunStore(db)
    recipe = load_recipe(None, [*TINY, f"data.train_files=[{rows}]", *overrides])
    run = store.create_run(name=name, recipe=recipe.to_dict())
    run_dir = Path(run.run_dir)
    write_run_spec(run_dir, recipe, run.id, db)
    store.mark_started(run.id)  # before the worker exists: its heartbeat thread then records itself
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    with open(run_dir / "train.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "held"), str(pause),
                                    "--run-dir", str(run_dir), "--db", str(db)], env=env, stdout=log, stderr=log)
    return store, run.id, process, run_dir / "train.log"


def stepping(store: RunStore, run_id: int, process: subprocess.Popen, log: Path, steps: int = 3):
    """Wait until the worker reported `steps` optimizer steps through its heartbeat."""
    def progressed():
        assert process.poll() is None, log.read_text()[-3000:]
        run = store.get_run(run_id)
        return run.progress is not None and run.progress.step >= steps and run.worker_pid == process.pid
    wait_for(progressed)


def test_a_worker_sleeping_three_lost_thresholds_in_a_checkpoint_save_stays_running(tmp_path):
    lost_after, pause = 3.0, 9.0
    store, run_id, process, log = start_worker(
        tmp_path, "saving", [f"trainer.lost_after_s={lost_after}", "trainer.total_training_steps=4",
                             "trainer.save_checkpoint_steps=2"], pause=pause)
    held = tmp_path / "held"
    try:
        wait_for(lambda: held.exists() or process.poll() is not None)
        assert held.exists(), log.read_text()[-3000:]
        entered = float(held.read_text())
        beats = []
        while not held.with_suffix(".done").exists():
            run = store.get_run(run_id)
            assert assess(run).status == "running", assess(run)
            # From another host (no process to look at) the heartbeat alone must keep it running.
            assert judge(run, time.time(), Liveness.UNKNOWN, Thresholds.of_run(run)).status == "running"
            beats.append(run.heartbeat)
            time.sleep(0.2)
        assert max(beats) - entered > 2 * lost_after, "the heartbeat thread beat on through the save"
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        process.kill()
        process.wait()
    run = store.get_run(run_id)
    assert run.status == "completed" and run.progress.step == 4


def test_a_worker_stopped_with_sigstop_becomes_stalled_not_lost(tmp_path):
    store, run_id, process, log = start_worker(
        tmp_path, "frozen", ["trainer.lost_after_s=2", "trainer.stall_after_s=4", "trainer.stall_factor=0",
                             "trainer.total_training_steps=100000", "trainer.log_every=50"])
    try:
        stepping(store, run_id, process, log)
        process.send_signal(signal.SIGSTOP)

        def stalled():
            health = assess(store.get_run(run_id))
            assert health.status != "lost", health
            return health if health.status == "stalled" else None
        health = wait_for(stalled)
        assert "no optimizer step for" in health.reason and f"process {process.pid} is stopped" in health.reason
        assert store.get_run(run_id).status == "running"  # derived by the reader, not written
        shown = CliRunner().invoke(app, ["runs", "show", "frozen", "--db", str(store.path)])
        assert shown.exit_code == 0 and "stalled" in shown.output and "no optimizer" in shown.output, shown.output
        shown = CliRunner().invoke(app, ["runs", "show", "frozen", "--json", "--db", str(store.path)])
        assert json.loads(shown.output)["health"]["status"] == "stalled"
        process.send_signal(signal.SIGCONT)
        wait_for(lambda: assess(store.get_run(run_id)).status == "running")
    finally:
        process.kill()
        process.wait()


def test_a_killed_worker_becomes_lost_and_runs_list_records_it(tmp_path):
    store, run_id, process, log = start_worker(
        tmp_path, "killed", ["trainer.lost_after_s=2", "trainer.total_training_steps=100000", "trainer.log_every=50"])
    try:
        stepping(store, run_id, process, log)
    finally:
        process.kill()
        process.wait()
    health = wait_for(lambda: (h := assess(store.get_run(run_id))).status == "lost" and h)
    assert f"process {process.pid} is gone" in health.reason and "no heartbeat for" in health.reason
    assert store.get_run(run_id).status == "running"  # nothing wrote it yet
    listed = CliRunner().invoke(app, ["runs", "list", "--db", str(store.path)])
    assert listed.exit_code == 0 and "killed lost: no heartbeat for" in listed.output, listed.output
    run = store.get_run(run_id)
    assert run.status == "lost" and "is gone" in run.exit_reason
    assert [event.kind for event in store.events(run_id)][-1] == "lost"
