"""Training end to end across process layouts: bf16 on the CPU, 2-process resume, 2 processes resumed in 1."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.config import recipe_from_dict
from dreamlab.train.checkpoint import complete_checkpoints
from dreamlab.train.trainer import Trainer
from tests.test_train_e2e import SMALL, losses, train

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_bf16_autocast_on_the_cpu_trains_and_records_its_dtype(tmp_path):
    result, store = train(tmp_path, *SMALL, "trainer.device=cpu", "trainer.precision=bf16", "optim.lr=3e-3",
                          "trainer.total_training_steps=8", "--name", "bf16")
    assert result.exit_code == 0, result.output
    run = store.get_run("bf16")
    curve = losses(store, run.id)
    assert len(curve) == 8 and all(math.isfinite(v) for v in curve)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    latest = store.latest_metrics(run.id)
    assert latest["trainer/bf16"][1] == 1.0 and math.isfinite(latest["val/loss"][1])
    assert store.params(run.id)["trainer.precision"] == "bf16"


def cut_back_to(run_dir: Path, step: int) -> None:
    """Delete the checkpoints after `step`, as if the run had been killed after writing it."""
    for found, path in complete_checkpoints(run_dir):
        if found > step:
            shutil.rmtree(path)


def model_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors")


def test_a_two_process_run_resumes_on_two_processes_as_it_ran_and_on_one_by_resharding(tmp_path):
    """Straight 8 steps on 2 processes vs 4 + resume 4: the same losses and weights (rel 1e-5, atol 1e-6:
    the same arithmetic, reloaded). Then the step-4 checkpoint resumed in 1 process with the same global
    batch (micro batch 8): DCP reshards model and optimizer, the per-rank random streams restart from the seed
    (docs/reliability.md), so steps 5-8 see other masks: their mean loss is within 5% of the straight run's
    (measured 0.2% apart, single steps within 1.5%; a model restarted from scratch would be ~16% above it).
    """
    common = [*SMALL, "trainer.nproc_per_node=2", "data.micro_batch_size_per_gpu=4", "optim.lr=3e-3",
              "trainer.total_training_steps=8", "trainer.val_check_interval=null"]
    straight, store = train(tmp_path, *common, "--name", "straight")
    halves, _ = train(tmp_path, *common, "trainer.save_checkpoint_steps=4", "--name", "halves")
    assert straight.exit_code == 0 and halves.exit_code == 0, straight.output + halves.output
    run = store.get_run("halves")
    run_dir, db = Path(run.run_dir), str(tmp_path / "runs" / "dreamlab.db")
    cut_back_to(run_dir, 4)
    resumed = runner.invoke(app, ["train", "--resume", "halves", "--foreground", "--db", db])
    assert resumed.exit_code == 0, resumed.output
    reference = losses(store, store.get_run("straight").id)
    after = {s: v for s, _, v, _ in store.metrics(run.id, key="train/loss")}
    assert [after[s] for s in range(5, 9)] == pytest.approx(reference[4:], rel=1e-5)
    straight_dir = Path(store.get_run("straight").run_dir)
    final, expected = model_weights(run_dir, 8), model_weights(straight_dir, 8)
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-6, msg=name)

    cut_back_to(run_dir, 4)
    one = runner.invoke(app, ["train", "--resume", "halves", "trainer.nproc_per_node=1",
                              "data.micro_batch_size_per_gpu=8", "--foreground", "--db", db])
    assert one.exit_code == 0, one.output
    history = [(e.kind, e.message) for e in store.events(run.id)]
    assert ("relayout", "trainer.nproc_per_node=1, data.micro_batch_size_per_gpu=8") in history
    message = [m for kind, m in history if kind == "resumed"][-1]
    assert message.startswith("resumed from step 4; written by 2 processes, read by 1: model and optimizer resharded")
    assert "global batch" not in message  # 2 x 4 rows -> 1 x 8 rows: the data order continues
    after = {s: v for s, _, v, _ in store.metrics(run.id, key="train/loss")}
    assert store.get_run("halves").status == "completed" and all(math.isfinite(after[s]) for s in range(5, 9))
    assert sum(after[s] for s in range(5, 9)) == pytest.approx(sum(reference[4:]), rel=0.05)
    refused = runner.invoke(app, ["train", "--resume", "halves", "optim.lr=1", "--db", db])
    assert refused.exit_code == 2 and "optim.lr cannot change" in refused.output


def test_a_two_process_checkpoint_loads_into_one_process_exactly(tmp_path, one_process):
    """DCP resharding: every weight and AdamW moment of the 2-process checkpoint, read by 1 process (bitwise: a copy)."""
    result, store = train(tmp_path, *SMALL, "trainer.nproc_per_node=2", "data.micro_batch_size_per_gpu=4",
                          "trainer.total_training_steps=3", "trainer.val_check_interval=null", "--name", "two")
    assert result.exit_code == 0, result.output
    run_dir = Path(store.get_run("two").run_dir)
    recipe = recipe_from_dict(json.loads((run_dir / "run.json").read_text())["recipe"])
    recipe.trainer.nproc_per_node, recipe.trainer.device = 1, "cpu"
    trainer = Trainer(recipe, run_dir)
    trainer.setup()
    assert trainer.resume() == 3 and trainer.step == 3 and "read by 1" in trainer.resume_note
    weights = model_weights(run_dir, 3)
    for name, value in trainer.raw_model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    dcp_to_torch_save(run_dir / "checkpoints" / "step-000003" / "state", tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=False)["optimizer"]["state"]
    loaded = get_optimizer_state_dict(trainer.raw_model, trainer.optimizer)["state"]
    assert saved.keys() == loaded.keys() and len(saved) == len(weights)
    for name, moments in saved.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(loaded[name][key], moments[key]), (name, key)
