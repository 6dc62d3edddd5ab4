"""Runs through a real Slurm: a one-node cluster on localhost that this module starts (and installs when root and
missing), then submission to completion, a pending job, a stop, a time limit with resume and requeue, preemption,
two FSDP ranks (two processes, or two torchrun agents meeting at the c10d store), a sweep and an eval."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.store import Run, RunStore
from dreamlab.train.checkpoint import complete_checkpoints
from dreamlab.train import slurm as slurm_jobs
from dreamlab.tui.queries import load_runs
from tests import slurm_cluster

pytestmark = pytest.mark.slow
runner = CliRunner()

TINY = ["model.compile=false", "data.micro_batch_size_per_gpu=8", "data.val_size=16", "model.tiny_hidden_size=64", "model.tiny_num_layers=2",
        "model.tiny_intermediate_size=128", "trainer.log_every=1", "trainer.val_check_interval=10"]
# Runs that no machine finishes before Slurm's time limit or a preemption reaches them (about 7 hours here):
# their tests end them with `runs stop`, and `stop_leftover_jobs` cancels them if a test fails first.
LONG = [*TINY, "trainer.total_training_steps=100000"]
TIME_LIMITED = [*LONG, "trainer.slurm_signal_s=30", "--time", "1"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A local Slurm cluster for the session (SLURM_CONF points the commands at it); skipped, saying why, without."""
    reason = slurm_cluster.install_if_missing()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    print(f"local Slurm cluster up in {time.monotonic() - started:.1f} s")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(running.conf)
    yield running
    running.stop()
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.fixture(autouse=True)
def stop_leftover_jobs(cluster):
    """Cancel whatever a test left in the queue (a failed test's long run would hold the node for hours)."""
    yield
    subprocess.run(["scancel", "--user", getpass.getuser()], check=False, capture_output=True)


TRIPWIRE = '''"""Written by tests/test_slurm_e2e.py: logs this process, and any attempt of it to open the run store."""
import os, sys
_db, _log = os.environ.get("DREAMLAB_TRIPWIRE_DB"), os.environ.get("DREAMLAB_TRIPWIRE_LOG")
if _db and _log:
    def _note(text):
        with open(_log, "a") as log:
            log.write(f"{text} {os.getpid()} " + open("/proc/self/cmdline").read().replace(chr(0), " ") + "\\n")
    def _hook(event, args):
        if event in ("open", "sqlite3.connect") and args:
            try:
                path = os.path.abspath(os.fsdecode(args[0]))
            except TypeError:
                return  # a file descriptor
            if path.startswith(_db):
                _note(f"opened {path}")
    _note("armed")
    sys.addaudithook(_hook)
'''


@pytest.fixture
def tripwire(tmp_path, monkeypatch):
    """Every Python process a job submitted from here starts logs itself, and any open of the store, to a file."""
    folder = tmp_path / "tripwire"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(TRIPWIRE)
    log = folder / "opens.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("DREAMLAB_TRIPWIRE_LOG", str(log))

    def arm(db: Path) -> None:
        monkeypatch.setenv("DREAMLAB_TRIPWIRE_DB", str(db.resolve()))

    yield arm
    lines = log.read_text().splitlines() if log.exists() else []
    assert any(line.startswith("armed") and "dreamlab" in line for line in lines), f"the tripwire never ran: {lines}"
    assert not [line for line in lines if line.startswith("opened")], lines


def cli(db: Path, *args: str):
    result = runner.invoke(app, [*args, "--db", str(db)])
    assert result.exit_code == 0, result.output
    return result


def submit(db: Path, *args: str) -> Run:
    cli(db, "train", *args, "--slurm")
    run = RunStore(db).list_runs(limit=1)[0]
    assert run.status == "queued" and run.launcher == "slurm" and run.job_id, run
    return run


