"""Evals from every source in one store: dreamlab eval cells (plain, a cache, a published protocol) and lm-eval bridge
evals; `eval frontier`, `eval compare` and the console's evals screen read them all."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.evals.lm_eval.record import record_results
from dreamlab.store import RunStore

runner = CliRunner()
PUBLISHED = "Dream-org/Dream-v0-Base-7B"


def _logged(doc_id: int, name: str, value: float, metric: str) -> dict:
    return {"doc_id": doc_id, "filter": name, "metrics": [metric], metric: value, "target": "5",
            "arguments": {"gen_args_0": {"arg_0": "Q: x\n\nA:", "arg_1": {}}}, "resps": [["The answer is 5."]],
            "filtered_resps": ["5" if value == 1 else "[invalid]"]}


def _bridge(store: RunStore, checkpoint: Path, task: str, metric: str = "exact_match") -> int:
    """One lm-eval bridge eval of two documents (lm-eval's output as its JSON files hold it): strict 1/2, flexible 2/2."""
    samples = {str(doc): {"generation": "The answer is 5.\nQ: y", "cut_at": 16, "answer_tokens": 16, "nfe": 8,
                          "seconds": 0.5, "leftover_masks": 0} for doc in (0, 1)}
    info = {"checkpoint": str(checkpoint), "pretrained": str(checkpoint), "add_bos_token": True, "batch_size": 1,
            "seed": 0, "device": "cpu",
            "tasks": {task: {"settings": {"alg": "entropy", "steps": 8, "max_new_tokens": 16}, "samples": samples}}}
    results = {"configs": {task: {"doc_to_text": "Q: {{question}}"}}, "versions": {task: 3.0}, "n-shot": {task: 8},
               "config": {"limit": None, "model": "dreamlab", "dreamlab": info}, "lm_eval_version": "0.4.13",
               "results": {task: {f"{metric},strict-match": 0.5, f"{metric},flexible-extract": 1.0}}}
    scores = (1, 1, 0, 1) if metric == "exact_match" else (0.0, 0.0, 0.42, 0.5)  # an F1 of 0 is no verdict then
    logged = [_logged(doc, name, score, metric)
              for (doc, name), score in zip([(0, "strict-match"), (0, "flexible-extract"), (1, "strict-match"),
                                             (1, "flexible-extract")], scores)]
    [record] = record_results(store, results, {task: logged})
    return record.id


def _cell(store: RunStore, run_id: int, **settings) -> int:
    """A finished dreamlab eval cell of two samples, the first right (strict and flexible too where the task has them)."""
    base = {"run_id": run_id, "model": "m", "task": "gsm8k_cot", "shots": 8, "template": "base", "add_bos": True,
            "template_hash": "h", "alg": "entropy", "steps": 8, "max_new_tokens": 16, "seed": 0, "n_samples": 2}
    record = store.create_or_resume_eval({**base, **settings})
    lm_eval = (settings.get("task") or base["task"]) == "gsm8k_cot"
    rows = [{"idx": i, "question": "q", "gold": "5", "generation": "The answer is 5." if i == 0 else "no", "correct": i == 0,
             "strict_correct": i == 0 if lm_eval else None, "flexible_correct": i == 0, "nfe": 8, "seconds": 0.25,
             "answer_tokens": 4} for i in (0, 1)]
    store.record_eval_samples(record.id, rows)
    store.finish_eval(record.id, "completed", {"accuracy": 0.5, "strict_accuracy": 0.5 if lm_eval else None,
                                               "flexible_accuracy": 0.5, "ci_low": 0.1, "ci_high": 0.9, "nfe_mean": 8.0,
                                               "answer_tokens_per_s": 16.0 if settings.get("cache") else 8.0})
    return record.id


@pytest.fixture
def store_path(tmp_path) -> Path:
    db = tmp_path / "runs" / "dreamlab.db"
    db.parent.mkdir()
    with RunStore(db) as store:
        run = store.create_run("alpha", run_dir=tmp_path / "runs" / "alpha")
        _cell(store, run.id, task="arithmetic", template="chat", add_bos=False, shots=0)
        _cell(store, run.id, task="arithmetic", template="chat", add_bos=False, shots=0, block_length=4, cache="dual")
        _cell(store, run.id, model=PUBLISHED, steps=256, max_new_tokens=256, temperature=0.0, top_p=0.95)
        _bridge(store, tmp_path / "runs" / "alpha" / "checkpoint-6", "gsm8k_cot")
        _bridge(store, tmp_path / "runs" / "alpha" / "checkpoint-6", "f1_task", metric="f1")
        # the published protocol's settings, but with a cache: not the published protocol
        _cell(store, run.id, model=PUBLISHED, steps=256, max_new_tokens=256, temperature=0.0, top_p=0.95, block_length=32,
              cache="dual")
    return db


def test_bridge_evals_sit_in_the_store_with_the_columns_dreamlab_eval_fills(store_path):
    with RunStore(store_path) as store:
        bridge, f1 = store.list_evals()[3:5]
        f1_samples = store.eval_samples(f1.id)
        samples = store.eval_samples(bridge.id)
    assert (bridge.task, bridge.run_id, bridge.template, bridge.add_bos) == ("lm-eval:gsm8k_cot", 1, "base", True)
    assert (bridge.accuracy, bridge.strict_accuracy, bridge.flexible_accuracy) == (0.5, 0.5, 1.0)
    assert (bridge.answer_tokens_per_s, bridge.wall_seconds, bridge.tokens_per_forward) == (32.0, 1.0, 2.0)
    assert [(s["strict_correct"], s["flexible_correct"], s["cut_at"]) for s in samples] == [(1, 1, 16), (0, 1, 16)]
    assert (f1.accuracy, f1.strict_accuracy, f1.flexible_accuracy, f1.ci_low) == (None, None, None, None)
    assert [(s["correct"], s["strict_correct"], s["flexible_correct"]) for s in f1_samples] == [(None, None, None)] * 2
    assert f1_samples[1]["metrics"] == {"strict-match": {"f1": 0.42}, "flexible-extract": {"f1": 0.5}}


def test_frontier_and_compare_read_bridge_evals(store_path):
    shown = runner.invoke(app, ["eval", "frontier", "4", "5", "1", "--db", str(store_path), "--json"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)
    assert [(row["id"], row["accuracy"], row["pareto"]) for row in rows] == [(4, 0.5, True), (5, None, False),
                                                                             (1, 0.5, False)]
    newest = json.loads(runner.invoke(app, ["eval", "frontier", "--db", str(store_path), "--json"]).stdout)
    assert [row["id"] for row in newest] == [6]  # the newest eval has no grid: it alone, not every grid-less eval
    with RunStore(store_path) as store:
        store.create_or_resume_eval({"task": "t", "alg": "entropy", "steps": 8, "grid_id": "g1"})
        store.create_or_resume_eval({"task": "t", "alg": "entropy", "steps": 16, "grid_id": "g1"})
    grid = json.loads(runner.invoke(app, ["eval", "frontier", "--db", str(store_path), "--json"]).stdout)
    assert [row["id"] for row in grid] == [7, 8]
    table = runner.invoke(app, ["eval", "frontier", "4", "5", "--db", str(store_path)])
    assert table.exit_code == 0 and "lm-eval:gsm8k_cot" in table.output, table.output
    # two bridge evals; the F1 one has no 0/1 verdict, so no sample is shared rather than every sample wrong
    compared = runner.invoke(app, ["eval", "compare", "4", "5", "--db", str(store_path), "--json"])
    assert compared.exit_code == 0, compared.output
    [pair] = json.loads(compared.stdout)
    assert (pair["shared"], pair["accuracy_a"], pair["accuracy_b"], pair["p_value"]) == (0, None, None, 1.0)
    against = json.loads(runner.invoke(app, ["eval", "compare", "3", "4", "--db", str(store_path), "--json"]).stdout)
    assert [(p["shared"], p["accuracy_a"], p["accuracy_b"], p["only_a"], p["only_b"]) for p in against] == [
        (2, 0.5, 0.5, 0, 0)]
    assert runner.invoke(app, ["eval", "compare", "3", "4", "--db", str(store_path)]).exit_code == 0


def test_the_evals_screen_shows_plain_cache_published_and_bridge_cells_with_the_frontier(store_path):
    from dreamlab.tui.app import build_app
    from dreamlab.tui.screens.evals import EvalsScreen, SamplesScreen
    from dreamlab.tui.widgets.plots import FrontierPlot

    async def scenario():
        app = build_app(store_path, poll_s=60)
        async with app.run_test(size=(160, 40)) as pilot:
            app.push_screen(EvalsScreen(1, "alpha"))
            await pilot.pause()
            screen = app.screen
            for _ in range(100):
                if screen.grid.cells:
                    break
                await pilot.pause(0.1)
            assert screen.grid.rows == [("arithmetic", "entropy"), ("arithmetic", "entropy · block 4 · cache dual"),
                                        ("gsm8k_cot", "entropy"), ("gsm8k_cot", "entropy · block 32 · cache dual"),
                                        ("lm-eval:f1_task", "entropy"),
                                        ("lm-eval:gsm8k_cot", "entropy")]
            assert screen.grid.steps == [8, 256]
            table = screen.query_one("#eval-grid")
            cells = [[table.get_cell_at((row, column)).plain if hasattr(table.get_cell_at((row, column)), "plain")
                      else str(table.get_cell_at((row, column))) for column in range(3)] for row in range(6)]
            assert cells == [
                ["arithmetic / entropy", "50.0% ±40.0 nfe 8", "—"],
                ["arithmetic / entropy · block 4 · cache dual", "50.0% ±40.0 nfe 8", "—"],
                ["gsm8k_cot / entropy", "—", "50.0% ±40.0 nfe 8 lm-eval 50.0/50.0 · published 77.2 "
                                              "(Dream 7B blog, hkunlp.github.io/blog/2025/dream)"],
                ["gsm8k_cot / entropy · block 32 · cache dual", "—", "50.0% ±40.0 nfe 8 lm-eval 50.0/50.0"],
                ["lm-eval:f1_task / entropy", "completed", "—"],
                ["lm-eval:gsm8k_cot / entropy", "50.0% ±40.5 nfe 8 lm-eval 50.0/100.0", "—"]]
            plot = screen.query_one("#frontier", FrontierPlot)
            assert plot.display and plot.show(list(screen.grid.cells.values())) == 5  # the F1 eval has no accuracy
            table.move_cursor(row=5, column=1)
            await pilot.press("enter")
            assert isinstance(app.screen, SamplesScreen)
            for _ in range(100):
                if app.screen.samples:
                    break
                await pilot.pause(0.1)
            detail = str(app.screen.query_one("#sample-detail").render())
            assert "generation: The answer is 5.✂\nQ: y\n" in detail and "cut at character 16" in detail
            assert "main / lm-eval strict / flexible: ✓ ✓ ✓" in detail
    asyncio.run(scenario())


def test_the_strict_flexible_filter_uses_lm_evals_strict_verdict_where_there_is_one():
    from dreamlab.tui.screens.evals import SAMPLE_FILTERS

    disagree = SAMPLE_FILTERS["strict ≠ flexible"]
    assert not disagree({"correct": True, "strict_correct": False, "flexible_correct": False})  # Math-Verify alone differs
    assert disagree({"correct": False, "strict_correct": True, "flexible_correct": False})
    assert disagree({"correct": True, "strict_correct": None, "flexible_correct": False})  # no lm-eval scheme: main verdict
    assert not disagree({"correct": True, "strict_correct": None, "flexible_correct": None})
