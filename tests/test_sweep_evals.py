"""Evals queued in a sweep: the --eval option's checks, the driver's order on one device, and a real sweep whose
evals run beside a run and after it on (stand-in) GPUs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.cli.sweep import sweep_eval
from dreamlab.config import load_recipe
from dreamlab.store import RunStore
from dreamlab.train import launcher
from dreamlab.train import sweep as sweep_module
from dreamlab.train.sweep import SweepEval, drive, evals_argument, main

runner = CliRunner()
SMALL = ["model.compile=false", "data.micro_batch_size_per_gpu=8", "data.val_size=16", "model.tiny_hidden_size=64",
         "model.tiny_num_layers=2", "model.tiny_intermediate_size=128", "trainer.val_check_interval=null"]
EVAL = "--alg entropy --steps 4 --max-new-tokens 8 --limit 4 --batch-size 4"


def test_an_eval_without_a_model_follows_each_run_and_takes_its_processes_as_gpus():
    assert sweep_eval(EVAL) == SweepEval(tuple(EVAL.split()), after_each_run=True, nproc=1)
    given = sweep_eval("--model tiny --nproc-per-node 2 --limit 3")
    assert (given.after_each_run, given.nproc) == (False, 2)
    assert given.command(Path("/s/db")) == [sys.executable, "-m", "dreamlab", "eval", "--model", "tiny",
                                            "--nproc-per-node", "2", "--limit", "3", "--db", "/s/db"]
    assert sweep_eval(EVAL).command(Path("db"), "lr-1")[-4:] == ["--run", "lr-1", "--db", "db"]


@pytest.mark.parametrize("text, message", [
    ("--alg greedy", "alg must be one of origin"),
    ("--limit 0", "--limit must be >= 1; got 0"),
    ("--bogus 1", "No such option: --bogus"),
    ("--steps '4", "No closing quotation"),
    ("--db other.db", "--db is the sweep's to set"),
    ("--nnodes 2 --rdzv-endpoint n:1", "--nnodes is the sweep's to set"),
    ("--nproc-per-node 0", "--nproc-per-node must be >= 1"),
    ("score file.jsonl", "give `dreamlab eval` options only"),
])
def test_bad_evals_are_refused_naming_the_eval(text, message):
    with pytest.raises(ValueError, match="--eval ") as error:
        sweep_eval(text)
    assert message in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["--eval", "--alg greedy"], "error: --eval '--alg greedy': alg must be one of origin"),
    (["--eval", EVAL], "evaluates the sweep's runs, and this sweep has none"),
    (["optim.lr=1e-3", "--slurm", "--eval", EVAL], "a Slurm sweep has none"),
    (["optim.lr=1e-3", "trainer.launcher=slurm", "--eval", EVAL], "a Slurm sweep has none"),
    (["--slurm", "--eval", "--model tiny"], "a Slurm sweep has none"),
    ([], "nothing to sweep"),
    (["optim.lr=1e-3", "--gpus", "0", "--eval", "--model tiny --nproc-per-node 2"], "needs more GPUs than the sweep has (0)"),
])
def test_a_sweep_with_a_bad_eval_queues_nothing(tmp_path, args, message):
    db = tmp_path / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["sweep", *args, "--db", str(db)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not db.exists() or RunStore(db).list_runs() == []


class _Finished:
    """A process that has ended by the driver's first poll; a run's ends completed in the store."""

    def __init__(self, store: RunStore, command: list[str], pid: int) -> None:
        self.store, self.command, self.pid, self.returncode = store, command, pid, None

    def poll(self) -> int:
        if self.returncode is None and "--run-dir" in self.command:
            run_dir = self.command[self.command.index("--run-dir") + 1]
            [run] = [r for r in self.store.list_runs() if r.run_dir == run_dir]
            self.store.finish(run.id, "completed")
        self.returncode = 0
        return 0


def test_on_one_device_a_runs_evals_come_right_after_it_and_evals_as_given_after_the_runs(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "db.sqlite")
    recipe = load_recipe(None, SMALL).to_dict()
    runs = [store.create_run(name=f"lr-{i}", recipe=recipe, sweep_id="s") for i in (1, 2)]
    started: list[list[str]] = []

    def start(command, folder, *, capture, extra_env=None, log_name="train.log"):
        started.append(command)
        return _Finished(store, command, pid=len(started))

    monkeypatch.setattr(launcher, "start_process", start)
    evals = [sweep_eval(EVAL), sweep_eval("--model tiny --limit 2")]
    assert drive(tmp_path / "db.sqlite", "s", poll_s=0, evals=evals) == 0
    order = [c[c.index("--run-dir") + 1].rsplit("/", 1)[-1] if "--run-dir" in c else
             "eval " + (c[c.index("--run") + 1] if "--run" in c else "tiny") for c in started]
    assert order == ["lr-1", "eval lr-1", "lr-2", "eval lr-2", "eval tiny"]
    assert [store.get_run(r.id).status for r in runs] == ["completed", "completed"]


def test_the_detached_driver_reads_its_evals_back(monkeypatch):
    evals = [sweep_eval(EVAL), sweep_eval("--model tiny --nproc-per-node 2")]
    seen = {}

    def fake_drive(db, sweep_id, gpus, evals):
        seen.update(db=db, gpus=gpus, evals=evals)
        return 0

    monkeypatch.setattr(sweep_module, "drive", fake_drive)
    assert main(["--db", "d", "--sweep-id", "s", "--gpus", "0,1", "--evals", evals_argument(evals)]) == 0
    assert seen == {"db": Path("d"), "gpus": [0, 1], "evals": evals}


@pytest.mark.slow
def test_a_sweep_runs_an_eval_beside_its_run_and_evaluates_the_run_after_it(tmp_path):
    # CPU processes stand in for GPU jobs: the driver's placement and each job's environment are the same.
    db = tmp_path / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["sweep", *SMALL, "trainer.total_training_steps=2", "trainer.save_checkpoint_steps=2",
                                 "--name", "ev", "--gpus", "0,1", "--eval", EVAL, "--eval", "--model tiny " + EVAL,
                                 "--foreground", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "GPUs 0,1: up to 2 jobs at once" in result.output and "eval of ev-1: completed" in result.output
    store = RunStore(db)
    [run] = store.list_runs()
    evals = {("run" if e.run_id else "tiny"): e for e in store.list_evals()}
    assert run.status == "completed" and evals["run"].run_id == run.id
    assert {e.status for e in evals.values()} == {"completed"} and {e.n_done for e in evals.values()} == {4}
    assert evals["tiny"].started < run.ended  # beside the run, on the other GPU
    assert evals["run"].started >= run.ended  # after the run, on its checkpoint
    logs = sorted((tmp_path / "runs" / "evals").glob("sweep-*-eval-*.log"))
    assert len(logs) == 2
