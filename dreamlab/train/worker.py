"""The process torchrun starts on every rank: `python -m dreamlab.train.worker --run-dir DIR [--db DB | --slurm]`.

Rank 0 records metrics, checkpoints and the final status: in the run store (a local run: the launcher
already marked it started with torchrun's process group), or under Slurm in the run folder's journal,
which the submitting host reads into its store. Its heartbeat thread beats from the start of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: `except Exception` misses it

from dreamlab.config import recipe_from_dict
from dreamlab.train.heartbeat import HeartbeatThread
from dreamlab.train.sinks import RecordSink, sink_factory
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


class Reporter:
    """Rank 0's link to the run's record: the store, or a Slurm job's journal (a no-op without either)."""

    def __init__(self, sink: RecordSink | None) -> None:
        self.sink = sink

    def metrics(self, step: int, values: dict[str, float]) -> None:
        say(f"step {step} " + " ".join(f"{k}={v:.5g}" for k, v in values.items()))
        if self.sink:
            self.sink.write("metrics", step=step, values=values)

    def checkpoint(self, step: int, path: Path) -> None:
        say(f"checkpoint step {step}: {path}")
        if self.sink:
            self.sink.write("checkpoint", step=step, path=str(path / "model"))

    def event(self, kind: str, message: str) -> None:
        say(message)
        if self.sink:
            self.sink.write("event", event=kind, message=message)

    def finish(self, status: str, reason: str | None) -> None:
        if self.sink:
            self.sink.write("finish", status=status, reason=reason)
        say(f"run {status}" + (f": {reason}" if reason else ""))

    def close(self) -> None:
        if self.sink:
            self.sink.close()


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


def start_heartbeat(open_sink: Callable[[], RecordSink] | None, interval_s: float) -> HeartbeatThread | None:
    """Rank 0's heartbeat thread, beating from before the model loads until the worker ends (None elsewhere)."""
    if open_sink is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    beat = HeartbeatThread(open_sink, interval_s)
    beat.start()
    return beat


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


def requeue(run_dir: Path, reporter: Reporter) -> None:
    """Submit the run's script again as a new Slurm job (it resumes from the checkpoint just written)."""
    from dreamlab.train import slurm

    try:
        job_id = slurm.sbatch(run_dir / slurm.SCRIPT_NAME)
    except slurm.SlurmError as error:  # the run already ended stopped; say why it was not resubmitted
        reporter.event("note", f"not resubmitted: {error}")
        return
    say(f"resubmitted as Slurm job {job_id}")
    if reporter.sink:
        reporter.sink.write("submitted", job_id=job_id)



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
    parser.add_argument("--slurm", action="store_true",
                        help="started by a Slurm job: rank 0 records into the run folder's journal, never the store")
    args = parser.parse_args(argv)
    spec = json.loads((args.run_dir / "run.json").read_text())
    recipe = recipe_from_dict(spec["recipe"])
    open_sink = sink_factory(args.run_dir, args.db, spec.get("run_id"), journal=args.slurm)
    is_rank0 = int(os.environ.get("RANK", "0")) == 0
    reporter = Reporter(open_sink() if open_sink and is_rank0 else None)
    if args.slurm and reporter.sink:  # the launcher is not here to mark the queued run running
        reporter.sink.write("started", pid=os.getpid(), nodes=os.environ.get("SLURM_JOB_NODELIST", ""))
    beat = start_heartbeat(open_sink, recipe.trainer.heartbeat_s)
    use_cuda = device_type(recipe.trainer.device) == "cuda"
    if not use_cuda:
        torch.set_num_threads(cpu_thread_count(recipe.trainer.cpu_threads, os.cpu_count() or 1,
                                               int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
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
            if resubmit:
                requeue(args.run_dir, reporter)
            reporter.close()
        dist.destroy_process_group()
    return 0 if status in ("completed", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