def wait_for(db: Path, run: Run, done, timeout: float = 240.0) -> Run:
    """Poll the store (through `runs list`, which records what Slurm says of jobs whose run recorded no ending)."""
    deadline = time.monotonic() + timeout
    while True:
        cli(db, "runs", "list", "--json")
        found = RunStore(db).get_run(run.id)
        if done(found):
            return found
        if time.monotonic() > deadline:
            log = Path(run.run_dir, "train.log")
            raise AssertionError(f"run {found.name} still {found.status} after {timeout:g} s\n"
                                 + (log.read_text()[-3000:] if log.exists() else "no train.log"))
        time.sleep(1.0)


def ended(run: Run) -> bool:
    return run.finished


def stepped_past(run: Run, step: int | None) -> bool:
    """Whether the run is running and has logged a step after `step` (None: not known yet)."""
    return step is not None and run.status == "running" and run.progress is not None and run.progress.step > step


def resumed_from(db: Path, run: Run) -> int | None:
    """The step the run's latest resume started from (None before any)."""
    found = [int(event.message.split()[3].rstrip(",;:")) for event in RunStore(db).events(run.id)
             if event.kind == "resumed" and event.message.startswith("resumed from step ")]
    return found[-1] if found else None


def stop(db: Path, run: Run) -> Run:
    """`runs stop` a running Slurm run: it ends stopped at a checkpoint of its last step, and no requeue follows."""
    output = cli(db, "runs", "stop", run.name).output
    assert f"sent SIGTERM to Slurm job {run.job_id}" in output
    final = RunStore(db).get_run(run.id)
    assert (final.status, final.exit_reason) == ("stopped", "stop requested (SIGTERM/SIGINT)")
    assert complete_checkpoints(Path(final.run_dir))[-1][0] == steps(db, final)[-1]
    submitted = len([event for event in RunStore(db).events(run.id) if event.kind == "submitted"])
    job = slurm_jobs.wait_ended(run.job_id, timeout_s=90)
    assert job is None or slurm_jobs.map_state(job.state)[0] not in ("queued", "running"), job
    cli(db, "runs", "list", "--json")  # the journal read in: a requeue would have written `submitted` there
    assert RunStore(db).get_run(run.id).status == "stopped"
    assert len([event for event in RunStore(db).events(run.id) if event.kind == "submitted"]) == submitted
    return final


def steps(db: Path, run: Run) -> list[int]:
    return [point.step for point in RunStore(db).metrics(run.id, key="train/loss")]


