"""Evals as Slurm jobs: submitting one (an `eval_jobs` row with launcher 'slurm', queued with its job id) and
keeping its state true.

The job runs `dreamlab eval ... --job-dir FOLDER` and records into FOLDER/journal.jsonl, never the store;
`refresh_eval_jobs` asks Slurm about the unfinished jobs, reads their journals in, and records what
Slurm says of those whose journal has no ending (pending and why, running where, or ended how).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from dreamlab.evals.jobs import StopResult
from dreamlab.store import EvalJob, RunStore, StoreError
from dreamlab.store.ingest import ingest_eval_jobs
from dreamlab.store.models import ModelChoice
from dreamlab.train import slurm

CHOICE_FILE = "eval.json"
UNFINISHED = ("queued", "running", "lost")


def new_job_name() -> str:
    """A unique, sortable eval job name: eval-YYYYmmdd-HHMMSS-xxxx."""
    return f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def job_folder(store: RunStore, name: str) -> Path:
    """Where eval job `name` keeps its script, log, journal and model choice (on the shared runs folder)."""
    return store.runs_dir / "evals" / name


def submit_eval_job(store: RunStore, command: list[str], choice: ModelChoice, options: list[str], folder: Path,
                    task: str | None = None) -> EvalJob:
    """Record the eval job, write its folder (the model chosen here, the script), sbatch it; queued with its job id.

    `command` is the eval without the Slurm options; it gets `--job-dir FOLDER`. A job Slurm refuses is
    recorded failed with sbatch's reason, and the SlurmError raised."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHOICE_FILE).write_text(json.dumps(vars(choice), indent=2))
    command = [*command, "--job-dir", str(folder.resolve())]
    job = store.create_eval_job(command, detached=True, run_id=choice.run_id, model=choice.spec, task=task,
                                launcher="slurm", folder=str(folder.resolve()))
    try:
        job_id = slurm.submit_command(command, folder / slurm.SCRIPT_NAME, options)
    except slurm.SlurmError as error:
        store.finish_eval_job(job.id, "failed", f"not submitted: {error}")
        raise
    return store.update_slurm_eval_job(job.id, job_id=job_id, reason=f"Slurm job {job_id} submitted")


def read_choice(folder: Path) -> ModelChoice:
    """The model the submitting host chose for this eval job (written into its folder at submission)."""
    return ModelChoice(**json.loads((folder / CHOICE_FILE).read_text()))


def refresh_eval_jobs(store: RunStore) -> None:
    """Ask Slurm about every unfinished Slurm eval job, read the journals in, record Slurm's word where the job said
    nothing (pending and why, running where, or ended how)."""
    unfinished = [job for job in store.list_eval_jobs() if job.launcher == "slurm" and job.job_id
                  and job.status in UNFINISHED]
    states = {}
    if unfinished:
        try:
            states = slurm.job_states(job.job_id for job in unfinished)  # before the journals: see ingest_runs' callers
        except slurm.SlurmError:
            states = {}
    ingest_eval_jobs(store)
    for job in unfinished:
        job = store.get_eval_job(job.id)
        state = states.get(job.job_id)
        if job.status not in UNFINISHED or state is None:
            continue
        status, reason = slurm.map_state(state.state, state.reason, state.exit_code)
        if status == "queued":
            store.update_slurm_eval_job(job.id, status="queued", reason=f"{reason} (job {job.job_id})")
        elif status == "running":
            store.update_slurm_eval_job(job.id, status="running", reason=None, nodes=job.nodes or state.nodes)
        else:
            ending = status if status in ("completed", "stopped") else "failed"
            store.finish_eval_job(job.id, ending, f"{reason or 'Slurm job completed'} (job {job.job_id}; the eval "
                                                  "recorded no ending)")


def stop_slurm_eval_job(store: RunStore, job: EvalJob, grace_s: float, *, poll_s: float = 1.0,
                        kill_wait_s: float = 30.0, say: Callable[[str], None] = lambda message: None) -> StopResult:
    """scancel a pending job; SIGTERM a running one (it ends stopped, finished samples kept), scancel after `grace_s`;
    its journal is read in before the store is written here."""
    if job.status not in UNFINISHED or not job.job_id:
        raise StoreError(f"eval job {job.id} is not queued or running (status {job.status})")
    result = StopResult(job=job)
    state = slurm.job_state(job.job_id)
    status = slurm.map_state(state.state)[0] if state else None
    if status == "queued":
        slurm.cancel(job.job_id)
        result.signals.append("scancel")
        say(f"cancelled pending Slurm job {job.job_id}")
        result.exited = slurm.wait_ended(job.job_id, kill_wait_s, poll_s) is not None
        ingest_eval_jobs(store)
        result.marked_stopped = store.finish_eval_job(job.id, "stopped", "cancelled by user while queued in Slurm")
        return result
    if status == "running":
        slurm.cancel(job.job_id, "TERM")
        result.signals.append("SIGTERM")
        say(f"sent SIGTERM to Slurm job {job.job_id} of eval job {job.id}; waiting up to {grace_s:g} s")
        ended = slurm.wait_ended(job.job_id, grace_s, poll_s)
        result.exited = ended is None or slurm.map_state(ended.state)[0] not in ("queued", "running")
        if not result.exited:
            slurm.cancel(job.job_id)
            result.signals.append("scancel")
            say(f"still running after {grace_s:g} s: cancelled the job")
            ended = slurm.wait_ended(job.job_id, kill_wait_s, poll_s)
            result.exited = ended is None or slurm.map_state(ended.state)[0] not in ("queued", "running")
    else:
        say(f"Slurm job {job.job_id} has already ended" + (f" ({state.state})" if state else ""))
        result.exited = True
    ingest_eval_jobs(store)  # the job's own ending (stopped, its samples kept) before a guess here
    how = {(): "its Slurm job had already ended", ("SIGTERM",): "SIGTERM"}.get(tuple(result.signals),
                                                                             f"scancel after {grace_s:g} s grace")
    result.marked_stopped = store.finish_eval_job(job.id, "stopped", f"stopped by user ({how}, Slurm job {job.job_id}); "
                                                                     "finished samples are kept")
    return result
