"""An eval interrupted at random points (Ctrl-C mid-batch, kill -9 of the process) resumes to exactly one result per sample.

The kill -9 lands where it is meant to every time: the eval process is held (by this file's wrapper,
no product code) after a random number of batch writes until the test kills it.
"""

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

pytestmark = pytest.mark.slow
ARGS = ["--model", "tiny", "--alg", "entropy,origin", "--steps", "4", "--max-new-tokens", "8", "--limit", "12",
        "--batch-size", "4"]


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


# `dreamlab eval ...` whose store holds the process after its N-th batch write, once it wrote the file MARKER.
HELD_EVAL = r"""
import sys, time
from pathlib import Path
from dreamlab.cli import main
from dreamlab.store import RunStore

marker, after = Path(sys.argv[1]), int(sys.argv[2])
record, calls = RunStore.record_eval_samples, []

def record_then_hold(self, eval_id, rows):
    record(self, eval_id, rows)
    calls.append(eval_id)
    if len(calls) == after:
        marker.write_text("held")
        while True:
            time.sleep(60)

RunStore.record_eval_samples = record_then_hold
sys.argv = ["dreamlab", *sys.argv[3:]]
main()
"""


def test_kill_minus_9_after_random_numbers_of_batches_resumes_to_one_result_per_sample(tmp_path):
    rng = random.Random(9)
    db = tmp_path / "runs" / "dreamlab.db"
    args = ["eval", *ARGS, "--batch-size", "2", "--db", str(db)]
    for cycle in range(3):  # at most 3 x 3 of the 2 x 6 batches: every cycle is killed before the end
        marker = tmp_path / f"held-{cycle}"
        command = [sys.executable, "-c", HELD_EVAL, str(marker), str(rng.randint(1, 3)), *args]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd())
        deadline = time.monotonic() + 900  # a loaded CI machine can take minutes to start the process
        while not marker.is_file():
            assert process.poll() is None, f"cycle {cycle}: the eval exited with {process.returncode} before the hold"
            assert time.monotonic() < deadline, "the eval wrote no batch in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        assert RunStore.query_readonly(db, "SELECT COUNT(*) FROM evals")[1][0][0] >= 1  # the store opens and reads
    command = [sys.executable, "-c", "from dreamlab.cli import main; main()", *args]
    final = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert final.returncode == 0, final.stderr[-2000:]
    one_result_per_sample(db, cells=2, samples=12)
