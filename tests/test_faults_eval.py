"""An eval interrupted at random points (Ctrl-C mid-batch, kill -9 of the process) resumes to exactly one result per sample."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.evals import harness
from dreamlab.store import RunStore
from dreamlab.store.errors import StoreError

pytestmark = pytest.mark.slow
ARGS = ["--model", "tiny", "--alg", "entropy,origin", "--steps", "4", "--max-new-tokens", "8", "--limit", "12",
        "--batch-size", "4"]


def samples_written(db: Path) -> int:
    """Sample rows in the store so far (0 before it exists)."""
    if not db.exists():
        return 0
    try:
        return RunStore.query_readonly(db, "SELECT COUNT(*) FROM eval_samples")[1][0][0]
    except StoreError:  # the file exists but the eval has not migrated it yet
        return 0


def one_result_per_sample(db: Path, cells: int, samples: int) -> None:
    """Every cell completed once, each with exactly the samples 0..n-1, none twice."""
    columns, evals = RunStore.query_readonly(db, "SELECT id, status, n_done FROM evals ORDER BY id")
    assert [(status, n_done) for _, status, n_done in evals] == [("completed", samples)] * cells
    _, counts = RunStore.query_readonly(db, "SELECT eval_id, idx, COUNT(*) FROM eval_samples GROUP BY eval_id, idx")
    assert all(count == 1 for _, _, count in counts)
    for eval_id, _, _ in evals:
        assert sorted(idx for e, idx, _ in counts if e == eval_id) == list(range(samples))


def test_ctrl_c_at_random_samples_resumes_to_one_result_per_sample(tmp_path, monkeypatch):
    rng = random.Random(5)
    db = tmp_path / "runs" / "dreamlab.db"
    real = harness.score_generation
    interrupts = 0
    for _ in range(12):
        limit = rng.randint(1, 8)  # the k-th scored sample raises: mid-batch, before its batch is written
        calls = {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == limit:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(harness, "score_generation", flaky)
        result = CliRunner().invoke(app, ["eval", *ARGS, "--db", str(db)])
        if result.exit_code == 0:
            break
        assert result.exit_code == 130 and "run the same command again to resume" in result.output, result.output
        interrupts += 1
    assert interrupts >= 3
    one_result_per_sample(db, cells=2, samples=12)


def test_kill_minus_9_at_random_moments_resumes_to_one_result_per_sample(tmp_path):
    rng = random.Random(9)
    db = tmp_path / "runs" / "dreamlab.db"
    command = [sys.executable, "-c", "from dreamlab.cli import main; main()", "eval", *ARGS, "--batch-size", "2",
               "--db", str(db)]
    killed = 0
    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd())
        done_before = samples_written(db)
        deadline = time.monotonic() + 900  # a loaded CI machine can take minutes to start the process
        while process.poll() is None and samples_written(db) <= done_before:  # until it writes samples
            assert time.monotonic() < deadline, "the eval wrote no sample in time"
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.wait(timeout=30)
        assert RunStore.query_readonly(db, "SELECT COUNT(*) FROM evals")[1][0][0] >= 1  # the store opens and reads
    assert killed >= 2
    final = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert final.returncode == 0, final.stderr[-2000:]
    one_result_per_sample(db, cells=2, samples=12)
