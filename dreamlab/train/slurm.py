"""Runs through Slurm: the sbatch script, submitting it, and what Slurm says of a job (squeue, scontrol, sacct).

The script runs one torchrun per node under srun, with the c10d rendezvous on the allocation's first
node. `--signal=B:USR1@N` warns the script N seconds before the time limit; it writes the run's
`stop-request` file, which the trainer answers as it answers `runs stop` (scancel --signal=TERM): a
checkpoint, then `stopped`, with the file's text as the reason. A file, not a signal to the ranks,
because Slurm may send the warning up to a minute early, before the ranks have their handlers, and
because torchrun kills ranks 30 s after it is signalled itself. Preemption SIGTERMs the ranks
directly; rank 0 tells it from a `runs stop` by the job's PreemptTime (`preempted`). The job never writes the
store: rank 0 appends to the run folder's journal and the submitting host reads it in (`dreamlab.store.ingest`).
Imports no torch.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dreamlab.config import Recipe, RecipeError
from dreamlab.store import Run, RunStore, StoreError
from dreamlab.store.health import Health, Liveness, Thresholds, judge
from dreamlab.store.journal import JOURNAL_NAME
from dreamlab.train import STOP_FILE

SCRIPT_NAME = "slurm.sbatch"
TIME_LIMIT_REASON = "Slurm time limit"
PREEMPTED_REASON = "preempted by Slurm"
# Stops that Slurm asked for: with trainer.slurm_requeue the run resubmits itself after them.
SLURM_STOPS = (TIME_LIMIT_REASON, PREEMPTED_REASON)
# Environment a job must not hand on to the job it submits (its own job's and torchrun's variables).
_INHERITED = re.compile(r"^(SLURM_(?!CONF$)|SBATCH_|SRUN_|TORCHELASTIC_|RANK$|LOCAL_RANK$|GROUP_RANK$|ROLE_RANK$|"
                        r"WORLD_SIZE$|LOCAL_WORLD_SIZE$|MASTER_ADDR$|MASTER_PORT$|GROUP_WORLD_SIZE$|ROLE_WORLD_SIZE$|"
                        r"ROLE_NAME$|OMP_NUM_THREADS$)")
TIMEOUT_S = 30.0


class SlurmError(StoreError):
    """A Slurm command failed or is missing; the message says which and what it printed."""


@dataclass(frozen=True)
class JobState:
    """One job as Slurm reports it: state (PENDING, RUNNING, ...), reason, node list, exit code."""

    job_id: str
    state: str
    reason: str | None = None
    nodes: str | None = None
    exit_code: str | None = None
    source: str = "squeue"


# Slurm's job states -> (run status, reason); None for the states where the run itself says more.
_ENDINGS = {
    "COMPLETED": ("completed", None),
    "FAILED": ("failed", "Slurm job failed"),
    "CANCELLED": ("stopped", "Slurm job cancelled"),
    "TIMEOUT": ("stopped", "Slurm time limit reached"),
    "NODE_FAIL": ("failed", "Slurm node failure"),
    "PREEMPTED": ("stopped", PREEMPTED_REASON),
    "OUT_OF_MEMORY": ("failed", "Slurm job ran out of memory"),
    "BOOT_FAIL": ("failed", "Slurm node failed to boot"),
    "DEADLINE": ("stopped", "Slurm deadline reached"),
}
_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED",
           "STOPPED", "RESIZING", "SPECIAL_EXIT")
_RUNNING = ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT")


def map_state(state: str, reason: str | None = None, exit_code: str | None = None) -> tuple[str, str | None]:
    """A Slurm job state as a run status and reason: PENDING -> queued (why), RUNNING -> running, endings -> theirs."""
    state = state.split()[0].rstrip("+").upper() if state.strip() else "UNKNOWN"  # "CANCELLED by 0", "RUNNING+"
    why = reason if reason and reason not in ("None", "(null)") else None
    if state in _QUEUED:
        return "queued", f"Slurm job {state.lower()}" + (f": {why}" if why else "")
    if state in _RUNNING:
        return "running", None
    if state in _ENDINGS:
        status, text = _ENDINGS[state]
        why = None if state == "CANCELLED" else why  # a job cancelled while pending keeps its pending reason
        details = [part for part in (why, None if exit_code in (None, "0:0") else f"exit code {exit_code}") if part]
        if text is None:
            return status, None
        return status, text + (f" ({', '.join(details)})" if details else "")
    return "failed", f"Slurm job state {state}" + (f": {why}" if why else "")


def available() -> str | None:
    """Why jobs cannot be submitted from here (None when sbatch and squeue are on PATH)."""
    missing = [name for name in ("sbatch", "squeue", "scancel", "scontrol") if shutil.which(name) is None]
    return f"Slurm commands not found: {', '.join(missing)}" if missing else None


def _run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not _INHERITED.match(key)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]}: not found (is Slurm installed on this host?)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {TIMEOUT_S:g} s") from None
    if check and done.returncode != 0:
        raise SlurmError(f"{' '.join(command[:2])} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return done


def job_options(*, name: str, output: Path, nodes: int = 1, partition: str | None = None, account: str | None = None,
                time_limit: str | None = None, gpus_per_node: int | None = None, extra: list[str] = ()) -> list[str]:
    """#SBATCH options for one task per node, output appended to `output`, and extra `KEY=VALUE` options."""
    options = [f"--job-name={name}", f"--output={output}", "--open-mode=append", f"--nodes={nodes}",
               "--ntasks-per-node=1"]
    for key, value in (("partition", partition), ("account", account), ("time", time_limit),
                       ("gpus-per-node", gpus_per_node)):
        if value is not None:
            options.append(f"--{key}={value}")
    for item in extra:
        key, _, value = item.partition("=")
        options.append(f"--{key.strip()}" + (f"={value.strip()}" if value.strip() else ""))
    return options


