"""Detached evals end to end on the tiny model: run to completion past the parent's exit, stop and resume, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.store import RunStore
from dreamlab.train.processes import group_alive

pytestmark = pytest.mark.slow
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
# Long enough to be caught running (8 batches), short enough to finish in seconds.
# Far more problems than any machine finishes between the test seeing 2 done and stopping or killing the job.
SLOW_GRID = ["--model", "tiny", "--steps", "16", "--max-new-tokens", "16", "--limit", "300", "--batch-size", "2"]


def _wait(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def _detach(db: Path, *args: str) -> dict:
    """`dreamlab eval ARGS --detach --json` in a separate process that exits at once; the started job."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    parent = subprocess.run([sys.executable, "-c", "from dreamlab.cli import main; main()", "eval", *args, "--detach",
                             "--json", "--db", str(db)], capture_output=True, text=True, env=env, cwd=db.parent.parent, timeout=120)
    assert parent.returncode == 0, parent.stderr
    return json.loads(parent.stdout)


def test_a_detached_eval_outlives_its_parent_and_records_its_progress(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    started = _detach(db, "--model", "tiny", "--steps", "4", "--max-new-tokens", "8", "--limit", "6", "--batch-size", "2")
    pid = started["pid"]
    assert started["status"] == "running" and started["pgid"] == pid and started["detached"]
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: no terminal, no parent's group
    assert started["log_path"] == str(db.parent / "evals" / str(started["id"]) / "eval.log")
    store = RunStore(db)
    _wait(lambda: store.get_eval_job(started["id"]).status != "running")
    job = store.get_eval_job(started["id"])
    assert job.status == "completed", (job, Path(job.log_path).read_text())
    assert (job.n_done, job.n_total, job.task, job.model) == (6, 6, "arithmetic", "tiny")
    assert job.worker_pid == pid and job.samples_per_s > 0 and job.progress_time >= job.started
    assert job.command == ["--model", "tiny", "--steps", "4", "--max-new-tokens", "8", "--limit", "6", "--batch-size", "2"]
    [record] = [store.get_eval(eval_id) for eval_id in job.eval_ids]
    assert record.status == "completed" and record.n_done == 6 and record.grid_id == job.grid_id
    assert job.n_correct == record.n_correct and len(store.eval_samples(record.id)) == 6
    log = Path(job.log_path).read_text()
    assert "arithmetic: 6 problems" in log and f"eval ids {record.id}" in log
    listed = runner.invoke(app, ["evals", "list", "--db", str(db), "--json"])
    row = json.loads(listed.stdout)[0]
    assert (row["status"], row["n_done"], row["n_total"], row["eta_s"]) == ("completed", 6, 6, None)


def test_evals_stop_ends_it_stopped_with_its_samples_kept_and_a_rerun_resumes(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    started = _detach(db, *SLOW_GRID)
    store = RunStore(db)
    _wait(lambda: store.get_eval_job(started["id"]).n_done >= 2)
    running = runner.invoke(app, ["evals", "list", "--db", str(db), "--json"])
    row = json.loads(running.stdout)[0]
    assert row["status"] == "running" and row["n_total"] == 300 and 0 <= row["accuracy"] <= 1
    assert row["samples_per_s"] > 0 and row["eta_s"] > 0
    stopped = runner.invoke(app, ["evals", "stop", str(started["id"]), "--db", str(db)])
    assert stopped.exit_code == 0, stopped.output
    assert "sent SIGTERM to group" in stopped.output and "samples kept" in stopped.output
    assert not group_alive(started["pgid"])
    job = store.get_eval_job(started["id"])
    assert job.status == "stopped" and "SIGTERM" in job.exit_reason and 2 <= job.n_done < 300
    [eval_id] = job.eval_ids
    record = store.get_eval(eval_id)
    kept = {s["idx"]: s["seconds"] for s in store.eval_samples(eval_id)}
    assert record.status == "interrupted" and record.n_done == job.n_done == len(kept)

    rerun = runner.invoke(app, ["eval", *job.command, "--db", str(db)])  # the foreground rerun resumes the same row
    assert rerun.exit_code == 0, rerun.output
    after = store.get_eval(eval_id)
    assert after.status == "completed" and after.n_done == 300
    again = {s["idx"]: s["seconds"] for s in store.eval_samples(eval_id)}
    assert {idx: again[idx] for idx in kept} == kept  # the finished samples were not redone
    newest = store.list_eval_jobs()[0]
    assert newest.id != job.id and not newest.detached and newest.status == "completed"
    assert (newest.n_done, newest.n_total, newest.eval_ids) == (300, 300, [eval_id])


def test_an_eval_killed_with_sigkill_reads_lost(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    started = _detach(db, *SLOW_GRID)
    store = RunStore(db)
    _wait(lambda: store.get_eval_job(started["id"]).n_done >= 2)
    os.killpg(started["pgid"], signal.SIGKILL)
    _wait(lambda: not group_alive(started["pgid"]), timeout=30)
    listed = runner.invoke(app, ["evals", "list", "--status", "lost", "--lost-after", "0", "--db", str(db), "--json"])
    [row] = json.loads(listed.stdout)  # read lost and listed by that status in the same call
    assert row["status"] == "lost" and f"process {started['pid']} is gone" in row["reason"]
    job = store.get_eval_job(started["id"])
    assert job.status == "lost" and job.ended == job.heartbeat
    assert [store.get_eval(i).status for i in job.eval_ids] == ["interrupted"]
    refused = runner.invoke(app, ["evals", "stop", str(job.id), "--db", str(db)])  # lost: stoppable, its processes gone
    assert refused.exit_code == 0 and store.get_eval_job(job.id).status == "stopped"
