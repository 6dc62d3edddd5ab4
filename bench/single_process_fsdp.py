"""One CPU process: the trainer's step with FSDP2 wrapping vs without, side by side in one run.

The trainer skips `fully_shard` when it is alone on the CPU (nothing to shard, no bf16 policy).
This measures what that saves: two trainers of the default recipe are built in this process,
one of them wrapped as the trainer wraps for several processes, and blocks of steps alternate
between them.
Run: python -m bench.single_process_fsdp [--blocks 6] [--steps-per-block 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from dreamlab.config import load_recipe
from dreamlab.train.trainer import Trainer, shard


def build(wrapped: bool) -> Trainer:
    """A default-recipe trainer, FSDP-wrapped (per layer, then root) or plain."""
    recipe = load_recipe(None, ["trainer.val_check_interval=null", "trainer.save_checkpoint_steps=null",
                                "data.val_files=[]", "trainer.total_training_steps=100000"])
    trainer = Trainer(recipe, Path(tempfile.mkdtemp()))
    trainer.setup()
    trainer.checkpoint = lambda: None
    if wrapped:
        shard(trainer.raw_model, torch.device("cpu"), world=1)
        # The optimizer must hold the sharded (DTensor) parameters that now live in the module.
        trainer.optimizer = torch.optim.AdamW(trainer.raw_model.parameters(), lr=recipe.optim.lr)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
    return trainer


def seconds_per_step(trainer: Trainer, steps: int) -> float:
    """Train `steps` more steps; wall seconds per step."""
    trainer.total_steps = trainer.step + steps
    started = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - started) / steps


def main() -> None:
    """Alternate blocks of steps between the wrapped and the plain trainer; print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--steps-per-block", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(os.cpu_count() or 1)
    wrapped, plain = build(True), build(False)
    times: dict[str, list[float]] = {"fsdp": [], "plain": []}
    for _ in range(args.blocks):
        times["fsdp"].append(seconds_per_step(wrapped, args.steps_per_block))
        times["plain"].append(seconds_per_step(plain, args.steps_per_block))
    fsdp, bare = (statistics.median(times[k][1:]) for k in ("fsdp", "plain"))
    print(f"FSDP-wrapped {fsdp:.3f} s/step, plain {bare:.3f} s/step (median of blocks 2-{args.blocks}, "
          f"{args.steps_per_block} steps each): FSDP / plain = {fsdp / bare:.2f}x")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
