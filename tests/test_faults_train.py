"""Faults during training: kill -9 twenty times (half inside a checkpoint write), a full disk while checkpointing.

The kill cycles fork a one-rank worker from a forkserver that has already imported torch and
dreamlab, so each cycle costs the run's setup, not an interpreter start: the process killed is the
same `dreamlab.train.worker.main` torchrun would start, with torchrun's environment variables.
A kill meant to land inside a checkpoint write is made to land there: the checkpoint writer's test
hook (DREAMLAB_TEST_HOLD_CHECKPOINT_WRITE) holds it, folder written but not renamed, until the kill.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.config import load_recipe
from dreamlab.data.sources import read_source
from dreamlab.store import RunStore
from dreamlab.train.checkpoint import HOLD_WRITE_ENV, complete_checkpoints
from dreamlab.models.loading import load_model_and_tokenizer
from dreamlab.train.launcher import write_run_spec
from dreamlab.train.processes import assess

pytestmark = pytest.mark.slow
runner = CliRunner()

TINY = ["model.compile=false", "data.micro_batch_size_per_gpu=4", "data.val_size=8", "model.tiny_hidden_size=32", "model.tiny_num_layers=1",
        "model.tiny_num_heads=2", "model.tiny_intermediate_size=64", "data.max_length=160", "data.truncation=drop",
        "trainer.log_every=1", "trainer.val_check_interval=null", "trainer.save_checkpoint_steps=1",
        "trainer.max_checkpoints=2", "model.enable_gradient_checkpointing=false"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_one_rank(run_dir: str, db: str, resume: bool, port: int, hold_marker: str | None = None) -> None:
    """Child body: torchrun's environment for a 1-process run, output to train.log, then the worker.

    With `hold_marker`, the first checkpoint write creates that file and blocks before its rename.
    """
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if hold_marker:
        os.environ[HOLD_WRITE_ENV] = hold_marker
    log = os.open(Path(run_dir) / "train.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    from dreamlab.train import worker

    os._exit(worker.main(["--run-dir", run_dir, "--db", db, *(["--resume"] if resume else [])]))


@pytest.fixture(scope="module")
def forkserver():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "dreamlab.train.worker", "tests.test_faults_train"])
    return context


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def resumed_from(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if line.startswith(("resumed from step", "no checkpoint"))]


def small_rows(tmp_path: Path, count: int = 64) -> Path:
    """The first `count` built-in arithmetic rows as a file: a run's setup then takes milliseconds, not seconds."""
    rows = tmp_path / "rows.jsonl"
    with rows.open("w") as out:
        for row in read_source("builtin:arithmetic")[:count]:
            out.write(json.dumps(row.record) + "\n")
    return rows


