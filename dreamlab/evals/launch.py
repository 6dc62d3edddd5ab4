"""Starting a data-parallel `dreamlab eval` (torch-free): its own command line under torchrun, attached to this terminal.

The ranks run `python -m dreamlab eval` with the same options less the process layout, so an eval
started any other way (detached, a Slurm job, a sweep) that asks for processes composes with this.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

from dreamlab.train.torchrun import torchrun_prefix

LAYOUT_PARAMS = frozenset({"nproc_per_node", "nnodes", "rdzv_endpoint"})


def needs_torchrun(nproc_per_node: int, nnodes: int, rdzv_endpoint: str | None, *, slurm: bool = False,
                   device: str = "auto") -> bool:
    """Whether this layout asks for torchrun; ValueError naming the flag for one that cannot start."""
    for flag, value in (("--nproc-per-node", nproc_per_node), ("--nnodes", nnodes)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1; got {value}")
    if nnodes > 1 and rdzv_endpoint is None:
        raise ValueError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT: the first node's address, the same "
                         "on every node")
    if slurm and (nnodes > 1 or rdzv_endpoint is not None):
        raise ValueError("--slurm submits a one-node eval job: give it --nproc-per-node, not --nnodes / --rdzv-endpoint")
    wanted = nproc_per_node * nnodes > 1 or rdzv_endpoint is not None
    if wanted and device.startswith("cuda:"):
        raise ValueError(f"--device {device} would put every process on one GPU: use --device cuda (or auto), "
                         "which gives each process the GPU of its local rank")
    if wanted and not slurm and "LOCAL_RANK" in os.environ:
        raise ValueError("this process already runs under torchrun (LOCAL_RANK is set): run `dreamlab eval` there "
                         "without --nproc-per-node / --nnodes / --rdzv-endpoint")
    return wanted


def torchrun_eval_command(eval_argv: list[str], db: Path, nproc_per_node: int, nnodes: int = 1,
                          rdzv_endpoint: str | None = None) -> list[str]:
    """torchrun running `dreamlab eval EVAL_ARGV --db DB` on every rank.

    The rendezvous id is derived from the eval's options, so the same command typed on every node
    joins the same rendezvous.
    """
    rdzv_id = "dreamlab-eval-" + hashlib.sha256(json.dumps(eval_argv).encode()).hexdigest()[:12]
    try:
        prefix = torchrun_prefix(nproc_per_node, nnodes, rdzv_endpoint, rdzv_id=rdzv_id)
    except ValueError as error:
        raise ValueError(f"--rdzv-endpoint: {error}") from None
    return [*prefix, "-m", "dreamlab", "eval", *eval_argv, "--db", str(db)]


def run_attached(command: list[str]) -> int:
    """Run torchrun in the foreground and return its exit code.

    torchrun starts each rank in a session of its own: Ctrl-C reaches torchrun (and this process, which
    keeps waiting), and torchrun stops its ranks with SIGTERM, which rank 0 records as an interruption.
    A SIGTERM sent to this process is passed on to torchrun.
    """
    process = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
    interrupted = False
    try:
        while True:
            try:
                code = process.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted and code != 0:
        return 130  # as a 1-process eval exits on Ctrl-C (torchrun itself exits 1)
    return 128 - code if code < 0 else code