def sbatch_options(recipe: Recipe, run_dir: Path, name: str) -> list[str]:
    """The run's #SBATCH options: one torchrun task per node, the recipe's partition / time / GPUs, the warning."""
    t = recipe.trainer
    options = job_options(name=f"dreamlab-{name}", output=run_dir / "train.log", nodes=t.nnodes,
                          partition=t.slurm_partition, account=t.slurm_account, time_limit=t.slurm_time,
                          gpus_per_node=t.slurm_gpus_per_node, extra=t.slurm_args)
    options.insert(5, f"--signal=B:USR1@{t.slurm_signal_s}")
    return options


def write_script(recipe: Recipe, run_dir: Path, name: str) -> Path:
    """Write `runs/<run>/slurm.sbatch`: srun starts torchrun on every node, rendezvous on the first.

    The job gets no store path: rank 0 records into the run folder's journal, read in by the submitting host."""
    t = recipe.trainer
    # One torchrun agent per task (one task per node unless slurm_args say otherwise): they meet at the c10d
    # store on the first node, the first agent there serving it.
    worker = [sys.executable, "-m", "torch.distributed.run", "--nnodes=$SLURM_NTASKS",
              f"--nproc-per-node={t.nproc_per_node}", "--rdzv-backend=c10d", '--rdzv-endpoint="$head:$port"',
              '--rdzv-id="$SLURM_JOB_ID"', "-m", "dreamlab.train.worker", "--run-dir", str(run_dir), "--slurm"]
    quoted = " ".join(word if "$" in word else shlex.quote(word) for word in worker)
    limit = f"--time={t.slurm_time}" if t.slurm_time else "the partition's default"
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in sbatch_options(recipe, run_dir, name)), "",
             "# Written by dreamlab train --slurm; resubmitting it continues the run from its newest checkpoint.",
             "set -uo pipefail",
             # A warning that comes while the script starts is remembered, not lost (nor, untrapped, fatal).
             "trap 'warned=1' USR1",
             f"stop_file={shlex.quote(str(run_dir / STOP_FILE))}",
             'rm -f "$stop_file"',
             f"stop_reason={shlex.quote(f'{TIME_LIMIT_REASON} ({limit}) of job')}",
             """warn() { echo "$stop_reason $SLURM_JOB_ID: checkpointed before it" > "$stop_file"; }""",
             "trap warn USR1",
             '[[ -z "${warned:-}" ]] || warn',
             'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             "port=$((20000 + SLURM_JOB_ID % 20000))",
             f"cd {shlex.quote(os.getcwd())}",
             "export PYTHONUNBUFFERED=1",
             # A rerun of this job (Slurm's own requeue after preemption) and a resubmission both resume.
             f'resume=$([[ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 || -e {shlex.quote(str(run_dir / "checkpoints"))} ]] '
             '&& echo --resume)',
             f"srun --kill-on-bad-exit=1 {quoted} $resume &",
             # The trap runs only between commands: wait again after each signal until srun has exited.
             'step=$!; wait "$step"; code=$?',
             'while kill -0 "$step" 2>/dev/null; do wait "$step"; code=$?; done',
             'exit "$code"', ""]
    path = run_dir / SCRIPT_NAME
    path.write_text("\n".join(lines))
    return path


def sbatch(script: Path) -> str:
    """Submit a script with `sbatch --parsable`; its job id."""
    done = _run(["sbatch", "--parsable", str(script)])
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {done.stdout.strip()!r}")
    return job_id


def submit_command(command: list[str], script: Path, options: list[str]) -> str:
    """Write a script that runs `command` once under srun with these #SBATCH options, submit it; the job id."""
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options), "",
             "# Written by dreamlab --slurm.", f"cd {shlex.quote(os.getcwd())}", "export PYTHONUNBUFFERED=1",
             "srun " + " ".join(shlex.quote(word) for word in command), ""]
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("\n".join(lines))
    return sbatch(script)