def test_a_submitted_run_completes_with_its_metrics_job_id_and_nodes_without_opening_the_store(cluster, tripwire,
                                                                                                tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    tripwire(db)
    run = submit(db, *TINY, "trainer.total_training_steps=20", "--name", "first")
    assert (Path(run.run_dir) / "slurm.sbatch").is_file()
    final = wait_for(db, run, ended)
    assert (final.status, final.exit_reason) == ("completed", None)
    assert steps(db, final) == list(range(1, 21))
    assert final.nodes == socket.gethostname()
    shown = cli(db, "runs", "show", "first").output
    assert re.search(rf"│ Slurm job\s+│ {final.job_id}\s", shown) and re.search(rf"│ nodes\s+│ {final.nodes}\s", shown), shown


def test_a_pending_job_shows_its_reason_and_a_stop_cancels_it(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    run = submit(db, *TINY, "--slurm-arg", "begin=now+3600", "--name", "later")
    expected, deadline = f"later queued: Slurm job pending: BeginTime (job {run.job_id})", time.monotonic() + 60
    while expected not in (listed := cli(db, "runs", "list").output):  # the reason is Slurm's once it has looked
        assert time.monotonic() < deadline, listed
        time.sleep(1.0)
    (row,) = load_runs(RunStore(db))  # what the console shows
    assert (row.status, row.reason) == ("queued", f"Slurm job pending: BeginTime (job {run.job_id})")
    cli(db, "runs", "stop", "later")
    final = RunStore(db).get_run(run.id)
    assert (final.status, final.exit_reason) == ("stopped", "cancelled by user while queued in Slurm")


def test_a_job_slurm_refuses_is_recorded_failed_with_sbatch_s_reason(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["train", *TINY, "--slurm", "--partition", "nosuch", "--name", "refused", "--db", str(db)])
    assert result.exit_code == 2 and "sbatch --parsable failed" in result.output
    run = RunStore(db).get_run("refused")
    assert run.status == "failed" and "invalid partition" in run.exit_reason.lower(), run.exit_reason


def test_a_job_cancelled_outside_dreamlab_is_recorded_by_runs_list(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    run = submit(db, *TINY, "--slurm-arg", "begin=now+3600", "--name", "dropped")
    subprocess.run(["scancel", run.job_id], check=True)
    final = wait_for(db, run, ended, timeout=30)
    assert (final.status, final.exit_reason) == (
        "stopped", f"Slurm job cancelled (job {run.job_id}; the run recorded no ending)")


def test_a_run_stopped_mid_way_ends_stopped_with_a_checkpoint(cluster, tripwire, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    tripwire(db)
    run = submit(db, *TINY, "trainer.total_training_steps=1000", "--name", "halted")
    wait_for(db, run, lambda found: found.progress is not None and found.progress.step >= 3)
    output = cli(db, "runs", "stop", "halted").output
    assert f"sent SIGTERM to Slurm job {run.job_id}" in output
    final = RunStore(db).get_run(run.id)
    assert (final.status, final.exit_reason) == ("stopped", "stop requested (SIGTERM/SIGINT)")
    last = steps(db, final)[-1]
    assert 3 <= last < 1000
    assert [step for step, _ in complete_checkpoints(Path(final.run_dir))] == [last]
    assert ("stop requested", f"scancel --signal=TERM {run.job_id}; scancel after 60 s") in [
        (event.kind, event.message) for event in RunStore(db).events(run.id)]


def test_a_run_at_its_time_limit_checkpoints_ends_stopped_and_resume_continues_it(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    run = submit(db, *TIME_LIMITED, "--name", "limited")
    stopped = wait_for(db, run, ended)
    assert (stopped.status, stopped.exit_reason) == (
        "stopped", f"Slurm time limit (--time=1) of job {run.job_id}: checkpointed before it")
    ((checkpoint, _),) = complete_checkpoints(Path(run.run_dir))
    assert checkpoint == steps(db, stopped)[-1]
    cli(db, "train", "--resume", "limited", "--slurm", "--time", "5")
    resumed = RunStore(db).get_run(run.id)
    assert resumed.status == "queued" and resumed.job_id != run.job_id
    wait_for(db, resumed, lambda found: stepped_past(found, checkpoint))
    final = stop(db, resumed)
    assert f"resumed from step {checkpoint}" in [event.message for event in RunStore(db).events(run.id)]
    assert steps(db, final) == list(range(1, steps(db, final)[-1] + 1))  # the second job went on from the checkpoint


def test_a_time_limit_warning_mid_run_checkpoints_and_resume_completes_the_run(cluster, tmp_path):
    """The warning is sent by hand, as Slurm sends `--signal=B:USR1@N` (to the batch shell), as soon as the job's
    log shows its first step: the 199 steps left take this tiny model seconds even on a fast machine, against a
    fraction of one for the warning to land. The test above has Slurm's own clock send it."""
    db = tmp_path / "runs" / "dreamlab.db"
    run = submit(db, *TINY, "trainer.total_training_steps=200", "trainer.slurm_signal_s=30", "--time", "5",
                 "--name", "warned")
    log, deadline = Path(run.run_dir, "train.log"), time.monotonic() + 240
    while not (log.exists() and re.search(r"^step 1 ", log.read_text(errors="replace"), re.M)):
        assert time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else "no train.log"
        time.sleep(0.05)
    subprocess.run(["scancel", "--batch", "--signal=USR1", run.job_id], check=True)
    stopped = wait_for(db, run, ended)
    assert (stopped.status, stopped.exit_reason) == (
        "stopped", f"Slurm time limit (--time=5) of job {run.job_id}: checkpointed before it")
    ((checkpoint, _),) = complete_checkpoints(Path(run.run_dir))
    assert checkpoint == steps(db, stopped)[-1] < 200
    cli(db, "train", "--resume", "warned", "--slurm")
    final = wait_for(db, RunStore(db).get_run(run.id), ended, timeout=900)  # a busy machine: seconds a step
    assert (final.status, final.exit_reason) == ("completed", None)
    assert steps(db, final) == list(range(1, 201))
    assert f"resumed from step {checkpoint}" in [event.message for event in RunStore(db).events(run.id)]


def test_requeue_resubmits_a_run_stopped_at_its_time_limit_and_a_user_stop_ends_the_chain(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    # Three minutes: the resubmitted job has a minute or more before its own warning, time to see it train and stop it.
    run = submit(db, *LONG, "trainer.slurm_signal_s=30", "--time", "3", "--requeue", "--name", "again")
    resumed = wait_for(db, run, lambda found: stepped_past(found, resumed_from(db, run)), timeout=420)
    events = [(event.kind, event.message) for event in RunStore(db).events(run.id)]
    assert ("stopped", f"Slurm time limit (--time=3) of job {run.job_id}: checkpointed before it; resubmitted "
                       "(trainer.slurm_requeue)") in events
    assert len([kind for kind, _ in events if kind == "submitted"]) == 2
    stop(db, resumed)


def test_a_preempted_run_checkpoints_ends_stopped_and_requeue_resumes_it(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    run = submit(db, *LONG, "--requeue", "--name", "bumped")
    wait_for(db, run, lambda found: stepped_past(found, 0))
    subprocess.run(["sbatch", "--partition", "urgent", "--ntasks", str(os.cpu_count()), "--output", "/dev/null",
                    "--wrap", "sleep 5"], check=True, capture_output=True)
    resumed = wait_for(db, run, lambda found: stepped_past(found, resumed_from(db, run)), timeout=300)
    events = [(event.kind, event.message) for event in RunStore(db).events(run.id)]
    assert ("stopped", f"preempted by Slurm (job {run.job_id}): checkpointed in its grace time; resubmitted "
                       "(trainer.slurm_requeue)") in events
    stop(db, resumed)


def test_a_job_with_two_tasks_trains_two_fsdp_ranks_through_the_c10d_rendezvous(cluster, tmp_path):
    """Two torchrun agents (what two nodes run) on this one node, one rank each, meeting at the first node's store."""
    db = tmp_path / "runs" / "dreamlab.db"
    run = submit(db, *TINY, "trainer.total_training_steps=6", "--slurm-arg", "ntasks-per-node=2", "--name", "agents")
    final = wait_for(db, run, ended)
    assert (final.status, final.exit_reason) == ("completed", None)
    assert steps(db, final) == list(range(1, 7))
    assert "device cpu x 2 processes" in Path(run.run_dir, "train.log").read_text()


def test_a_job_with_two_processes_per_node_trains_two_fsdp_ranks(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    run = submit(db, *TINY, "trainer.total_training_steps=6", "trainer.nproc_per_node=2", "--name", "pair")
    final = wait_for(db, run, ended)
    assert (final.status, final.exit_reason) == ("completed", None)
    assert steps(db, final) == list(range(1, 7))
    assert "device cpu x 2 processes" in Path(run.run_dir, "train.log").read_text()


def test_a_sweep_submits_every_point_as_its_own_job(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    cli(db, "sweep", *TINY, "trainer.total_training_steps=4", "optim.lr=1e-3,2e-3", "--slurm", "--name", "grid")
    runs = RunStore(db).list_runs()
    assert sorted(run.name for run in runs) == ["grid-1", "grid-2"]
    assert len({run.sweep_id for run in runs}) == 1 and len({run.job_id for run in runs}) == 2
    for run in runs:
        final = wait_for(db, run, ended)
        assert (final.status, steps(db, final)) == ("completed", [1, 2, 3, 4])


def eval_jobs(db: Path) -> list[dict]:
    """`dreamlab evals list --json`: each eval job as Slurm and its journal say, after reading the journals in."""
    return json.loads(cli(db, "evals", "list", "--json").output)


def test_an_eval_submitted_to_slurm_records_its_samples_and_job_id_without_opening_the_store(cluster, tripwire,
                                                                                             tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    tripwire(db)
    output = cli(db, "eval", "--model", "tiny", "--limit", "2", "--alg", "entropy", "--steps", "4", "--slurm").output
    job_id = re.search(r"as Slurm job (\d+) \(queued\)", output).group(1)
    (job,) = RunStore(db).list_eval_jobs()
    assert (job.launcher, job.job_id, job.status) == ("slurm", job_id, "queued")
    assert "--db" not in job.command and str(db) not in Path(job.folder, "slurm.sbatch").read_text()
    deadline = time.monotonic() + 180
    while (found := eval_jobs(db)[0])["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"eval job {job_id} still {found['status']}: {found['reason']}"
        time.sleep(1.0)
    assert (found["status"], found["slurm_job"], found["nodes"], found["reason"]) == (
        "completed", job_id, socket.gethostname(), None)
    (record,) = RunStore(db).list_evals()
    assert (found["eval_ids"], found["n_done"], found["n_total"], found["model"]) == ([record.id], 2, 2, "tiny")
    assert (record.status, record.n_done, record.alg, record.steps) == ("completed", 2, "entropy", 4)
    assert [sample["idx"] for sample in RunStore(db).eval_samples(record.id)] == [0, 1]
    listed = cli(db, "evals", "list").output
    assert re.search(rf"│\s*{job.id} │ completed │ arithm.*│ tiny\s*│\s*2/2", listed), listed


def test_a_pending_eval_job_shows_its_reason_and_one_cancelled_outside_reads_stopped(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    cli(db, "eval", "--model", "tiny", "--limit", "2", "--slurm", "--slurm-arg", "begin=now+3600")
    deadline = time.monotonic() + 60
    while (job := eval_jobs(db)[0])["reason"] != f"Slurm job pending: BeginTime (job {job['slurm_job']})":
        assert time.monotonic() < deadline and job["status"] == "queued", job  # the reason is Slurm's once it has looked
        time.sleep(1.0)
    subprocess.run(["scancel", job["slurm_job"]], check=True)
    deadline = time.monotonic() + 30
    while (job := eval_jobs(db)[0])["status"] == "queued":
        assert time.monotonic() < deadline, job
        time.sleep(1.0)
    assert (job["status"], job["reason"]) == (
        "stopped", f"Slurm job cancelled (job {job['slurm_job']}; the eval recorded no ending)")


def test_evals_stop_cancels_a_pending_slurm_eval_job(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    cli(db, "eval", "--model", "tiny", "--limit", "2", "--slurm", "--slurm-arg", "begin=now+3600")
    (job,) = eval_jobs(db)
    output = cli(db, "evals", "stop", str(job["id"])).output
    assert f"cancelled pending Slurm job {job['slurm_job']}" in output, output
    ended = slurm_jobs.job_state(job["slurm_job"])
    assert ended is None or slurm_jobs.map_state(ended.state)[0] == "stopped", ended
    (job,) = eval_jobs(db)
    assert (job["status"], job["reason"]) == ("stopped", "cancelled by user while queued in Slurm")


def test_evals_stop_sends_sigterm_to_a_running_slurm_eval_job_which_ends_stopped_with_its_samples(cluster, tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    # Far more samples than the stop below leaves it time for (one at a time, three cells): it is stopped mid-way.
    cli(db, "eval", "--model", "tiny", "--limit", "1000", "--steps", "32,64,128", "--batch-size", "1", "--slurm")
    deadline = time.monotonic() + 180
    while not ((job := eval_jobs(db)[0])["status"] == "running" and job["n_done"] >= 2):
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(1.0)
    output = cli(db, "evals", "stop", str(job["id"]), "--grace", "60").output
    assert f"sent SIGTERM to Slurm job {job['slurm_job']}" in output, output
    assert re.search(rf"eval job {job['id']} stopped: \d+/3000 samples kept\n", output), output  # no rerun advice
    (job,) = eval_jobs(db)
    assert (job["status"], job["reason"]) == ("stopped", "stopped by SIGTERM (dreamlab evals stop); finished samples "
                                                         "are kept"), job
    records = RunStore(db).list_evals()
    kept = sum(len(RunStore(db).eval_samples(record.id)) for record in records)
    assert 2 <= job["n_done"] == kept < job["n_total"] == 3000
    assert "interrupted" in {record.status for record in records}
