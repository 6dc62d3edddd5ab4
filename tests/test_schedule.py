"""A run's schedule from its row count: held-out validation rows, steps, and when checkpoints and validation fire."""

from __future__ import annotations

import pytest

from dreamlab.config import RecipeError, load_recipe
from dreamlab.data.formats import DreamRow
from dreamlab.train.data import split_held_out
from dreamlab.train.schedule import held_out_count, plan, plan_recipe

S1K_ROWS = 1000


def test_the_s1k_recipe_validates_and_checkpoints_twice_an_epoch_at_s1ks_size():
    """1,000 rows, 5% held out: 950 // (8 GPUs x 4 rows) = 29 steps an epoch, 87 in 3 epochs, every 14 steps."""
    schedule = plan_recipe(load_recipe("s1k-dream7b"), S1K_ROWS)
    assert (schedule.train_rows, schedule.val_rows, schedule.steps_per_epoch, schedule.total_steps) == (950, 50, 29, 87)
    assert schedule.checkpoint_steps == [14, 28, 42, 56, 70, 84, 87]
    assert schedule.validation_steps == [14, 28, 42, 56, 70, 84, 87]
    for epoch in range(3):
        inside = range(epoch * 29 + 1, (epoch + 1) * 29 + 1)
        assert sum(s in inside for s in schedule.checkpoint_steps) >= 2, epoch
        assert sum(s in inside for s in schedule.validation_steps) >= 2, epoch


def test_the_old_fixed_interval_never_fired_at_s1ks_size():
    """What the recipe had: every 100 steps, no held-out rows: 1000 // 32 = 31 steps an epoch, 93 in all."""
    schedule = plan(S1K_ROWS, val_fraction=None, world=8, micro_batch=4, accumulation=1, epochs=3,
                    checkpoint_every=100, val_every=100)
    assert (schedule.total_steps, schedule.checkpoint_steps, schedule.validation_steps) == (93, [93], [93])


@pytest.mark.parametrize("name", ["s1k-dream7b", "s1k-math-only", "s1k-non-math"])
@pytest.mark.parametrize("rows", [100, 333, 640, 1000])
def test_every_s1k_recipe_fires_in_every_epoch_whatever_its_row_count(name, rows):
    """The ablations train on a part of s1K: twice an epoch holds for any row count that fills 2 steps an epoch."""
    schedule = plan_recipe(load_recipe(name), rows)
    per_epoch = schedule.steps_per_epoch
    for epoch in range(load_recipe(name).trainer.total_epochs):
        inside = range(epoch * per_epoch + 1, (epoch + 1) * per_epoch + 1)
        assert sum(s in inside for s in schedule.checkpoint_steps) >= 2
        assert sum(s in inside for s in schedule.validation_steps) >= 2


def test_the_smoke_recipe_checkpoints_and_validates_after_each_of_its_two_steps():
    schedule = plan_recipe(load_recipe("s1k-smoke"), 100)
    assert (schedule.train_rows, schedule.total_steps, schedule.checkpoint_steps, schedule.validation_steps) == (
        95, 2, [1, 2], [1, 2])


def test_accumulation_and_a_step_cap_change_the_schedule():
    schedule = plan(S1K_ROWS, val_fraction=0.05, world=8, micro_batch=4, accumulation=2, epochs=3, checks_per_epoch=2)
    assert (schedule.steps_per_epoch, schedule.total_steps, schedule.checkpoint_every) == (14, 42, 7)
    assert schedule.checkpoint_steps == [7, 14, 21, 28, 35, 42]
    capped = plan(S1K_ROWS, val_fraction=0.05, world=8, micro_batch=4, accumulation=1, epochs=3, max_steps=30,
                  checkpoint_every=10, val_every=4)
    assert capped.checkpoint_steps == [10, 20, 30] and capped.validation_steps == [4, 8, 12, 16, 20, 24, 28, 30]
    assert plan(64, val_fraction=None, world=1, micro_batch=8, accumulation=1, epochs=1).validation_steps == []
    with pytest.raises(ValueError, match="cannot fill one step"):
        plan(31, val_fraction=None, world=8, micro_batch=4, accumulation=1, epochs=1)


def test_held_out_rows_are_a_seeded_sample_disjoint_from_training():
    assert [held_out_count(1000, f) for f in (None, 0.0, 0.05, 0.0001)] == [0, 0, 50, 1]
    with pytest.raises(ValueError, match="leaves no training rows"):
        held_out_count(3, 0.9)
    rows = [DreamRow(prompt=[{"role": "user", "content": f"q{i}"}], response=f"a{i}", meta={}) for i in range(100)]
    train, val = split_held_out(rows, 10, seed=0)
    assert len(train) == 90 and len(val) == 10 and {r.response for r in train}.isdisjoint(r.response for r in val)
    assert [r.response for r in train] == sorted((r.response for r in train), key=lambda a: int(a[1:]))  # file order
    assert split_held_out(rows, 10, seed=0)[1] == val and split_held_out(rows, 10, seed=1)[1] != val


@pytest.mark.parametrize("overrides,message", [
    (["data.val_files=[]", "data.val_fraction=1"], r"data.val_fraction: must be in \[0, 1\), got 1.0"),
    (["data.val_files=[]", "data.val_fraction=-0.1"], r"data.val_fraction: must be in \[0, 1\)"),
    (["data.val_fraction=0.1"], "data.val_files also names validation rows: set data.val_files=\\[\\]"),
    (["trainer.checks_per_epoch=0"], "trainer.checks_per_epoch: must be > 0"),
    (["trainer.checks_per_epoch=2", "trainer.val_check_interval=10"],
     "set trainer.val_check_interval=null, or trainer.checks_per_epoch=null"),
])
def test_bad_held_out_and_interval_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides)
