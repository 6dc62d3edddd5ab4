"""Evals as Slurm jobs: submitting one (recorded in `eval_jobs`, queued with its job id) and keeping its state true.

The job runs `dreamlab eval ... --job-dir FOLDER` and records into FOLDER/journal.jsonl, never the store;
`refresh_eval_jobs` asks Slurm about the unfinished jobs, reads their journals in, and records what
Slurm says of those whose journal has no ending (pending and why, running where, or ended how).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from dreamlab.store import EvalJob, RunStore
from dreamlab.store.ingest import ingest_eval_jobs
from dreamlab.store.models import ModelChoice
from dreamlab.train import slurm

CHOICE_FILE = "eval.json"


def new_job_name() -> str:
    """A unique, sortable eval job name: eval-YYYYmmdd-HHMMSS-xxxx."""
    return f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def job_folder(store: RunStore, name: str) -> Path:
    """Where eval job `name` keeps its script, log, journal and model choice (on the shared runs folder)."""
    return store.runs_dir / "evals" / name


def submit_eval_job(store: RunStore, command: list[str], choice: ModelChoice, options: list[str], name: str) -> EvalJob:
    """Record the eval job, write its folder (the model chosen here, the script), sbatch it; queued with its job id.

    `command` is the eval without the Slurm options; it gets `--job-dir FOLDER`. A job Slurm refuses is
    recorded failed with sbatch's reason, and the SlurmError raised."""
    folder = job_folder(store, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHOICE_FILE).write_text(json.dumps(vars(choice), indent=2))
    command = [*command, "--job-dir", str(folder.resolve())]
    job = store.create_eval_job(name, folder, command)
    try:
        job_id = slurm.submit_command(command, folder / slurm.SCRIPT_NAME, options)
    except slurm.SlurmError as error:
        store.update_eval_job(job.id, status="failed", reason=f"not submitted: {error}", ended=time.time())
        raise
    return store.update_eval_job(job.id, job_id=job_id, reason=f"Slurm job {job_id} submitted")


def read_choice(folder: Path) -> ModelChoice:
    """The model the submitting host chose for this eval job (written into its folder at submission)."""
    return ModelChoice(**json.loads((folder / CHOICE_FILE).read_text()))


def refresh_eval_jobs(store: RunStore) -> list[EvalJob]:
    """Ask Slurm about every unfinished eval job, read the journals in, record Slurm's word where the job said nothing;
    every eval job, newest first."""
    unfinished = [job for job in store.list_eval_jobs() if not job.finished and job.job_id]
    try:
        states = slurm.job_states(job.job_id for job in unfinished)  # before the journals: see ingest_runs' callers
    except slurm.SlurmError:
        states = {}
    ingest_eval_jobs(store)
    for job in unfinished:
        job = store.get_eval_job(job.id)
        state = states.get(job.job_id)
        if job.finished or state is None:
            continue
        status, reason = slurm.map_state(state.state, state.reason, state.exit_code)
        if status == "queued":
            store.update_eval_job(job.id, status="queued", reason=f"{reason} (job {job.job_id})")
        elif status == "running":
            store.update_eval_job(job.id, status="running", reason=None, nodes=job.nodes or state.nodes)
        else:
            ending = status if status in ("completed", "stopped") else "failed"
            store.update_eval_job(job.id, status=ending, ended=time.time(),
                                  reason=f"{reason or 'Slurm job completed'} (job {job.job_id}; the eval recorded no "
                                         "ending)")
    return store.list_eval_jobs()
