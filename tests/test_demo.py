"""`dreamlab demo` end to end, reduced: prepare, a recorded training run, the eval grid in the store, the report."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.cli.demo import ALGS, MIN_HEADLINE_ACCURACY, headline_failure
from dreamlab.store import RunStore

runner = CliRunner()


@pytest.mark.slow
def test_demo_trains_a_recorded_run_and_stores_the_eval_grid(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["demo", "model.compile=false", "data.micro_batch_size_per_gpu=8", "data.val_size=16", "--train-steps", "30",
                                 "--eval-limit", "8", "--steps", "8,16", "--name", "demo-test", "--db", str(db),
                                 # 30 steps cannot learn the task: the floor is for the packaged recipe.
                                 "--min-accuracy", "0"])
    assert result.exit_code == 0, result.output
    store = RunStore(db)
    run = store.get_run("demo-test")
    assert run.status == "completed"
    assert store.params(run.id)["trainer.total_training_steps"] == 30
    assert store.latest_metrics(run.id)["train/loss"][0] == 30
    checkpoint = store.latest_complete_checkpoint(run.id)
    assert checkpoint is not None and checkpoint.step == 30
    # Trained on the file the prepare step wrote, with its report beside it.
    prepared = tmp_path / "runs" / ".data" / "builtin-arithmetic-train.jsonl"
    assert store.params(run.id)["data.train_files"] == [str(prepared)]
    assert prepared.is_file() and prepared.with_name(prepared.name + ".report.json").is_file()

    evals = store.list_evals(run.id)
    assert sorted((e.alg, e.steps) for e in evals) == sorted((alg, n) for alg in ALGS for n in (8, 16))
    assert all(e.task == "arithmetic" and e.status == "completed" and e.n_done == 8 for e in evals)
    assert all(e.checkpoint == str(Path(checkpoint.path).resolve()) for e in evals)
    assert len({e.grid_id for e in evals}) == 1

    output = result.output
    assert "accuracy vs steps" in output and "alg \\ steps" in output
    assert f"dreamlab runs show demo-test --db {db}" in output
    assert "dreamlab eval --run demo-test" in output


@pytest.mark.slow
def test_demo_refuses_bad_flags_before_training(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["demo", "--steps", "8,x", "--db", str(db)])
    assert result.exit_code == 2 and "--steps" in result.output
    result = runner.invoke(app, ["demo", "optim.learning_rate=1", "--db", str(db)])
    assert result.exit_code == 2 and "optim.lr" in result.output
    result = runner.invoke(app, ["demo", "--min-accuracy", "1.5", "--db", str(db)])
    assert result.exit_code == 2 and "--min-accuracy" in result.output
    assert not db.exists() or RunStore(db).count_runs() == 0


def _cell(alg: str, steps: int, accuracy: float | None) -> SimpleNamespace:
    return SimpleNamespace(alg=alg, steps=steps, accuracy=accuracy)


GRID = [_cell("origin", 16, 0.99), _cell("origin", 48, 0.99), _cell("entropy", 16, 0.5), _cell("entropy", 48, 0.95)]


def test_the_headline_floor_passes_a_learned_grid():
    assert MIN_HEADLINE_ACCURACY == 0.9
    assert headline_failure(GRID, MIN_HEADLINE_ACCURACY) is None
    # Exactly at the floor passes; the weak 16-step entropy cell is not the headline.
    assert headline_failure([*GRID[:3], _cell("entropy", 48, 0.9)], 0.9) is None


def test_the_headline_floor_fails_a_grid_whose_entropy_cell_did_not_learn():
    grid = [*GRID[:3], _cell("entropy", 48, 0.885)]  # the other algorithms' cells do not rescue it
    message = headline_failure(grid, MIN_HEADLINE_ACCURACY)
    assert message == ("headline cell entropy / 48 steps scored 88.5%, under the 90% floor (--min-accuracy): "
                       "the model did not learn the task")
    assert headline_failure([_cell("entropy", 16, 0.99), _cell("entropy", 64, None)], 0.9).startswith(
        "headline cell entropy / 64 steps scored 0.0%")
    assert "no entropy cell" in headline_failure([_cell("origin", 48, 1.0)], 0.9)


def test_a_zero_floor_turns_the_check_off():
    assert headline_failure([_cell("entropy", 48, 0.0)], 0.0) is None
