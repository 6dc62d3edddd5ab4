"""Slurm without a cluster: the state mapping, the health a reader shows, the sbatch script, the options."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.cli.options import slurm_overrides
from dreamlab.config import RecipeError, load_recipe, slurm_time_seconds
from dreamlab.store import Run, RunStore, StoreError
from dreamlab.store.health import Health, Thresholds
from dreamlab.train.slurm import JobState, map_state, sbatch_options, slurm_health, write_script
from tests import slurm_cluster
from tests.store_helpers import store_at_version


@pytest.mark.parametrize(("state", "reason", "exit_code", "expected"), [
    ("PENDING", "Priority", None, ("queued", "Slurm job pending: Priority")),
    ("PENDING", "Resources", None, ("queued", "Slurm job pending: Resources")),
    ("PENDING", "None", None, ("queued", "Slurm job pending")),
    ("REQUEUED", None, None, ("queued", "Slurm job requeued")),
    ("CONFIGURING", None, None, ("queued", "Slurm job configuring")),
    ("RUNNING", "None", None, ("running", None)),
    ("COMPLETING", None, "0:0", ("running", None)),
    ("COMPLETED", "None", "0:0", ("completed", None)),
    ("FAILED", "NonZeroExitCode", "1:0", ("failed", "Slurm job failed (NonZeroExitCode, exit code 1:0)")),
    ("CANCELLED by 0", "None", "0:15", ("stopped", "Slurm job cancelled (exit code 0:15)")),
    ("CANCELLED+", "BeginTime", None, ("stopped", "Slurm job cancelled")),
    ("TIMEOUT", "TimeLimit", "0:0", ("stopped", "Slurm time limit reached (TimeLimit)")),
    ("NODE_FAIL", "None", "0:0", ("failed", "Slurm node failure")),
    ("PREEMPTED", None, "0:0", ("stopped", "preempted by Slurm")),
    ("OUT_OF_MEMORY", None, "0:125", ("failed", "Slurm job ran out of memory (exit code 0:125)")),
    ("BOOT_FAIL", None, None, ("failed", "Slurm node failed to boot")),
    ("DEADLINE", None, None, ("stopped", "Slurm deadline reached")),
    ("REVOKED", None, None, ("failed", "Slurm job state REVOKED")),
    ("", None, None, ("failed", "Slurm job state UNKNOWN")),
])
def test_map_state(state, reason, exit_code, expected):
    assert map_state(state, reason, exit_code) == expected


def _run(status: str, **fields) -> Run:
    return Run(id=1, name="r", status=status, created=1000.0, launcher="slurm", job_id="42", **fields)


@pytest.mark.parametrize(("run", "job", "expected"), [
    (_run("queued"), JobState("42", "PENDING", "Resources"), Health("queued", "Slurm job pending: Resources (job 42)")),
    (_run("queued"), JobState("42", "RUNNING", None, "gpu[1-2]"),
     Health("queued", "Slurm job 42 running on gpu[1-2]: rank 0 not started yet")),
    (_run("running", started=2000.0, heartbeat=2040.0), JobState("42", "RUNNING"), Health("running")),
    # Slurm says it runs: a run silent too long reads lost only when Slurm cannot vouch for it.
    (_run("running", started=1900.0, heartbeat=1900.0), JobState("42", "RUNNING"),
     Health("running", "no heartbeat for 2 min (threshold 60 s)")),
    (_run("running", started=1900.0, heartbeat=1900.0), None, Health("lost", "no heartbeat for 2 min (threshold 60 s)")),
    (_run("running", started=1000.0, heartbeat=2000.0), JobState("42", "TIMEOUT", "TimeLimit"),
     Health("stopped", "Slurm time limit reached (TimeLimit) (job 42; the run recorded no ending)")),
    (_run("queued"), JobState("42", "CANCELLED by 0", None, None, "0:0"),
     Health("stopped", "Slurm job cancelled (job 42; the run recorded no ending)")),
    (_run("queued"), None, Health("queued", "Slurm job 42: not known to Slurm now (ended long ago, or Slurm cannot "
                                            "be reached from here)")),
])
def test_slurm_health(run, job, expected):
    assert slurm_health(run, job, now=2050.0, thresholds=Thresholds()) == expected


def test_a_running_job_whose_run_makes_no_steps_reads_stalled():
    run = _run("running", started=1000.0, heartbeat=1990.0)
    health = slurm_health(run, JobState("42", "RUNNING"), now=2000.0, thresholds=Thresholds(stall_after_s=600.0))
    assert health.status == "stalled"


def test_the_options_become_trainer_overrides_and_the_script_holds_them(tmp_path):
    overrides = slurm_overrides(slurm=True, partition="gpu", nodes=2, gpus_per_node=8, time_limit="1-00:00:00",
                                account="lab", slurm_args=["mem=0", "constraint=h100", "exclusive="], requeue=True)
    recipe = load_recipe(None, overrides)
    t = recipe.trainer
    assert (t.launcher, t.slurm_partition, t.nnodes, t.nproc_per_node, t.slurm_gpus_per_node, t.slurm_time,
            t.slurm_account, t.slurm_args, t.slurm_requeue) == (
        "slurm", "gpu", 2, 8, 8, "1-00:00:00", "lab", ["mem=0", "constraint=h100", "exclusive="], True)
    assert sbatch_options(recipe, tmp_path, "r") == [
        "--job-name=dreamlab-r", f"--output={tmp_path / 'train.log'}", "--open-mode=append", "--nodes=2",
        "--ntasks-per-node=1", "--signal=B:USR1@300", "--partition=gpu", "--account=lab", "--time=1-00:00:00",
        "--gpus-per-node=8", "--mem=0", "--constraint=h100", "--exclusive"]
    script = write_script(recipe, tmp_path, "r").read_text()
    assert "#SBATCH --nodes=2\n" in script
    assert "--db" not in script and "dreamlab.db" not in script  # the job records into its journal, never the store
    assert 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert ('--nnodes=$SLURM_NTASKS --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint="$head:$port" '
            '--rdzv-id="$SLURM_JOB_ID" -m dreamlab.train.worker') in script
    assert "--slurm $resume &\n" in script
    assert "#SBATCH --signal=B:USR1@300\n" in script and "' USR1\n" in script


def test_the_script_is_valid_bash_with_the_partition_s_default_time(tmp_path):
    script = write_script(load_recipe(None, ["trainer.launcher=slurm"]), tmp_path, "r")
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "stop_reason='Slurm time limit (the partition'\"'\"'s default) of job'\n" in script.read_text()


@pytest.mark.parametrize("fake, signalled_while", [("rm", "the script starts"), ("srun", "the run trains")])
def test_the_time_limit_warning_becomes_the_stop_request_whenever_it_comes(tmp_path, fake, signalled_while):
    """Slurm's warning (USR1 to the batch shell) is sent here by a fake command the script runs: `rm` before the
    script's own trap is set (a warning as the job starts), or `srun` while the run trains."""
    recipe = load_recipe(None, ["trainer.launcher=slurm", "trainer.slurm_time=10", "trainer.slurm_signal_s=60"])
    script = write_script(recipe, tmp_path, "r")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"scontrol": "echo node1", "srun": "sleep 0.2", "rm": "true"}.items():
        signal = "kill -USR1 $PPID; " if name == fake else ""
        (bin_dir / name).write_text(f"#!/bin/bash\n{signal}{body}\n")
        (bin_dir / name).chmod(0o755)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1",
                               "SLURM_NTASKS": "1"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "stop-request").read_text() == "Slurm time limit (--time=10) of job 7: checkpointed before it\n"


