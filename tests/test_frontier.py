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


def test_answer_tokens_count_the_generated_ids_before_a_stop_strings_cut():
    from dreamlab.evals.harness import answer_tokens
    from dreamlab.models import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    # "<think>" spelled out a character at a time: 7 generated ids that re-encode as the one added token.
    ids = tokenizer.convert_tokens_to_ids(list("<think>12Q:more"))
    generation = tokenizer.decode(ids)
    assert generation == "<think>12Q:more"
    assert answer_tokens(tokenizer, ids, generation, None) == 15
    assert answer_tokens(tokenizer, ids, generation, generation.find("Q:")) == 9
    assert len(tokenizer.encode("<think>12", add_special_tokens=False)) == 3  # what a re-encoding would have said
    assert answer_tokens(tokenizer, ids, generation, 0) == 0
    whole = tokenizer.convert_tokens_to_ids(["<think>", "1", "Q"])  # a cut inside a token keeps none of it
    assert answer_tokens(tokenizer, whole, tokenizer.decode(whole), 2) == 0


def test_an_eval_cut_by_a_stop_string_counts_the_answer_tokens_before_the_cut():
    import dataclasses

    import torch

    from dreamlab.diffusion.sampler import generate
    from dreamlab.diffusion.settings import SamplerSettings
    from dreamlab.evals.harness import cut_at_eos, evaluate_in_memory, tokenize_prompts
    from dreamlab.evals.tasks import load_task
    from dreamlab.models import build_char_tokenizer, build_tiny_model

    torch.manual_seed(0)
    model, tokenizer = build_tiny_model(seed=0, initializer_range=0.1).eval(), build_char_tokenizer()
    task, cell = load_task("arithmetic"), SamplerSettings(steps=16, max_new_tokens=16, alg="entropy")
    [sample] = task.load_samples(1)
    prompt = tokenize_prompts(task, tokenizer, [sample], "chat", 0)[sample.idx]
    out = generate(model, torch.tensor([prompt]), None, **dataclasses.asdict(cell), seed=[sample.idx])
    ids = cut_at_eos(tokenizer, out.sequences[0, len(prompt):].tolist())
    pieces = [tokenizer.decode([token]) for token in ids]
    assert len(pieces) >= 4
    stop = pieces[3][0]  # a character first generated at or before the fourth id
    before = next(i for i, piece in enumerate(pieces) if stop in piece)
    cut = dataclasses.replace(task, until=[stop])
    _, [row] = evaluate_in_memory(model, tokenizer, cut, [sample], cell, batch_size=1)
    assert row["generation"] == "".join(pieces)
    assert row["cut_at"] == row["generation"].index(stop) == len("".join(pieces[:before]))
    assert row["answer_tokens"] == before < len(ids)
    _, [whole] = evaluate_in_memory(model, tokenizer, task, [sample], cell, batch_size=1)
    assert (whole["cut_at"], whole["answer_tokens"]) == (None, len(ids))
