"""The process torchrun starts on every rank: `python -m dreamlab.train.worker --run-dir DIR [--db DB]`.

Rank 0 records metrics, checkpoints and the final status in the run store (the launcher already marked
the run started with torchrun's process group); its heartbeat thread beats from the start of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: `except Exception` misses it

from dreamlab.config import recipe_from_dict
from dreamlab.train.heartbeat import HeartbeatThread
from dreamlab.train.slurm import SLURM_STOPS
from dreamlab.train.trainer import SIGNAL_STOP_REASON, Trainer, device_type


def say(text: str) -> None:
    """Print a log line; a log on a full disk must not stop the store from hearing how the run ended."""
    try:
        print(text, flush=True)
    except OSError:
        pass


def print_traceback() -> None:
    """The current exception's traceback to the log, if the log can still be written."""
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except OSError:
        pass


class StoreReporter:
    """Rank 0's link to the run store (a no-op without a database)."""

    def __init__(self, db: str | None, run_id: int | None) -> None:
        self.store = None
        self.run_id = run_id
        if db and run_id is not None:
            from dreamlab.store import RunStore

            self.store = RunStore(db)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        say(f"step {step} " + " ".join(f"{k}={v:.5g}" for k, v in values.items()))
        if self.store:
            self.store.record_metrics(self.run_id, step, values)

    def checkpoint(self, step: int, path: Path) -> None:
        say(f"checkpoint step {step}: {path}")
        if self.store:
            self.store.record_checkpoint(self.run_id, step, str(path / "model"), kind="model+state", complete=True)
            for old in self.store.checkpoints(self.run_id):  # rotated out by trainer.max_checkpoints
                if old.complete and not Path(old.path).exists():
                    self.store.record_checkpoint(self.run_id, old.step, old.path, kind=old.kind, complete=False)

    def event(self, kind: str, message: str) -> None:
        say(message)
        if self.store:
            self.store.record_event(self.run_id, kind, message)

    def finish(self, status: str, reason: str | None) -> None:
        if self.store:
            self.store.finish(self.run_id, status, exit_reason=reason)
        say(f"run {status}" + (f": {reason}" if reason else ""))


def die_with_torchrun() -> None:
    """Ask Linux to SIGKILL this rank when torchrun dies.

    torchrun starts each rank in a session of its own, so a signal to torchrun's process group (a
    `kill -9`, or `runs stop` after its grace period) would otherwise leave orphan ranks training.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # torchrun already died before the request was in place
        os._exit(1)


def start_heartbeat(db: str | None, run_id: int | None, interval_s: float) -> HeartbeatThread | None:
    """Rank 0's heartbeat thread, beating from before the model loads until the worker ends (None elsewhere)."""
    if not db or run_id is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    beat = HeartbeatThread(db, run_id, interval_s)
    beat.start()
    return beat


def mark_slurm_job_started(db: str | None, run_id: int | None) -> None:
    """Rank 0 of a Slurm job marks the queued run running, with the job's node list (the launcher is not here)."""
    if not db or run_id is None or int(os.environ.get("RANK", "0")) != 0:
        return
    from dreamlab.store import RunStore, StoreError

    store = RunStore(db)
    try:
        store.mark_started(run_id, pid=os.getpid())
    except StoreError as error:  # still `running`: a job Slurm requeued after its node failed
        say(f"run store: {error}; continuing")
    store.record_nodes(run_id, os.environ.get("SLURM_JOB_NODELIST", ""))
    store.close()


def slurm_stop_reason(reason: str) -> str:
    """A signal that is Slurm preempting the job says so (a time limit already says so through the stop file)."""
    from dreamlab.train import slurm

    job_id = os.environ.get("SLURM_JOB_ID")
    if reason != SIGNAL_STOP_REASON or not job_id:
        return reason
    try:
        return f"{slurm.PREEMPTED_REASON} (job {job_id}): checkpointed in its grace time" if slurm.preempted(job_id) else reason
    except slurm.SlurmError:
        return reason


def requeue(recipe, db: str, run_id: int) -> None:
    """Submit the stopped run again as a new Slurm job (it resumes from the checkpoint just written)."""
    from dreamlab.store import RunStore
    from dreamlab.train import slurm

    store = RunStore(db)
    try:
        run = slurm.submit(store, store.get_run(run_id), recipe, Path(db))
        say(f"resubmitted as Slurm job {run.job_id}")
    except Exception as error:  # noqa: BLE001 - the run already ended stopped; say why it was not resubmitted
        store.record_event(run_id, "note", f"not resubmitted: {error}")
        say(f"not resubmitted: {error}")
    finally:
        store.close()



def cpu_thread_count(configured: int | None, cpus: int, local_processes: int) -> int:
    """CPU threads per process: the recipe's `trainer.cpu_threads`, else this process's share of the cores."""
    # torchrun pins OMP_NUM_THREADS=1, so the share is set here rather than left to the environment.
    return configured or max(1, cpus // local_processes)

def main(argv: list[str] | None = None) -> int:
    """Run one rank of a training run described by DIR/run.json."""
    die_with_torchrun()
    parser = argparse.ArgumentParser(prog="dreamlab.train.worker")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--db", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slurm", action="store_true", help="started by a Slurm job (rank 0 marks the run running)")
    args = parser.parse_args(argv)
    spec = json.loads((args.run_dir / "run.json").read_text())
    recipe = recipe_from_dict(spec["recipe"])
    if args.slurm:
        mark_slurm_job_started(args.db, spec.get("run_id"))
    beat = start_heartbeat(args.db, spec.get("run_id"), recipe.trainer.heartbeat_s)
    use_cuda = device_type(recipe.trainer.device) == "cuda"
    if not use_cuda:
        torch.set_num_threads(cpu_thread_count(recipe.trainer.cpu_threads, os.cpu_count() or 1,
                                               int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    reporter = StoreReporter(args.db, spec.get("run_id")) if rank == 0 else StoreReporter(None, None)
    status, reason, resubmit = "failed", None, False
    try:
        trainer = Trainer(recipe, args.run_dir, metrics=reporter.metrics, on_checkpoint=reporter.checkpoint,
                          on_step=beat.step_done if beat else None)
        trainer.setup()
        if rank == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            say(f"device {trainer.device} x {dist.get_world_size()} processes"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
                + ("" if use_cuda else f", {torch.get_num_threads()} threads each"))
            for note in trainer.notes:
                reporter.event("note", note)
        if args.resume:
            resumed = trainer.resume()
            if rank == 0:
                reporter.event("resumed", f"resumed from step {resumed}{trainer.resume_note}" if resumed is not None
                               else "no checkpoint: starting fresh")
        outcome = trainer.fit()
        status, reason = outcome.status, outcome.reason
        if args.slurm and status == "stopped" and rank == 0:
            reason = slurm_stop_reason(reason)
            if recipe.trainer.slurm_requeue and reason.startswith(SLURM_STOPS):
                reason, resubmit = f"{reason}; resubmitted (trainer.slurm_requeue)", True
    except (Exception, CheckpointException) as error:  # noqa: BLE001 - any failure must be recorded before the process dies
        reason = f"{type(error).__name__}: {error}"
        print_traceback()
    finally:
        if beat:
            beat.stop()
        if rank == 0:
            reporter.finish(status, reason)
            if resubmit and args.db:
                requeue(recipe, args.db, spec["run_id"])
        dist.destroy_process_group()
    return 0 if status in ("completed", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
