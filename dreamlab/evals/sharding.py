"""Data-parallel evals under torchrun: one plan on every rank, batches dealt out, rows gathered to global rank 0.

Every rank builds the same plan (task, samples, cells) from the same command line and loads the
model on its own device. Global rank 0 alone opens the store: for each cell it forms the batches of
the samples not yet recorded exactly as one process would (sorted by prompt length, cut every
batch size) and broadcasts their indices; rank r takes batches r, r + world, r + 2 world, ...; after
each round the scored rows are gathered to rank 0, which records them in one transaction. A sample
is computed in the same batch, with the same seed, as in a 1-process eval, so the results match it
sample by sample, and a resumed eval skips every recorded sample whichever rank computed it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.evals.harness import (EvalPlan, Progress, Work, check_context, generate_and_score, history_indices,
                                    run_plan, tokenize_prompts)
from dreamlab.evals.tasks import Sample

T = TypeVar("T")
# A round waits for its slowest rank's batch, and rank 0 also scores and writes between rounds: a
# 7B batch of long prompts at hundreds of steps can take many minutes, far past NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the eval: global rank, world size, rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one process that opens the store and prints."""
        return self.rank == 0


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The layout torchrun gives (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
    try:
        return Ranks(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers; got {environ.get('RANK')!r} / "
                         f"{environ.get('WORLD_SIZE')!r} / {environ.get('LOCAL_RANK')!r}") from None


def rank_device(ranks: Ranks, device: str) -> str:
    """The device this rank evaluates on: `auto` and `cuda` mean cuda:LOCAL_RANK when there is CUDA."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank}"
    if device.startswith("cuda:") and ranks.world > 1:
        raise ValueError(f"--device {device} would put every process on one GPU: use --device cuda (or auto), "
                         "which gives each process the GPU of its local rank")
    return "cpu" if device == "auto" else device


def join(ranks: Ranks, device: str) -> None:
    """Join torchrun's process group: NCCL on GPUs (each rank on its own), gloo on the CPU.

    SIGTERM (torchrun's answer to a failed rank, or a stop) becomes KeyboardInterrupt, so rank 0 marks
    the eval interrupted instead of leaving it running.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=torch.device(device))
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    if dist.get_rank() != ranks.rank or dist.get_world_size() != ranks.world:
        raise RuntimeError(f"process group rank {dist.get_rank()}/{dist.get_world_size()} does not match the "
                           f"environment's {ranks.rank}/{ranks.world}")


def leave() -> None:
    """Leave the process group after a finished eval."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def from_main(ranks: Ranks, compute: Callable[[], T]) -> T:
    """`compute()` on rank 0 (the store lives there); its result, or its exception raised, on every rank."""
    if ranks.world == 1:
        return compute()
    message: list[Any] = [None]
    if ranks.is_main:
        try:
            message[0] = (compute(), None)
        except Exception as error:  # every rank stops with it, not only rank 0
            message[0] = (None, error)
    dist.broadcast_object_list(message, src=0)
    value, error = message[0]
    if error is not None:
        raise error
    return value


def _broadcast(job: Any) -> Any:
    message = [job]
    dist.broadcast_object_list(message, src=0)
    return message[0]


def rounds_of(batches: list[list[Sample]], work: Work, ranks: Ranks) -> Iterator[list[dict[str, Any]]]:
    """Rank r scores batches r, r + world, ...; each round's rows gathered on rank 0 (in batch order; [] elsewhere)."""
    for first in range(0, len(batches), ranks.world):
        mine = first + ranks.rank
        rows = work(batches[mine]) if mine < len(batches) else []
        gathered: list[Any] | None = [None] * ranks.world if ranks.is_main else None
        dist.gather_object(rows, gathered, dst=0)
        if not ranks.is_main:
            yield []
            continue
        merged = [row for part in gathered or [] for row in part]
        expected = [s.idx for batch in batches[first:first + ranks.world] for s in batch]
        if sorted(row["idx"] for row in merged) != sorted(expected):  # each sample recorded once, none lost
            raise RuntimeError(f"round {first // ranks.world}: ranks returned samples {sorted(r['idx'] for r in merged)}, "
                               f"expected {sorted(expected)}")
        yield merged


class Leader:
    """Rank 0's rounds for `run_plan`: each cell's batches sent to the other ranks, their rows gathered back."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks

    def __call__(self, cell: SamplerSettings, batches: list[list[Sample]], work: Work) -> Iterator[list[dict[str, Any]]]:
        """Send the cell and its batches' indices, then yield every round's gathered rows."""
        _broadcast((cell, [[s.idx for s in batch] for batch in batches]))
        return rounds_of(batches, work, self.ranks)

    def finish(self) -> None:
        """Tell the other ranks there are no more cells."""
        _broadcast(None)


def follow(model: torch.nn.Module, tokenizer: Any, plan: EvalPlan, ranks: Ranks) -> None:
    """A rank other than 0: score the batches dealt to it for each cell rank 0 sends, until it sends None."""
    prompts = tokenize_prompts(plan.task, tokenizer, plan.samples, plan.template, plan.shots, plan.bos)
    check_context(model, prompts, plan.cells)
    by_idx = {s.idx: s for s in plan.samples}
    history_for = history_indices(plan)
    while (job := _broadcast(None)) is not None:
        cell, batch_ids = job
        batches = [[by_idx[idx] for idx in ids] for ids in batch_ids]
        for _ in rounds_of(batches, lambda batch: generate_and_score(model, tokenizer, plan.task, batch, prompts, cell,
                                                                     plan.seed, history_for), ranks):
            pass


def run_plan_on_ranks(open_store: Callable[[], Any], model: torch.nn.Module, tokenizer: Any, plan: EvalPlan,
                      progress: Progress, ranks: Ranks, on_backoff: Callable[[int, int], None] | None = None) -> list[Any]:
    """The plan over every rank: rank 0 opens the store and returns the EvalRecords; the others return [].

    One process runs the plan batch after batch (with `--batch-size auto`'s out-of-memory back-off, `on_backoff`)."""
    if ranks.world == 1:
        return run_plan(open_store(), model, tokenizer, plan, progress, on_backoff=on_backoff)
    if not ranks.is_main:
        follow(model, tokenizer, plan, ranks)
        return []
    leader = Leader(ranks)
    records = run_plan(open_store(), model, tokenizer, plan, progress, rounds=leader)
    leader.finish()
    return records