def wait_until(predicate, timeout: float = 300.0, interval: float = 0.01) -> None:
    """Poll `predicate` until true; a generous deadline, since a busy machine is slow, not wrong."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def test_kill_minus_9_twenty_times_half_of_them_mid_checkpoint_then_resume_to_the_end(tmp_path, forkserver):
    rng = random.Random(int(os.environ.get("DREAMLAB_FAULT_SEED", "8")))
    db = tmp_path / "runs" / "dreamlab.db"
    store = RunStore(db)
    total = 60
    rows = small_rows(tmp_path)
    recipe = load_recipe(None, [*TINY, f"trainer.total_training_steps={total}", f"data.train_files=[{rows}]",
                                "data.val_files=[]"])
    run = store.create_run(name="victim", recipe=recipe.to_dict())
    run_dir = Path(run.run_dir)
    write_run_spec(run_dir, recipe, run.id, db)
    log = run_dir / "train.log"
    log.touch()
    mid_write = 0
    expectations: list[str] = []  # what each resumed cycle must say it resumed from
    for cycle in range(21):
        newest_before = complete_checkpoints(run_dir)
        # Even cycles are held inside their first checkpoint write; odd ones are killed at a random moment.
        marker = tmp_path / f"held-{cycle}" if cycle % 2 == 0 and cycle < 20 else None
        child = forkserver.Process(target=run_one_rank, args=(str(run_dir), str(db), True, _free_port(),
                                                              str(marker) if marker else None))
        child.start()
        store.mark_started(run.id, pid=child.pid, pgid=child.pid)
        start_step = newest_before[-1][0] if newest_before else 0
        expectations.append(f"resumed from step {start_step}" if newest_before else "no checkpoint: starting fresh")
        if cycle == 20:  # the last one runs to the end
            child.join(timeout=900)
            assert child.exitcode == 0, log.read_text()[-3000:]
            break
        if marker is not None:
            wait_until(lambda: not child.is_alive() or (marker.is_file() and marker.read_text()))
        else:
            wait_until(lambda: not child.is_alive() or len(resumed_from(log)) > cycle)  # setup done, training
            time.sleep(rng.uniform(0, 1.5))
        child.kill()
        child.join(timeout=30)
        assert child.exitcode in (-9, 0), f"cycle {cycle}: exit code {child.exitcode}\n{log.read_text()[-3000:]}"
        if marker is not None and child.exitcode == -9:  # killed inside the write: only a .tmp folder is left
            held = Path(marker.read_text())
            assert held.name == f"step-{start_step + 1:06d}.tmp" and (held / "trainer.json").is_file()
            assert complete_checkpoints(run_dir) == newest_before
            mid_write += 1

        assert integrity(db) == "ok"
        reopened = RunStore(db)
        assert [r.name for r in reopened.list_runs()] == ["victim"]
        if child.exitcode == -9:
            health = assess(reopened.get_run("victim"), lost_after_s=0.0, now=time.time() + 1)
            assert health.status == "lost", health
            assert reopened.mark_lost(run.id, health.reason) and reopened.get_run("victim").status == "lost"
        else:  # it finished before the signal landed: its true final status
            assert reopened.get_run("victim").status == "completed"
            break
        reopened.close()
        for newest_step, newest in complete_checkpoints(run_dir)[-1:]:  # none if killed before the first one
            assert json.loads((newest / "trainer.json").read_text())["step"] == newest_step
            load_model_and_tokenizer(str(newest / "model"), device="cpu")
    assert resumed_from(log) == expectations  # every start continued from the newest complete checkpoint
    assert mid_write >= 1
    final = store.get_run("victim")
    assert final.status == "completed", final.exit_reason
    steps = sorted({p.step for p in store.metrics(run.id, key="train/loss")})
    assert steps == list(range(1, total + 1))
    assert complete_checkpoints(run_dir)[-1][0] == total


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_while_checkpointing_fails_the_run_keeping_the_last_checkpoint_and_the_store(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    folder = tmp_path / "runs" / "full"
    if not _mount_tmpfs(folder, "64m"):
        pytest.skip("mount -t tmpfs refused here (needs root); test_checkpoint_write_errors covers ENOSPC by injection")
    try:
        store = RunStore(db)
        rows = small_rows(tmp_path)
        args = [*TINY, "trainer.total_training_steps=400", "trainer.save_checkpoint_steps=10", f"data.train_files=[{rows}]",
                "data.val_files=[]", "--name", "full", "--db", str(db)]
        started = runner.invoke(app, ["train", *args])
        assert started.exit_code == 0, started.output
        first = folder / "checkpoints" / "step-000010"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (first / "trainer.json").is_file():
            time.sleep(0.05)
        # Shrink the disk to what is used plus a little: the step-20 checkpoint cannot fit.
        used = int(subprocess.run(["du", "-sk", str(folder)], capture_output=True, text=True).stdout.split()[0])
        subprocess.run(["mount", "-o", f"remount,size={used + 200}k", str(folder)], check=True)
        while time.monotonic() < deadline + 120 and store.get_run("full").status == "running":
            time.sleep(0.2)
        run = store.get_run("full")
        assert run.status == "failed", (run.status, run.exit_reason)
        reason = run.exit_reason or ""
        assert "disk full" in reason and str(folder / "checkpoints") in reason, reason
        kept = complete_checkpoints(folder)
        assert [step for step, _ in kept] == [10]
        load_model_and_tokenizer(str(kept[-1][1] / "model"), device="cpu")
        assert not list((folder / "checkpoints").glob("*.tmp")), "the partial checkpoint folder is removed"
        assert integrity(db) == "ok"
        assert [(c.step, c.complete) for c in store.checkpoints(run.id)] == [(10, True)]
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
