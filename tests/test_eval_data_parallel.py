"""Data-parallel evals: the torchrun command, the layout checks, the dealing of batches, and real 2-process gloo evals
that match the 1-process samples and resume an interrupted eval without redoing a sample."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.evals import harness
from dreamlab.evals.launch import needs_torchrun, run_attached, torchrun_eval_command
from dreamlab.evals.sharding import Ranks, from_main, rank_device, ranks_from_env, rounds_of
from dreamlab.evals.tasks import Sample
from dreamlab.models import build_char_tokenizer, build_tiny_model
from dreamlab.store import RunStore
from dreamlab.train.torchrun import torchrun_prefix
from tests.test_faults_eval import HELD_EVAL

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
# 20 problems, two cells (greedy entropy and sampled origin, which uses the per-problem seeds), batches of 3:
# the two ranks get batches of different make-up than their neighbours would give them in one process.
GRID = ["--alg", "entropy,origin", "--steps", "8", "--max-new-tokens", "8", "--limit", "20", "--batch-size", "3"]


def test_torchrun_prefix_single_node_and_multi_node():
    python = sys.executable
    assert torchrun_prefix(2) == [python, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1", "--standalone"]
    assert torchrun_prefix(8, 2, "node0:29500", rdzv_id="x")[3:] == [
        "--nproc-per-node=8", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29500", "--rdzv-id=x"]


@pytest.mark.parametrize("args, message", [
    ((0,), "processes per node and nodes must be >= 1; got 0 and 1"),
    ((2, 2), "a multi-node launch needs the rendezvous endpoint"),
    ((2, 2, "node0"), "must be HOST:PORT; got 'node0'"),
    ((2, 2, "node0:http"), "must be HOST:PORT"),
])
def test_torchrun_prefix_refuses_layouts_it_cannot_start(args, message):
    with pytest.raises(ValueError, match=message):
        torchrun_prefix(*args)


def test_the_eval_command_runs_python_m_dreamlab_eval_on_every_rank_with_one_rendezvous_id():
    command = torchrun_eval_command(["--limit", "20"], Path("/s/db.sqlite"), 4, 2, "node0:29500")
    module = command.index("-m", 3)
    assert command[module:] == ["-m", "dreamlab", "eval", "--limit", "20", "--db", "/s/db.sqlite"]
    ids = {part for part in command if part.startswith("--rdzv-id=dreamlab-eval-")}
    assert len(ids) == 1 and ids == {p for p in torchrun_eval_command(["--limit", "20"], Path("/other"), 4, 2, "n:1")
                                     if p.startswith("--rdzv-id=")}
    assert ids.isdisjoint(torchrun_eval_command(["--limit", "21"], Path("/s/db.sqlite"), 4, 2, "node0:29500"))


def test_needs_torchrun_only_for_more_than_one_process(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert needs_torchrun(1, 1, None) is False
    assert needs_torchrun(2, 1, None) is True
    assert needs_torchrun(1, 2, "node0:29500") is True
    assert needs_torchrun(2, 1, None, slurm=True) is True


def test_run_attached_returns_the_exit_code_and_128_plus_a_killing_signal():
    assert run_attached([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3
    assert run_attached([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]) == 128 + 15


def test_ranks_from_the_torchrun_environment():
    assert ranks_from_env({}) == Ranks(0, 1, 0)
    ranks = ranks_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert ranks == Ranks(5, 8, 1) and not ranks.is_main
    with pytest.raises(ValueError, match="must be integers; got 'x'"):
        ranks_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_rank_device_gives_each_rank_its_local_gpu_and_refuses_one_gpu_for_all(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rank_device(Ranks(3, 4, 1), "auto") == "cuda:1"
    assert rank_device(Ranks(3, 4, 1), "cuda") == "cuda:1"
    with pytest.raises(ValueError, match="--device cuda:0 would put every process on one GPU"):
        rank_device(Ranks(3, 4, 1), "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device(Ranks(1, 2, 1), "auto") == "cpu"


def _samples(*indices: int) -> list[Sample]:
    return [Sample(idx=i, question=f"q{i}", gold="1") for i in indices]


def test_rounds_check_that_every_sample_comes_back_once(one_process):
    batches = [_samples(0, 1), _samples(2)]
    assert [[row["idx"] for row in rows] for rows in rounds_of(batches, lambda b: [{"idx": s.idx} for s in b], Ranks())] \
        == [[0, 1], [2]]
    with pytest.raises(RuntimeError, match=r"round 0: ranks returned samples \[0\], expected \[0, 1\]"):
        list(rounds_of(batches, lambda b: [{"idx": b[0].idx}], Ranks()))
    with pytest.raises(RuntimeError, match=r"returned samples \[0, 0, 1\]"):
        list(rounds_of(batches, lambda b: [{"idx": s.idx} for s in [b[0], *b]], Ranks()))


def test_from_main_in_one_process_is_the_call():
    assert from_main(Ranks(), lambda: 42) == 42


@pytest.mark.parametrize("args, message", [
    (["--nproc-per-node", "0"], "error: --nproc-per-node must be >= 1; got 0"),
    (["--nnodes", "0"], "error: --nnodes must be >= 1; got 0"),
    (["--nnodes", "2"], "error: --nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (["--nnodes", "2", "--rdzv-endpoint", "node0"], "error: --rdzv-endpoint: the rendezvous endpoint must be HOST:PORT"),
    (["--nproc-per-node", "2", "--alg", "greedy"], "error: alg must be one of origin"),
    (["--nproc-per-node", "2", "--limit", "0"], "error: --limit must be >= 1; got 0"),
    (["--slurm", "--nnodes", "2", "--rdzv-endpoint", "node0:29500"], "error: --slurm submits a one-node eval job"),
    (["--nproc-per-node", "2", "--device", "cuda:1"], "error: --device cuda:1 would put every process on one GPU"),
])
def test_bad_layouts_give_one_line_errors_before_torchrun_starts(tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    started = []
    monkeypatch.setattr("dreamlab.evals.launch.subprocess.Popen", lambda *a, **k: started.append(a))
    result = runner.invoke(app, ["eval", "--model", "tiny", *args, "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2 and not started
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output


def test_an_eval_under_torchrun_does_not_start_torchrun_again(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = runner.invoke(app, ["eval", "--nproc-per-node", "2", "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2 and "already runs under torchrun (LOCAL_RANK is set)" in result.output


@pytest.fixture(scope="module")
def peaky_model(tmp_path_factory) -> Path:
    """A tiny model folder with peaky random weights: 20 problems give 20 different generations."""
    folder = tmp_path_factory.mktemp("peaky")
    build_tiny_model(seed=0, initializer_range=0.1).save_pretrained(folder)
    build_char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def one_thread():
    """torchrun gives each rank one thread: the 1-process reference runs the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(peaky_model, tmp_path_factory) -> list[list[dict]]:
    """The 1-process eval's samples of each cell (run in this process, at one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        db = tmp_path_factory.mktemp("one") / "db.sqlite"
        result = runner.invoke(app, ["eval", "--model", str(peaky_model), *GRID, "--db", str(db)])
        assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(threads)
    store = RunStore(db)
    return [store.eval_samples(record.id) for record in store.list_evals()]


def _two_processes(db: Path, model: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per rank
    return subprocess.run([sys.executable, "-m", "dreamlab", "eval", "--model", str(model), *GRID, "--nproc-per-node", "2",
                           "--db", str(db)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _without_timing(samples: list[dict]) -> list[dict]:
    return [{key: value for key, value in sample.items() if key != "seconds"} for sample in samples]


@pytest.mark.slow
def test_two_gloo_processes_record_exactly_the_one_process_samples_once(peaky_model, reference, tmp_path):
    done = _two_processes(tmp_path / "db.sqlite", peaky_model)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"2\s+processes", done.stderr) and "error" not in done.stderr.lower()
    store = RunStore(tmp_path / "db.sqlite")
    records = store.list_evals()
    assert [(r.alg, r.status, r.n_done, r.n_samples, r.device) for r in records] == [
        ("entropy", "completed", 20, 20, "cpu"), ("origin", "completed", 20, 20, "cpu")]
    for record, expected in zip(records, reference):
        samples = store.eval_samples(record.id)
        assert [s["idx"] for s in samples] == list(range(20))
        assert _without_timing(samples) == _without_timing(expected)
    assert len({s["generation"] for s in reference[1]}) > 10  # the comparison is not between constant outputs
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT eval_id || ':' || idx) FROM eval_samples").fetchone() == (40, 40)


@pytest.mark.slow
def test_two_processes_resume_an_interrupted_eval_without_redoing_a_sample(peaky_model, reference, tmp_path,
                                                                           monkeypatch, one_thread):
    db = tmp_path / "db.sqlite"
    real, calls = harness.generate_and_score, []

    def interrupt_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "generate_and_score", interrupt_on_third_batch)
    stopped = runner.invoke(app, ["eval", "--model", str(peaky_model), *GRID, "--db", str(db)])
    assert stopped.exit_code == 130, stopped.output
    store = RunStore(db)
    [first] = store.list_evals()
    assert (first.status, first.n_done) == ("interrupted", 6)
    with sqlite3.connect(db) as conn:  # mark the finished samples: a redo would overwrite the mark
        conn.execute("UPDATE eval_samples SET seconds = -1")
        kept = {row[0] for row in conn.execute("SELECT idx FROM eval_samples")}

    resumed = _two_processes(db, peaky_model)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = store.list_evals()
    assert records[0].id == first.id and [(r.status, r.n_done) for r in records] == [("completed", 20), ("completed", 20)]
    samples = store.eval_samples(first.id)
    assert {s["idx"] for s in samples if s["seconds"] == -1} == kept
    assert all(s["seconds"] > 0 for s in samples if s["idx"] not in kept)
    for record, expected in zip(records, reference):
        assert _without_timing(store.eval_samples(record.id)) == _without_timing(expected)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_meet_at_the_rendezvous_and_match_the_one_process_samples(peaky_model, reference, tmp_path):
    # Two torchrun agents on this machine stand in for two nodes: each runs the same command, as a user types it.
    db = tmp_path / "db.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    command = [sys.executable, "-m", "dreamlab", "eval", "--model", str(peaky_model), *GRID, "--nnodes", "2",
               "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--db", str(db)]
    nodes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(output[-2000:] for output in outputs)
    store = RunStore(db)
    records = store.list_evals()
    assert [(r.status, r.n_done) for r in records] == [("completed", 20), ("completed", 20)]
    for record, expected in zip(records, reference):
        assert _without_timing(store.eval_samples(record.id)) == _without_timing(expected)




@pytest.mark.slow
def test_a_two_process_eval_killed_between_rounds_resumes_with_both_ranks_samples_kept(peaky_model, reference, tmp_path):
    db, marker, script = tmp_path / "db.sqlite", tmp_path / "held", tmp_path / "held_rank.py"
    script.write_text(HELD_EVAL)  # on rank 0, the only store writer: the kill lands between two recorded rounds
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), str(marker),
               "2", "eval", "--model", str(peaky_model), *GRID, "--db", str(db)]
    torchrun = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while not marker.is_file():
        assert torchrun.poll() is None, f"the eval exited with {torchrun.returncode} before the hold"
        assert time.monotonic() < deadline, "the eval recorded no round in time"
        time.sleep(0.05)
    ranks = psutil.Process(torchrun.pid).children(recursive=True)  # each rank runs in a session of its own
    for process in [psutil.Process(torchrun.pid), *ranks]:  # all at once, as a lost machine would
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(ranks, timeout=30)
    torchrun.wait(timeout=30)
    with sqlite3.connect(db) as conn:  # two rounds of two batches of 3: 12 samples, half of them from rank 1
        conn.execute("UPDATE eval_samples SET seconds = -1")
        kept = {row[0] for row in conn.execute("SELECT idx FROM eval_samples")}
    assert len(kept) == 12

    resumed = _two_processes(db, peaky_model)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    store = RunStore(db)
    records = store.list_evals()
    assert [(r.status, r.n_done) for r in records] == [("completed", 20), ("completed", 20)]
    assert {s["idx"] for s in store.eval_samples(records[0].id) if s["seconds"] == -1} == kept
    for record, expected in zip(records, reference):
        assert _without_timing(store.eval_samples(record.id)) == _without_timing(expected)
