"""A run's step schedule from its row count: held-out rows, steps per epoch, and when checkpoints and
validation fire. Torch-free, so recipes can be checked (and tested) without starting anything.

The trainer asks the same functions (`checkpoint_due`, `validation_due`, `resolved_intervals`), so the
schedule computed here is the one a run follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dreamlab.config import Recipe


@dataclass(frozen=True)
class Schedule:
    """Where a run's rows go and which optimizer steps (1-based, after the update) checkpoint and validate."""

    train_rows: int
    val_rows: int
    steps_per_epoch: int
    total_steps: int
    checkpoint_every: int | None
    val_every: int | None
    checkpoint_steps: list[int]
    validation_steps: list[int]


def held_out_count(rows: int, fraction: float | None) -> int:
    """Rows held out for validation: round(rows x fraction), at least 1 when fraction > 0."""
    if not fraction:
        return 0
    count = max(1, round(rows * fraction))
    if count >= rows:
        raise ValueError(f"data.val_fraction={fraction} of {rows} rows leaves no training rows")
    return count


def steps_per_epoch(train_rows: int, *, world: int, micro_batch: int, accumulation: int) -> int:
    """Optimizer steps in one epoch; the remainder rows that cannot fill a global batch are skipped (none: an error)."""
    per_epoch = train_rows // (world * micro_batch * accumulation)
    if per_epoch == 0:
        raise ValueError(f"{train_rows} training rows cannot fill one step of {world} x {micro_batch} x {accumulation} rows")
    return per_epoch


def resolved_intervals(per_epoch: int, *, checks_per_epoch: int | None, checkpoint_every: int | None,
                       val_every: int | None) -> tuple[int | None, int | None]:
    """(checkpoint interval, validation interval) in steps; `checks_per_epoch` sets both when given."""
    if checks_per_epoch:
        every = max(1, per_epoch // checks_per_epoch)
        return every, every
    return checkpoint_every, val_every


def checkpoint_due(step: int, every: int | None, total: int) -> bool:
    """After optimizer step `step`: the interval's checkpoint (the last step always checkpoints on its own)."""
    return bool(every) and step % every == 0 and step < total


def validation_due(step: int, every: int | None, total: int) -> bool:
    """After optimizer step `step`: validate at each interval and at the end (when validation is on)."""
    return bool(every) and (step % every == 0 or step == total)


def plan(rows: int, *, val_fraction: float | None, world: int, micro_batch: int, accumulation: int, epochs: int,
         max_steps: int | None = None, checks_per_epoch: int | None = None, checkpoint_every: int | None = None,
         val_every: int | None = None) -> Schedule:
    """The whole schedule of a run over `rows` training rows (before any are held out)."""
    val_rows = held_out_count(rows, val_fraction)
    train_rows = rows - val_rows
    per_epoch = steps_per_epoch(train_rows, world=world, micro_batch=micro_batch, accumulation=accumulation)
    total = max_steps or per_epoch * epochs
    ckpt, val = resolved_intervals(per_epoch, checks_per_epoch=checks_per_epoch, checkpoint_every=checkpoint_every,
                                   val_every=val_every)
    steps = range(1, total + 1)
    return Schedule(
        train_rows=train_rows, val_rows=val_rows, steps_per_epoch=per_epoch, total_steps=total,
        checkpoint_every=ckpt, val_every=val,
        checkpoint_steps=[s for s in steps if checkpoint_due(s, ckpt, total) or s == total],
        validation_steps=[s for s in steps if validation_due(s, val, total)],
    )


def plan_recipe(recipe: Recipe, rows: int) -> Schedule:
    """`plan` with a recipe's settings."""
    d, t = recipe.data, recipe.trainer
    return plan(rows, val_fraction=d.val_fraction, world=t.nproc_per_node * t.nnodes,
                micro_batch=d.micro_batch_size_per_gpu, accumulation=d.gradient_accumulation_steps,
                epochs=t.total_epochs, max_steps=t.total_training_steps, checks_per_epoch=t.checks_per_epoch,
                checkpoint_every=t.save_checkpoint_steps, val_every=t.val_check_interval)
