"""The torchrun command line (torch-free): how many processes on how many nodes, and where they meet.

Training runs (`launcher`) and data-parallel evals (`dreamlab eval --nproc-per-node`) both start
their processes with this prefix followed by their own module.
"""

from __future__ import annotations

import sys


def torchrun_prefix(nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
                    rdzv_id: str = "none") -> list[str]:
    """`python -m torch.distributed.run ...` up to the module to run; ValueError for a layout torchrun cannot start."""
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"processes per node and nodes must be >= 1; got {nproc_per_node} and {nnodes}")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}"]
    if nnodes == 1 and rdzv_endpoint is None:
        return [*command, "--standalone"]
    if rdzv_endpoint is None:
        raise ValueError("a multi-node launch needs the rendezvous endpoint: host:port of the first node")
    host, _, port = rdzv_endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"the rendezvous endpoint must be HOST:PORT; got {rdzv_endpoint!r}")
    return [*command, "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