@pytest.mark.parametrize("text, seconds", [("5", 300), ("5:30", 330), ("2:00:00", 7200), ("1-0", 86400),
                                           ("1-2:30", 95400), ("1-00:00:10", 86410), ("INFINITE", None),
                                           ("unlimited", None)])
def test_slurm_time_formats_in_seconds(text, seconds):
    assert slurm_time_seconds(text) == seconds


def test_a_recipe_refuses_a_bad_time_and_a_warning_before_the_job_starts():
    with pytest.raises(RecipeError, match=r"trainer.slurm_time: '1h' is not a Slurm time"):
        load_recipe(None, ["trainer.slurm_time=1h"])
    with pytest.raises(RecipeError, match=r"trainer.slurm_signal_s: the time-limit warning 300 s before the end comes "
                                          r"before the job starts under trainer.slurm_time=5 \(300 s\): set "
                                          r"trainer.slurm_signal_s below 300 \(e.g. 75\)"):
        load_recipe(None, ["trainer.slurm_time=5"])
    assert load_recipe(None, ["trainer.slurm_time=6"]).trainer.slurm_time == "6"


def test_a_recipe_refuses_an_sbatch_argument_that_is_not_key_value():
    with pytest.raises(RecipeError, match=r"trainer.slurm_args: '--mem' is not KEY=VALUE"):
        load_recipe(None, ["trainer.slurm_args=[--mem]"])
    with pytest.raises(RecipeError, match="trainer.launcher: 'pbs' is not one of local, slurm"):
        load_recipe(None, ["trainer.launcher=pbs"])


def test_a_v8_store_migrates_its_runs_to_the_local_launcher(tmp_path):
    path = store_at_version(tmp_path / "old.db", 8, "INSERT INTO runs (id, name, status, created) VALUES (1, 'old', 'completed', 1.0)")
    with RunStore(path) as store:
        run = store.get_run("old")
        assert (run.launcher, run.job_id, run.nodes) == ("local", None, None)


