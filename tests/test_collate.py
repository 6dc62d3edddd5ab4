"""Collation: exact tensors for each per-batch cutoff mode, seeded draws, EOS kept."""

from __future__ import annotations

import random

import pytest

from dreamlab.data.collate import CollateSettings, Example, SFTCollator

EOS = 0
A = Example(prompt_ids=[10, 11], response_ids=[20, 21, EOS])
B = Example(prompt_ids=[12], response_ids=[22, EOS])


def collate(mode: str, seed: int = 0, train_on_padding: bool = True, examples=(A, B)):
    collator = SFTCollator(CollateSettings(max_length=6, pad_token_id=EOS, perbatch_cutoff_type=mode,
                                           train_on_padding=train_on_padding), seed=seed)
    batch = collator(list(examples))
    return {k: v.tolist() for k, v in batch.items()}, collator.last_cutoff


def seed_drawing(row: int) -> int:
    return next(s for s in range(100) if random.Random(s).randrange(2) == row)


def test_none_pads_every_row_to_max_length_and_trains_the_padding():
    batch, _ = collate("none")
    assert batch == {
        "input_ids": [[10, 11, 20, 21, 0, 0], [12, 22, 0, 0, 0, 0]],
        "attention_mask": [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]],
        "position_ids": [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]],
        "loss_mask": [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]],
    }


def test_none_without_training_on_padding_hides_the_padding():
    batch, _ = collate("none", train_on_padding=False)
    assert batch == {
        "input_ids": [[10, 11, 20, 21, 0, 0], [12, 22, 0, 0, 0, 0]],
        "attention_mask": [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]],
        "position_ids": [[0, 1, 2, 3, 4, 4], [0, 1, 2, 2, 2, 2]],
        "loss_mask": [[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]],
    }


def test_longest_pads_to_the_longest_row():
    batch, cutoff = collate("longest")
    assert batch["input_ids"] == [[10, 11, 20, 21, 0], [12, 22, 0, 0, 0]]
    assert batch["loss_mask"] == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert cutoff == {"mode": "longest", "drawn_row": None, "length": 5}


def test_random_cuts_to_the_drawn_rows_full_length_keeping_its_eos():
    batch, cutoff = collate("random", seed=seed_drawing(1))
    assert cutoff == {"mode": "random", "drawn_row": 1, "length": 3}
    assert batch == {
        "input_ids": [[10, 11, 20], [12, 22, 0]],  # row 0 is cut; row 1 (drawn) keeps its EOS
        "attention_mask": [[1, 1, 1], [1, 1, 1]],
        "position_ids": [[0, 1, 2], [0, 1, 2]],
        "loss_mask": [[0, 0, 1], [0, 1, 1]],
    }
    batch, cutoff = collate("random", seed=seed_drawing(0))
    assert cutoff["length"] == 5 and batch["input_ids"] == [[10, 11, 20, 21, 0], [12, 22, 0, 0, 0]]


def test_random_with_input_pad_left_pads_prompts_and_cuts_responses_to_the_drawn_one():
    batch, cutoff = collate("random_with_input_pad", seed=seed_drawing(0))
    assert cutoff == {"mode": "random_with_input_pad", "drawn_row": 0, "length": 5}
    assert batch == {
        "input_ids": [[10, 11, 20, 21, 0], [0, 12, 22, 0, 0]],
        "attention_mask": [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]],
        "position_ids": [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]],
        "loss_mask": [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]],
    }
    batch, cutoff = collate("random_with_input_pad", seed=seed_drawing(1))
    assert cutoff["length"] == 4
    assert batch == {
        "input_ids": [[10, 11, 20, 21], [0, 12, 22, 0]],  # drawn row 1 keeps its EOS
        "attention_mask": [[1, 1, 1, 1], [0, 1, 1, 1]],
        "position_ids": [[0, 1, 2, 3], [0, 0, 1, 2]],
        "loss_mask": [[0, 0, 1, 1], [0, 0, 1, 1]],
    }


def test_the_drawn_row_always_ends_with_a_trained_eos():
    examples = [Example([1] * p, [5] * r + [EOS]) for p, r in [(3, 7), (5, 2), (1, 11), (4, 4)]]
    collator = SFTCollator(CollateSettings(max_length=32, pad_token_id=EOS, perbatch_cutoff_type="random_with_input_pad"), seed=3)
    for _ in range(20):
        batch = collator(examples)
        drawn = collator.last_cutoff["drawn_row"]
        assert batch["input_ids"][drawn, -1] == EOS and batch["loss_mask"][drawn, -1] == 1


def test_draws_are_seeded_and_resume_from_the_saved_state():
    settings = CollateSettings(max_length=32, pad_token_id=EOS, perbatch_cutoff_type="random")
    examples = [Example([1], [5] * n + [EOS]) for n in range(1, 9)]
    first = SFTCollator(settings, seed=7)
    draws = [first(examples) and first.last_cutoff["drawn_row"] for _ in range(10)]
    again = SFTCollator(settings, seed=7)
    assert [again(examples) and again.last_cutoff["drawn_row"] for _ in range(10)] == draws
    resumed = SFTCollator(settings, seed=999)
    replay = SFTCollator(settings, seed=7)
    for _ in range(4):
        replay(examples)
    resumed.load_state_dict(replay.state_dict())
    assert [resumed(examples) and resumed.last_cutoff["drawn_row"] for _ in range(6)] == draws[4:]


def test_bad_batches_and_settings_are_refused():
    with pytest.raises(ValueError, match="row 0 has 5 tokens, over max_length 4"):
        SFTCollator(CollateSettings(max_length=4, pad_token_id=EOS))([A])
    with pytest.raises(ValueError, match="perbatch_cutoff_type must be one of"):
        CollateSettings(max_length=8, pad_token_id=EOS, perbatch_cutoff_type="dynamic")
    with pytest.raises(ValueError, match="empty response"):
        SFTCollator(CollateSettings(max_length=8, pad_token_id=EOS))([Example([1], [])])