def submit(store: RunStore, run: Run, recipe: Recipe) -> Run:
    """Write the run's script, sbatch it and record the run queued with the job id (failed if never submitted)."""
    if recipe.trainer.launcher != "slurm":
        raise RecipeError("trainer.launcher: a Slurm submission needs trainer.launcher=slurm")
    run_dir = Path(run.run_dir)
    if run.job_id is None:  # a first submission: a journal here is a deleted run's (`runs rm --keep-folder`)
        (run_dir / JOURNAL_NAME).unlink(missing_ok=True)
    try:
        job_id = sbatch(write_script(recipe, run_dir, run.name))
    except SlurmError as error:
        if run.status == "queued":  # a first submission: the run will never start (a resubmitted one keeps its ending)
            store.end_if_unfinished(run.id, "failed", f"not submitted: {error}")
        raise
    return store.mark_submitted(run.id, job_id)


def job_state(job_id: str) -> JobState | None:
    """What Slurm says of a job now: squeue while it is queued or running, else scontrol (recently ended), else sacct."""
    return job_states([job_id])[job_id]


def job_states(job_ids: Iterable[str]) -> dict[str, JobState | None]:
    """`job_state` of many jobs with one squeue call (scontrol / sacct only for those that left the queue)."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    done = _run(["squeue", "-h", "-j", ",".join(wanted), "-o", "%i|%T|%r|%N"], check=False)
    queued = {}
    for line in done.stdout.splitlines():
        found, state, reason, nodes = (line.split("|") + ["", "", ""])[:4]
        queued[found] = JobState(found, state, reason or None, nodes or None)
    return {job_id: queued.get(job_id) or _ended_job(job_id) for job_id in wanted}


def _ended_job(job_id: str) -> JobState | None:
    done = _run(["scontrol", "-o", "show", "job", job_id], check=False)
    if done.returncode == 0 and "JobState=" in done.stdout:
        fields = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
        return JobState(job_id, fields.get("JobState", "UNKNOWN"), fields.get("Reason"), fields.get("NodeList") or None,
                        fields.get("ExitCode"), source="scontrol")
    if shutil.which("sacct") is None:
        return None
    done = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,Reason,NodeList,ExitCode"], check=False)
    for line in done.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 5 and parts[0] == job_id:
            return JobState(job_id, parts[1], parts[2] or None, parts[3] or None, parts[4] or None, source="sacct")
    return None  # no accounting storage, and too long ago for slurmctld to remember


def watched_jobs(runs: Iterable[Run]) -> dict[str, JobState | None]:
    """The Slurm view of every queued or running Slurm run among `runs`, asked once ({} when Slurm cannot answer)."""
    ids = [run.job_id for run in runs if run.launcher == "slurm" and run.job_id and run.status in ("queued", "running")]
    try:
        return job_states(ids)
    except SlurmError:
        return dict.fromkeys(ids)


def preempted(job_id: str) -> bool:
    """Whether Slurm has begun preempting the job (scontrol shows its PreemptTime once it has)."""
    done = _run(["scontrol", "-o", "show", "job", job_id], check=False)
    fields = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
    return done.returncode == 0 and fields.get("PreemptTime", "None") not in ("None", "Unknown", "")


def cancel(job_id: str, signal_name: str | None = None) -> None:
    """scancel the job (with `signal_name`: signal every process of its steps instead of ending it)."""
    _run(["scancel", *([f"--signal={signal_name}"] if signal_name else []), job_id])


def wait_ended(job_id: str, timeout_s: float, poll_s: float = 1.0) -> JobState | None:
    """Poll until the job has left the queued and running states; its last state (None: Slurm forgot it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = job_state(job_id)
        if state is None or map_state(state.state)[0] not in ("queued", "running") or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)


def slurm_health(run: Run, job: JobState | None, now: float, thresholds: Thresholds) -> Health:
    """A queued or running Slurm run's status from its job's state (and its heartbeats while the job runs)."""
    if job is None:  # Slurm forgot the job (no accounting storage) or cannot be asked
        if run.status == "queued":
            return Health("queued", f"Slurm job {run.job_id}: not known to Slurm now (ended long ago, or Slurm "
                                    "cannot be reached from here)")
        return judge(run, now, Liveness.UNKNOWN, thresholds)
    status, reason = map_state(job.state, job.reason, job.exit_code)
    if status == "queued":
        return Health("queued", f"{reason} (job {job.job_id})")
    if status == "running":
        if run.status == "queued":
            return Health("queued", f"Slurm job {job.job_id} running on {job.nodes or '?'}: rank 0 not started yet")
        return judge(run, now, Liveness.ALIVE, thresholds)
    return Health(status, f"{reason or 'Slurm job completed'} (job {job.job_id}; the run recorded no ending)")
