"""Checkpoints: an HF model folder (safetensors) plus the sharded training state (DCP).

Layout of `runs/<run>/checkpoints/step-000100/`:
  model/            config.json, safetensors shard(s), tokenizer: loads with `from_pretrained`
  state/            torch.distributed.checkpoint of model + optimizer (any world size can load it)
  rank-<r>.pt       that rank's RNG states (collator cutoffs, diffusion masks, torch); restored only on
                    the same world size (docs/reliability.md)
  trainer.json      step, epoch, world size, global batch, scheduler state
Everything is written into `step-000100.tmp/` and renamed when complete, so a process killed while
writing leaves only a `.tmp` folder behind, never a half checkpoint that looks whole.

Test hook: with `DREAMLAB_TEST_HOLD_CHECKPOINT_WRITE=MARKER` set, rank 0 creates the file MARKER
(holding the `.tmp` folder's path) once the folder is written but not yet renamed, then blocks there
until killed, so a fault test kills a writer that is certainly inside the write. Unset, it costs one
environment lookup per checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: `except Exception` misses it
from huggingface_hub import save_torch_state_dict
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

STEP_DIR = re.compile(r"^step-(\d+)$")
HOLD_WRITE_ENV = "DREAMLAB_TEST_HOLD_CHECKPOINT_WRITE"


class CheckpointError(OSError):
    """A checkpoint could not be written; the message names the folder (and a full disk as such)."""


NEARLY_FULL_BYTES = 1 << 20


def _disk_full(error: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain of causes (or in the text, for libraries that flatten it)."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _write_failure(tmp: Path, step: int, error: BaseException) -> CheckpointError:
    """Remove the partial `.tmp` folder and describe why the write failed."""
    # torch's zip writer reports a short write as "unexpected pos" with no errno, so a disk with
    # almost nothing free when the write failed counts as full too.
    try:
        nearly_full = shutil.disk_usage(tmp.parent).free < NEARLY_FULL_BYTES
    except OSError:
        nearly_full = False
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        free = f"{shutil.disk_usage(tmp.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    full = _disk_full(error) or nearly_full
    what = "disk full" if full else f"{type(error).__name__}: {error}"
    return CheckpointError(f"checkpoint step {step} could not be written to {tmp.parent} ({what}; {free}); "
                           "the previous complete checkpoint is kept")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of a complete checkpoint."""
    return run_dir / "checkpoints" / f"step-{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed, with trainer.json), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / "trainer.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    *, run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokenizer: Any,
    trainer_state: dict[str, Any], rank_state: dict[str, Any], keep: int, save_bf16: bool = False,
) -> Path:
    """Write a checkpoint collectively (every rank calls this); returns the final folder.

    The HF model folder holds bf16 weights when `save_bf16` (GPU runs, as Dream publishes), else fp32.
    """
    rank = dist.get_rank()
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    try:
        _write(tmp, final, run_dir=run_dir, rank=rank, model=model, optimizer=optimizer, tokenizer=tokenizer,
               trainer_state=trainer_state, rank_state=rank_state, keep=keep, save_bf16=save_bf16)
    except (Exception, CheckpointException) as error:  # noqa: BLE001 - safetensors and DCP wrap OSError in their own types
        raise _write_failure(tmp, step, error) from error
    dist.barrier()
    return final


def _write(tmp: Path, final: Path, *, run_dir: Path, rank: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           tokenizer: Any, trainer_state: dict[str, Any], rank_state: dict[str, Any], keep: int, save_bf16: bool) -> None:
    """Write into `tmp`, then rename it to `final` and rotate old checkpoints (rank 0)."""
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model_dir = tmp / "model"
        model_dir.mkdir()
        config = model.config
        # A fresh copy per tensor: gathered shards can share storage, which safetensors refuses.
        save_dtype = torch.bfloat16 if save_bf16 else torch.float32
        save_torch_state_dict({k: v.to(save_dtype, copy=True) for k, v in full.items()}, model_dir, max_shard_size="5GB")
        config.dtype = save_dtype
        config.architectures = ["DreamModel"]
        config.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    del full
    state = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(state, checkpoint_id=str(tmp / "state"))
    torch.save(rank_state, tmp / f"rank-{rank}.pt")
    dist.barrier()
    if rank == 0:
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2))
        _hold_if_testing(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for _, old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _hold_if_testing(tmp: Path) -> None:
    """The test hook of the module docstring: write the marker, then wait to be killed."""
    marker = os.environ.get(HOLD_WRITE_ENV)
    if not marker:
        return
    Path(marker).write_text(str(tmp))
    while True:
        time.sleep(60)


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load model + optimizer (resharded as needed); returns (trainer state, this rank's RNG state or None)."""
    state = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.load(state, checkpoint_id=str(path / "state"))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    trainer_state = json.loads((path / "trainer.json").read_text())
    rank_file = path / f"rank-{dist.get_rank()}.pt"
    same_world = trainer_state.get("world_size") == dist.get_world_size()
    rank_state = torch.load(rank_file, weights_only=False) if same_world and rank_file.is_file() else None
    return trainer_state, rank_state
