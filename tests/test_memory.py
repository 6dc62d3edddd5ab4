"""The per-GPU memory estimate and the pre-flight check that refuses runs that cannot fit."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.config import RecipeError, load_recipe
from dreamlab.models import DreamConfig
from dreamlab.train import launcher
from dreamlab.train.memory import GIB, count_parameters, estimate, suggestion


def test_parts_follow_the_formula_exactly():
    config = DreamConfig(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         mask_token_id=1, pad_token_id=0, eos_token_id=0, bos_token_id=0)
    params = count_parameters(config)
    assert params == 2 * 1000 * 64 + 64 + 2 * (64 * 64 * 2 + 64 + 32 * 64 * 2 + 32 * 2 + 3 * 64 * 256 + 2 * 64)
    e = estimate(config, micro_batch=2, max_length=128, world=4, checkpointing=True)
    layer = 2 * 2 * 128 * (8 * 64 + 4 * 256)
    assert e.parts["params + grads + Adam (fp32, sharded)"] * GIB == pytest.approx(16 * params / 4)
    assert e.parts["activations"] * GIB == pytest.approx(2 * 2 * 128 * 64 * 2 + layer)
    assert e.parts["logits and loss"] * GIB == pytest.approx(2 * 128 * 1000 * 8)
    off = estimate(config, micro_batch=2, max_length=128, world=4, checkpointing=False)
    assert off.parts["activations"] * GIB == pytest.approx(2 * layer)


def test_dream_7b_estimates_sit_near_the_recipe_notes():
    """Recipe notes (8 GPUs, length 2048): bs1+ckpt ~18 GB, bs2 ~22 GB, bs4 ~30 GB."""
    config = DreamConfig()
    totals = [estimate(config, micro_batch=b, max_length=2048, world=8, checkpointing=True).total_gb for b in (1, 2, 4)]
    for total, note in zip(totals, (18, 22, 30)):
        assert abs(total - note) / note < 0.15
    assert suggestion(config, micro_batch=8, max_length=2048, world=8, checkpointing=False, budget_gb=24) == \
        "data.micro_batch_size_per_gpu=2 model.enable_gradient_checkpointing=true"


def test_a_run_that_cannot_fit_is_refused_with_the_estimate_and_a_fix(monkeypatch):
    recipe = load_recipe(None, ["data.micro_batch_size_per_gpu=4096", "data.max_length=1024"])
    monkeypatch.setattr("dreamlab.train.memory.gpu_memory_gb", lambda: 2.0)
    with pytest.raises(RecipeError, match=r"estimated .* GiB per GPU, the GPU has 2.0 GiB: try data.micro_batch_size_per_gpu="):
        launcher.check_before_launch(recipe)


def test_estimate_flag_prints_the_parts():
    result = CliRunner().invoke(app, ["train", "data.micro_batch_size_per_gpu=8", "--estimate"])
    assert result.exit_code == 0, result.output
    assert "params + grads + Adam" in result.output and "total" in result.output
