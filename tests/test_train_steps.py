"""The trainer's step arithmetic in one process: gradient accumulation, the learning-rate schedule, precision."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from dreamlab.config import load_recipe
from dreamlab.train.trainer import NoisedBatch, Trainer, compute_dtype, lr_lambda

TINY = ["model.compile=false", "model.tiny_hidden_size=32", "model.tiny_num_layers=2", "model.tiny_num_heads=2",
        "model.tiny_intermediate_size=64", "model.enable_gradient_checkpointing=false", "data.val_files=[]",
        "data.perbatch_cutoff_type=none", "data.max_length=81", "diffusion.time_reweighting=cart", "trainer.device=cpu"]


def trainer(tmp_path, name: str, *overrides: str) -> Trainer:
    made = Trainer(load_recipe(None, [*TINY, *overrides]), tmp_path / name)
    made.setup()
    return made


def row_keyed_masks(monkeypatch) -> None:
    """Masks and times drawn from each row's own tokens: a row is noised the same in any micro-batch."""
    original = Trainer._noised

    def noised(self, examples, generator):
        drawn = original(self, examples, generator)
        masked, t = drawn.masked.clone(), drawn.t.clone()
        for i, row in enumerate(drawn.batch["input_ids"]):
            rng = torch.Generator().manual_seed(zlib.crc32(row.numpy().tobytes()))
            t[i] = 0.05 + 0.95 * torch.rand(1, generator=rng)
            masked[i] = (torch.rand(row.shape[0], generator=rng) < t[i]) & drawn.batch["loss_mask"][i].bool()
        return NoisedBatch(drawn.batch, masked, t)

    monkeypatch.setattr(Trainer, "_noised", noised)


def test_accumulating_k_micro_batches_of_m_gives_the_gradient_of_one_batch_of_k_times_m(tmp_path, one_process,
                                                                                         monkeypatch):
    """2 x 2 rows accumulated vs 4 rows at once, the same rows with the same masks and times.

    The loss is divided by the masked tokens of the whole step, so the gradients agree up to float32
    rounding (different batch shapes sum in a different order): rtol 1e-4, atol 1e-6. Dream divides each
    micro-batch by its own count, which differs here, so its gradient would not.
    """
    row_keyed_masks(monkeypatch)
    accumulated = trainer(tmp_path, "k2m2", "data.micro_batch_size_per_gpu=2", "data.gradient_accumulation_steps=2")
    whole = trainer(tmp_path, "k1m4", "data.micro_batch_size_per_gpu=4", "data.gradient_accumulation_steps=1")
    counts = [int(accumulated._noised(rows, accumulated.mask_generator).masked.sum())
              for rows in accumulated._micro_batches(0)]
    assert counts[0] != counts[1]  # per-micro-batch normalisation would weigh the two halves differently
    loss_a, masked_a, _, _ = accumulated.accumulate(0)
    loss_b, masked_b, _, _ = whole.accumulate(0)
    assert masked_a == masked_b == sum(counts)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    pairs = list(zip(accumulated.model.named_parameters(), whole.model.named_parameters()))
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for (_, a), _ in pairs)
    for (name, a), (_, b) in pairs:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_warmup_then_cosine_learning_rates_at_known_steps():
    """110 steps with 10% warmup: 11 warmup steps, then a cosine over 99 steps (thirds: cos = 1/2, -1/2)."""
    recipe = load_recipe(None, ["optim.warmup_steps_ratio=0.1", "optim.lr_scheduler=cosine", "optim.min_lr_ratio=0"])
    factor = lr_lambda(recipe, 110)
    expected = {0: 1 / 11, 5: 6 / 11, 10: 1.0, 11: 1.0, 44: 0.75, 60.5: 0.5, 77: 0.25, 110: 0.0, 200: 0.0}
    for step, value in expected.items():
        assert factor(step) == pytest.approx(value, abs=1e-12), step
    floored = lr_lambda(load_recipe(None, ["optim.warmup_steps_ratio=0.1", "optim.min_lr_ratio=0.2"]), 110)
    assert [floored(s) for s in (0, 11, 44, 77, 110)] == pytest.approx([1 / 11, 1.0, 0.8, 0.4, 0.2], abs=1e-12)
    constant = lr_lambda(load_recipe(None, ["optim.warmup_steps_ratio=0.1", "optim.lr_scheduler=constant"]), 110)
    assert [constant(s) for s in (0, 10, 11, 109)] == pytest.approx([1 / 11, 1.0, 1.0, 1.0], abs=1e-12)
    no_warmup = lr_lambda(load_recipe(None, ["optim.warmup_steps_ratio=0"]), 100)
    assert no_warmup(0) == 1.0 and no_warmup(50) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)), abs=1e-12)


def test_the_optimizer_gets_the_scheduled_rate_at_each_step(tmp_path, one_process):
    """What `fit` records as train/lr is lr x factor(step - 1): the rate the step's update used."""
    recorded: dict[int, float] = {}
    run = Trainer(load_recipe(None, [*TINY, "trainer.total_training_steps=10", "optim.lr=1e-3",
                                     "optim.warmup_steps_ratio=0.2", "trainer.val_check_interval=null",
                                     "trainer.log_every=1"]),
                  tmp_path / "lr", metrics=lambda step, values: recorded.update({step: values.get("train/lr")}))
    run.setup()
    assert run.fit().status == "completed"
    factor = lr_lambda(run.recipe, 10)
    assert [recorded[s] for s in range(1, 11)] == pytest.approx([1e-3 * factor(s - 1) for s in range(1, 11)], rel=1e-12)
    assert recorded[1] == pytest.approx(5e-4) and recorded[2] == pytest.approx(1e-3) and recorded[3] == pytest.approx(1e-3)


def test_bf16_autocast_on_the_cpu_runs_the_forward_in_bf16_and_fp32_does_not(tmp_path, one_process):
    seen = {}
    for precision in ("bf16", "fp32"):
        run = trainer(tmp_path, precision, f"trainer.precision={precision}", "data.micro_batch_size_per_gpu=2")
        run.model.lm_head.register_forward_hook(lambda module, args, out, p=precision: seen.update({p: out.dtype}))
        loss_share = run.accumulate(0)[0]
        assert math.isfinite(loss_share) and all(p.grad.dtype == torch.float32 for p in run.model.parameters())
    assert seen == {"bf16": torch.bfloat16, "fp32": torch.float32}


def test_precision_resolves_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compute_dtype("auto", cpu) == torch.float32 and compute_dtype("auto", cuda) == torch.bfloat16
    assert compute_dtype("bf16", cpu) == torch.bfloat16 and compute_dtype("fp32", cuda) == torch.float32


def test_val_fraction_holds_out_seeded_training_rows_for_validation(tmp_path, one_process):
    """builtin:arithmetic's 14,219 training rows, 1% held out: 142 validate (val_size caps them), the rest train."""
    run = trainer(tmp_path, "held", "data.val_fraction=0.01", "data.val_size=100", "data.micro_batch_size_per_gpu=8")
    assert (len(run.train), len(run.val)) == (14219 - 142, 100)
    assert run.steps_per_epoch == (14219 - 142) // 8
    train = {(tuple(e.prompt_ids), tuple(e.response_ids)) for e in run.train}
    assert not any((tuple(e.prompt_ids), tuple(e.response_ids)) in train for e in run.val)