def test_the_store_records_submissions_nodes_and_endings_a_reader_saw(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run = store.create_run(name="r")
    queued = store.mark_submitted(run.id, "41")
    assert (queued.status, queued.launcher, queued.job_id) == ("queued", "slurm", "41")
    store.mark_started(run.id, pid=123)
    store.record_nodes(run.id, "gpu[1-2]")
    with pytest.raises(StoreError, match="already running"):
        store.mark_submitted(run.id, "42")
    store.finish(run.id, "stopped", "Slurm time limit")
    again = store.mark_submitted(run.id, "42")  # a resubmission
    assert (again.status, again.job_id, again.nodes, again.exit_reason, again.ended) == ("queued", "42", None, None, None)
    assert store.end_if_unfinished(run.id, "failed", "Slurm node failure (job 42; the run recorded no ending)")
    assert not store.end_if_unfinished(run.id, "stopped", "too late")  # already ended: left as it is
    final = store.get_run(run.id)
    assert (final.status, final.exit_reason) == ("failed", "Slurm node failure (job 42; the run recorded no ending)")
    assert [(event.kind, event.message) for event in store.events(run.id)] == [
        ("queued", None), ("submitted", "Slurm job 41"), ("started", "pid 123"),
        ("stopped", "Slurm time limit"), ("submitted", "Slurm job 42"),
        ("failed", "Slurm node failure (job 42; the run recorded no ending)")]


def test_train_slurm_without_slurm_commands_refuses_before_recording_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, squeue, scancel, scontrol
    db = tmp_path / "runs" / "dreamlab.db"
    result = CliRunner().invoke(app, ["train", "--slurm", "--db", str(db)])
    assert result.exit_code == 2
    assert "trainer.launcher=slurm: Slurm commands not found: sbatch, squeue, scancel, scontrol" in result.output
    assert not db.exists() or RunStore(db).list_runs() == []


def test_a_slurm_run_cannot_be_followed_in_the_foreground(tmp_path):
    result = CliRunner().invoke(app, ["train", "--slurm", "--foreground", "--db", str(tmp_path / "runs.db")])
    assert result.exit_code == 2 and "a Slurm job's output is in its train.log" in result.output


def test_the_local_cluster_says_why_it_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    assert slurm_cluster.missing_reason().startswith("Slurm tests need root")
    assert slurm_cluster.install_if_missing().startswith("Slurm tests need root")  # never tries apt-get
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_cluster.missing_reason() == (
        "Slurm is not installed (munged, slurmctld, slurmd, sbatch, squeue, scancel, scontrol, srun missing; "
        "apt-get install slurm-wlm munge)")


def fake_slurm(folder: Path, squeue_line: str = "") -> None:
    """sbatch / squeue / scancel / scontrol stand-ins on PATH: sbatch answers job 123, squeue prints `squeue_line`."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = {"sbatch": "echo 123", "squeue": f"printf '{squeue_line}'", "scancel": "true", "scontrol": "exit 1"}
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)


def test_eval_slurm_records_an_eval_job_whose_command_never_names_the_store(tmp_path, monkeypatch):
    fake_slurm(tmp_path / "bin", squeue_line="123|PENDING|Priority|\\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    db = tmp_path / "runs" / "dreamlab.db"
    result = CliRunner().invoke(app, ["eval", "--model", "tiny", "--limit", "2", "--steps", "4", "--slurm",
                                      "--partition", "cpu", "--db", str(db)])
    assert result.exit_code == 0, result.output
    (job,) = RunStore(db).list_eval_jobs()
    assert (job.launcher, job.job_id, job.status, job.reason) == ("slurm", "123", "queued", "Slurm job 123 submitted")
    assert (job.model, job.task, job.detached, job.host) == ("tiny", "arithmetic", True, None)
    folder = Path(job.folder)
    assert folder.parent == (tmp_path / "runs" / "evals").resolve() and folder.name.startswith("eval-")
    assert job.command[3:] == ["eval", "--steps", "4", "--limit", "2", "--job-dir", str(folder)]
    script = (folder / "slurm.sbatch").read_text()
    assert "#SBATCH --partition=cpu\n" in script and f"#SBATCH --output={folder / 'eval.log'}\n" in script
    assert "--db" not in script and str(db) not in script
    assert json.loads((folder / "eval.json").read_text()) == {"spec": "tiny", "checkpoint": None, "run_id": None}
    listed = CliRunner().invoke(app, ["evals", "list", "--json", "--db", str(db)])
    (shown,) = json.loads(listed.output)
    assert (shown["status"], shown["reason"], shown["slurm_job"]) == ("queued", "Slurm job pending: Priority (job 123)",
                                                                       "123")
    assert CliRunner().invoke(app, ["eval", "jobs", "--db", str(db)]).exit_code != 0  # one command: `evals list`


def test_eval_slurm_without_slurm_commands_refuses_before_recording_a_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    db = tmp_path / "runs" / "dreamlab.db"
    result = CliRunner().invoke(app, ["eval", "--model", "tiny", "--slurm", "--db", str(db)])
    assert result.exit_code == 2 and "--slurm: Slurm commands not found: sbatch" in result.output
    assert not db.exists() or RunStore(db).list_eval_jobs() == []


def test_run_folders_go_to_dreamlab_runs_dir_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMLAB_RUNS_DIR", str(tmp_path / "shared" / "runs"))
    store = RunStore(tmp_path / "local" / "dreamlab.db")
    run = store.create_run(name="there")
    assert Path(run.run_dir) == (tmp_path / "shared" / "runs" / "there").resolve()
