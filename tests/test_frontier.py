"""Speed axes of an eval grid, the per-cell speed numbers, the Pareto frontier and `dreamlab eval frontier`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.evals.frontier import frontier_plot, pareto_ids
from dreamlab.evals.grid import cell_label, grid_cells
from dreamlab.evals.stats import summarize
from dreamlab.store import RunStore

runner = CliRunner()


def _record(id, accuracy, speed):
    return SimpleNamespace(id=id, accuracy=accuracy, answer_tokens_per_s=speed)


def test_pareto_cells_are_those_no_other_cell_beats_on_both_axes():
    records = [_record(1, 0.9, 10.0), _record(2, 0.8, 40.0), _record(3, 0.7, 30.0), _record(4, 0.9, 5.0),
               _record(5, 0.6, 40.0), _record(6, None, 99.0), _record(7, 0.95, None)]
    assert pareto_ids(records) == {1, 2}
    assert pareto_ids([_record(1, 0.5, 1.0), _record(2, 0.5, 1.0)]) == {1, 2}  # ties beat nobody
    assert "accuracy vs answer tokens/s" in frontier_plot(records, width=60, height=12)


def test_speed_settings_are_grid_axes_and_none_turns_one_off():
    cells = grid_cells({"steps": "8", "block_length": "4", "cache": "none,prefix,dual", "threshold": "none,0.9"},
                       {"max_new_tokens": 8, "threshold": 0.5}, "t")
    assert [(c.cache, c.threshold) for c in cells] == [  # loop order: threshold, then cache (field order)
        (None, None), ("prefix", None), ("dual", None), (None, 0.9), ("prefix", 0.9), ("dual", 0.9)]
    assert cell_label(cells[-1]) == "entropy × 8 steps · block 4 · cache dual · threshold 0.9"
    assert [c.threshold for c in grid_cells({"steps": "8", "block_length": "4"}, {"max_new_tokens": 8, "threshold": 0.5},
                                            "t")] == [0.5]  # not given: the task's default
    assert [c.gamma for c in grid_cells({"steps": "8", "block_length": "4", "gamma": "0.1,1"}, {"max_new_tokens": 8},
                                        "t")] == [0.1, 1.0]
    with pytest.raises(ValueError, match="needs block_length"):
        grid_cells({"steps": "8", "cache": "dual"}, {"max_new_tokens": 8}, "t")


def test_a_cells_speed_counts_answer_tokens_and_model_calls():
    samples = [{"correct": True, "nfe": 4, "seconds": 0.5, "answer_tokens": 3},
               {"correct": False, "nfe": 8, "seconds": 1.5, "answer_tokens": 5}]
    summary = summarize(samples, max_new_tokens=16, total=2)
    assert summary["tokens_per_forward"] == 32 / 12 and summary["answer_tokens_per_s"] == 8 / 2.0
    assert summary["tokens_per_s"] == 32 / 2.0 and summary["wall_seconds"] == 2.0
    assert summarize([{**samples[0], "answer_tokens": None}], 16, 1)["answer_tokens_per_s"] is None


def test_eval_with_cache_and_threshold_axes_records_speed_and_plots_the_frontier(tmp_path):
    db = tmp_path / "dreamlab.db"
    result = runner.invoke(app, ["eval", "--model", "tiny", "--limit", "2", "--max-new-tokens", "8", "--steps", "8",
                                 "--block-length", "4", "--cache", "none,dual", "--threshold", "none,0.9", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "Pareto" in result.output and "accuracy vs answer tokens/s" in result.output
    evals = RunStore(db).list_evals()
    assert [(e.cache, e.threshold) for e in evals] == [(None, None), ("dual", None), (None, 0.9), ("dual", 0.9)]
    for record in evals:
        assert record.wall_seconds > 0 and record.answer_tokens_per_s is not None and record.tokens_per_forward >= 1
        samples = RunStore(db).eval_samples(record.id)
        assert all(0 <= s["answer_tokens"] <= 8 and 1 <= s["nfe"] <= 8 for s in samples)
    shown = runner.invoke(app, ["eval", "frontier", "--db", str(db), "--json"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)
    assert [row["id"] for row in rows] == [e.id for e in evals] and any(row["pareto"] for row in rows)
    missing = runner.invoke(app, ["eval", "frontier", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "no run store" in missing.output


def test_the_consoles_eval_grid_gives_cells_with_a_cache_or_rule_their_own_row_and_plots_the_frontier():
    import asyncio

    from textual.app import App

    from dreamlab.tui.screens.evals import build_grid
    from dreamlab.tui.widgets.plots import FrontierPlot

    base = dict(task="t", steps=8, status="completed", started=0, block_length=None, cache=None, threshold=None,
                factor=None, gamma=None, commit_gap=None, accuracy=0.5, answer_tokens_per_s=10.0)
    records = [SimpleNamespace(**{**base, "id": 1, "alg": "entropy"}),
               SimpleNamespace(**{**base, "id": 2, "alg": "entropy", "block_length": 4, "cache": "dual",
                                  "answer_tokens_per_s": 30.0})]
    assert build_grid(records).rows == [("t", "entropy"), ("t", "entropy · block 4 · cache dual")]

    class Holder(App):
        def compose(self):
            yield FrontierPlot()

    async def scenario():
        app = Holder()
        async with app.run_test(size=(60, 20)):
            assert app.query_one(FrontierPlot).show(records) == 2
    asyncio.run(scenario())
