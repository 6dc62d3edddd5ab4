"""Eval jobs without a model: the progress / ETA arithmetic, the store's job rows, lost judgement, bad input."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.evals.jobs import judge
from dreamlab.evals.progress import StoreProgress, eta_seconds, running_accuracy, samples_per_second
from dreamlab.store import SCHEMA_VERSION, RunStore, StoreError
from dreamlab.store.health import Health, Liveness
from dreamlab.store.schema import schema_version
from tests.store_helpers import store_at_version

runner = CliRunner()


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs" / "dreamlab.db") as opened:
        yield opened


def test_progress_arithmetic_exact_values():
    assert running_accuracy(3, 4) == 0.75 and running_accuracy(0, 0) is None
    assert samples_per_second(10, 4.0) == 2.5
    assert samples_per_second(0, 5.0) is None and samples_per_second(3, 0.0) is None
    assert eta_seconds(100, 40, 2.5) == 24.0
    assert eta_seconds(100, 100, None) == 0.0 and eta_seconds(10, 12, 1.0) == 0.0  # done: nothing left
    assert eta_seconds(None, 3, 1.0) is None and eta_seconds(10, 3, None) is None


class _Silent:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start_cell(self, label, total, done):
        self.calls.append(("start", label, total, done))

    def advance(self, count):
        self.calls.append(("advance", count))

    def end_cell(self, record):
        self.calls.append(("end", record))


def _eval_row(store, grid_id: str, steps: int) -> int:
    return store.create_or_resume_eval({"task": "arithmetic", "model": "tiny", "alg": "entropy", "steps": steps,
                                        "max_new_tokens": 8, "n_samples": 4, "grid_id": grid_id}).id


def _samples(idxs, correct):
    return [{"idx": i, "generation": "x", "correct": i in correct} for i in idxs]


def test_store_progress_sums_the_grid_and_rates_this_session(store):
    job = store.create_eval_job(["--limit", "4"], detached=False)
    store.mark_eval_job_started(job.id, pid=os.getpid(), pgid=None)
    store.describe_eval_job(job.id, run_id=None, model="tiny", task="arithmetic", grid_id="g1", n_total=8)
    first, second = _eval_row(store, "g1", 4), _eval_row(store, "g1", 8)
    other = _eval_row(store, "g2", 16)  # another grid: not this job's
    store.record_eval_samples(other, _samples(range(4), {0, 1, 2, 3}))
    store.record_eval_samples(first, _samples([0, 1], {1}))  # done before this session (a resume)
    now = [100.0]
    inner = _Silent()
    progress = StoreProgress(store, job.id, inner, clock=lambda: now[0])
    progress.start_cell("entropy × 4 steps", 4, 2)
    assert progress.rate() is None
    now[0] = 104.0
    store.record_eval_samples(first, _samples([2, 3], {2, 3}))
    progress.advance(2)
    now[0] = 105.0
    store.record_eval_samples(second, _samples([0, 1, 2], {0}))
    progress.advance(3)
    after = store.get_eval_job(job.id)
    assert (after.n_done, after.n_correct, after.n_total) == (7, 4, 8)
    assert after.samples_per_s == 1.0  # 5 samples in 5 s (the 2 resumed ones took no time here)
    assert eta_seconds(after.n_total, after.n_done, after.samples_per_s) == 1.0
    assert running_accuracy(after.n_correct, after.n_done) == 4 / 7
    assert inner.calls == [("start", "entropy × 4 steps", 4, 2), ("advance", 2), ("advance", 3)]
    assert store.finish_eval_job(job.id, "completed") is True
    assert store.get_eval_job(job.id).eval_ids == [first, second]


def test_job_lifecycle_lost_revival_and_endings(store):
    job = store.create_eval_job(["--limit", "2"], detached=True, task="arithmetic")
    assert job.status == "queued" and job.command == ["--limit", "2"] and job.detached
    with pytest.raises(StoreError, match="not queued"):
        store.mark_eval_job_started(job.id + 1, pid=1, pgid=1)
    started = store.mark_eval_job_started(job.id, pid=4242, pgid=4242, log_path="/x/eval.log")
    assert (started.status, started.pid, started.pgid, started.log_path) == ("running", 4242, 4242, "/x/eval.log")
    began = store.begin_eval_job(job.id, host="here", pid=4243, pid_started=12.5)
    assert (began.worker_pid, began.worker_started, began.host) == (4243, 12.5, "here")
    store.describe_eval_job(job.id, run_id=None, model="tiny", task="arithmetic", grid_id="g", n_total=4)
    row = _eval_row(store, "g", 4)
    assert store.mark_eval_job_lost(job.id, "no heartbeat") is True
    assert store.get_eval(row).status == "interrupted"  # a lost job's cells are not left running
    lost = store.get_eval_job(job.id)
    assert lost.status == "lost" and lost.exit_reason == "no heartbeat" and lost.ended == lost.heartbeat
    store.eval_job_heartbeat(job.id)  # it was only slow: back to running
    assert store.get_eval_job(job.id).status == "running" and store.get_eval_job(job.id).ended is None
    assert store.finish_eval_job(job.id, "stopped", "by user") is True
    assert store.finish_eval_job(job.id, "completed") is False  # already ended
    with pytest.raises(StoreError, match="already ended"):
        store.begin_eval_job(job.id, host="here", pid=1, pid_started=1.0)
    with pytest.raises(StoreError, match="cannot end an eval job as 'lost'"):
        store.finish_eval_job(job.id, "lost")
    assert [j.id for j in store.list_eval_jobs(status="stopped")] == [job.id]
    assert store.list_eval_jobs(status="running") == []
    with pytest.raises(StoreError, match="unknown eval job status"):
        store.list_eval_jobs(status="done")
    with pytest.raises(StoreError, match="no eval job with id 99"):
        store.get_eval_job(99)


def _running(heartbeat: float, **fields):
    from dreamlab.store import EvalJob

    return EvalJob(id=1, status="running", pid=10, started=0.0, created=0.0, heartbeat=heartbeat, **fields)


def test_judge_reads_a_silent_job_lost_only_when_its_process_is_not_seen_alive():
    job = _running(heartbeat=100.0, worker_pid=11)
    assert judge(job, 161.0, Liveness.GONE).status == "lost"
    assert judge(job, 161.0, Liveness.GONE).reason == "no heartbeat for 61 s (threshold 60 s); process 11 is gone"
    assert judge(job, 161.0, Liveness.UNKNOWN).status == "lost"
    assert judge(job, 161.0, Liveness.ALIVE).status == "running"  # silent but alive: a long batch
    assert judge(job, 150.0, Liveness.GONE).status == "running"  # not silent long enough yet
    assert judge(job, 161.0, Liveness.GONE, lost_after_s=100.0).status == "running"
    assert judge(job, 110.0, Liveness.STOPPED).reason == "process 11 is stopped (SIGSTOP?)"
    from dataclasses import replace

    assert judge(replace(job, status="completed"), 1e9, Liveness.GONE).status == "completed"


def test_a_v9_store_migrates_to_eval_jobs(tmp_path):
    path = store_at_version(tmp_path / "v9.db", 9)
    with RunStore(path) as store:
        assert store.list_eval_jobs() == []
        assert store.create_eval_job([], detached=False).id == 1
    check = sqlite3.connect(path)
    assert schema_version(check) == SCHEMA_VERSION
    with pytest.raises(sqlite3.IntegrityError):
        check.execute("INSERT INTO eval_jobs (status, created) VALUES ('done', 0)")
    check.close()


def test_a_v11_store_s_eval_jobs_read_local_after_v12_and_a_slurm_job_reads_slurm_s_state(tmp_path):
    path = store_at_version(tmp_path / "v11.db", 11, "INSERT INTO eval_jobs (status, command, created) VALUES ('completed', '[]', 1.0)")
    with RunStore(path) as store:
        (old,) = store.list_eval_jobs()
        assert (old.launcher, old.job_id, old.folder, old.reason) == ("local", None, None, None)
        job = store.create_eval_job(["--limit", "2"], detached=True, launcher="slurm", folder=str(tmp_path))
        queued = store.update_slurm_eval_job(job.id, job_id="5", reason="Slurm job pending: Priority (job 5)")
        assert judge(queued, 1e9, Liveness.UNKNOWN) == Health("queued", "Slurm job pending: Priority (job 5)")
        running = store.update_slurm_eval_job(job.id, status="running", nodes="n1", reason=None, started=2.0)
        assert judge(running, 1e9, Liveness.UNKNOWN) == Health("running", "Slurm job 5 on n1")  # never lost
        assert store.finish_eval_job(job.id, "stopped", "cancelled", when=3.0)
        ended = store.get_eval_job(job.id)
        assert (ended.status, ended.ended, ended.exit_reason, ended.host) == ("stopped", 3.0, "cancelled", None)
        assert judge(ended, 1e9, Liveness.UNKNOWN) == Health("stopped", None)
    check = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        check.execute("INSERT INTO eval_jobs (status, created, launcher) VALUES ('queued', 0, 'k8s')")
    check.close()


def test_evals_commands_refuse_bad_input(tmp_path, store):
    db = str(store.path)
    job = store.create_eval_job([], detached=False)
    store.mark_eval_job_started(job.id, pid=os.getpid(), pgid=None)
    store.finish_eval_job(job.id, "completed")
    cases = [(["evals", "stop", str(job.id)], f"eval job {job.id} is not running (status completed)"),
             (["evals", "stop", "77"], "no eval job with id 77"),
             (["evals", "list", "--status", "done"], "unknown eval job status 'done'"),
             (["evals", "list", "--db", str(tmp_path / "none.db")], "no run store at"),
             (["eval", "--run", "ghost", "--detach"], "no run named ghost"),
             (["eval", "--model", "tiny", "--alg", "greedy", "--detach"], "alg must be one of origin"),
             (["eval", "--model", "tiny", "--task", "nope", "--detach"], "unknown task 'nope'")]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--db", db] if "--db" not in args else args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip().startswith("error:") and message in result.output, (args, result.output)
    assert [j.id for j in store.list_eval_jobs()] == [job.id]  # the refused --detach started and recorded nothing
    listed = runner.invoke(app, ["evals", "list", "--db", db, "--json"])
    assert listed.exit_code == 0 and [row["status"] for row in json.loads(listed.stdout)] == ["completed"]


def test_stopping_a_foreground_job_whose_process_is_gone_marks_it_stopped(store):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    job = store.create_eval_job([], detached=False)
    store.mark_eval_job_started(job.id, pid=int(gone.stdout), pgid=None)
    result = runner.invoke(app, ["evals", "stop", str(job.id), "--db", str(store.path)])
    assert result.exit_code == 0, result.output
    assert "already gone" in result.output and store.get_eval_job(job.id).status == "stopped"
