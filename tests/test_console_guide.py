"""The console at 80x24 as a newcomer meets it: an empty store, narrow columns, the loss plot's views, sample filters.

Stores are written directly (no training), so these run in seconds; every wait polls a condition.
"""

from __future__ import annotations

import asyncio
import math
import time

from dreamlab.store import RunStore
from dreamlab.tui.app import build_app
from dreamlab.tui.screens.detail import RunDetailScreen
from dreamlab.tui.screens.evals import SamplesScreen
from dreamlab.tui.widgets.plots import LossPlot, ema
from dreamlab.tui.widgets.polling import pollers
from dreamlab.tui.widgets.runs_table import RunsTable

SIZE = (80, 24)


async def _until(pilot, predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def _text(widget) -> str:
    return str(widget.render())


def _one_run(path) -> int:
    store = RunStore(path)
    run = store.create_run(name="first-run", recipe={"model": {"partial_pretrain": "Dream-org/Dream-v0-Base-7B"},
                                                     "optim": {"lr": 1e-5}})
    store.mark_started(run.id, pid=1, pgid=1)
    for step in range(1, 1001):
        store.record_metrics(run.id, step, {"train/loss": 4.0 * math.exp(-step / 130)})
    store.finish(run.id, "completed")
    store.close()
    return run.id


def test_an_empty_store_says_how_to_start_and_where_the_store_is(tmp_path):
    async def scenario():
        app = build_app(tmp_path / "runs" / "dreamlab.db", poll_s=0)
        async with app.run_test(size=SIZE) as pilot:
            table = app.screen.table
            await _until(pilot, lambda: table.polls_applied > 0 and app.screen.has_class("-empty"))
            hint = app.screen.query_one("#empty")
            assert hint.display and hint.region.height > 3
            text = _text(hint)
            assert "n " in text and "start a run" in text and "dreamlab demo" in text
            assert str((tmp_path / "runs" / "dreamlab.db").resolve()) in text
            assert "0 runs" in _text(app.screen.query_one("#title"))
    asyncio.run(scenario())


def test_narrow_columns_by_priority_and_one_run_reads_singular(tmp_path):
    _one_run(tmp_path / "dreamlab.db")

    async def scenario():
        app = build_app(tmp_path / "dreamlab.db", poll_s=0)
        async with app.run_test(size=SIZE) as pilot:
            table: RunsTable = app.screen.table
            await _until(pilot, lambda: table.polls_applied > 0 and table.row_count == 1)
            assert not app.screen.has_class("-empty") and not app.screen.query_one("#empty").display
            title = _text(app.screen.query_one("#title"))
            assert "1 run," in title and "1 runs" not in title
            shown = table.shown_columns
            assert shown[:6] == ["name", "status", "steps", "loss", "eval", "started"] and "duration" in shown
            assert "model" not in shown  # too wide for what is left of 80 columns: left out, not cut mid-word
            widths = sum(column.get_render_width(table) for column in table.columns.values())
            assert widths <= SIZE[0] - 2
            await pilot.resize_terminal(160, 24)
            await _until(pilot, lambda: "model" in table.shown_columns)
            await _until(pilot, lambda: table.row_count == 1)
            assert table.get_cell(str(table.all_rows[0].id), "model") == "Dream-org/Dream-v0-Base-7B"
    asyncio.run(scenario())


def test_loss_plot_log_scale_and_smoothing_are_remembered_for_the_session(tmp_path):
    run_id = _one_run(tmp_path / "dreamlab.db")

    async def scenario():
        app = build_app(tmp_path / "dreamlab.db", poll_s=0)
        async with app.run_test(size=SIZE) as pilot:
            await _until(pilot, lambda: app.screen.table.row_count == 1)
            app.open_run(run_id)
            await _until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen.query(LossPlot))
            plot = app.screen.query_one(LossPlot)
            await _until(pilot, lambda: plot.polls_applied > 0)
            assert not app.plot_view.log_y and not app.plot_view.smooth
            await pilot.press("y", "s")
            assert app.plot_view.log_y and app.plot_view.smooth
            assert plot.plt.monitor.yscale[0] == "log"  # the left (loss) axis
            await pilot.press("escape")
            app.open_run(run_id)  # another visit in the same session keeps both
            await _until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen.query(LossPlot))
            again = app.screen.query_one(LossPlot)
            await _until(pilot, lambda: again.polls_applied > 0)
            assert again is not plot and app.plot_view.log_y and app.plot_view.smooth
            assert again.plt.monitor.yscale[0] == "log"
            await pilot.press("y")
            assert not app.plot_view.log_y and again.plt.monitor.yscale[0] == "linear"
    asyncio.run(scenario())
    assert ema([4.0, 4.0, 4.0]) == [4.0, 4.0, 4.0]  # debiased: a flat series stays flat from the first point
    smoothed = ema([4.0, 0.0, 4.0, 0.0])
    assert 0 < min(smoothed[1:]) and max(smoothed[1:]) < 4


def test_samples_filter_to_wrong_disagreeing_and_masked_and_jump_to_the_next_wrong(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    record = store.create_or_resume_eval({"task": "arithmetic", "alg": "entropy", "steps": 8})
    verdicts = [(1, 1, 0), (0, 0, 0), (1, 1, 0), (0, 1, 2), (1, 0, 0), (0, 0, 3), (1, 1, 0)]
    store.record_eval_samples(record.id, [
        {"idx": idx, "question": f"q{idx}", "gold": "1", "extracted": "1" if correct else "2", "correct": correct,
         "flexible_correct": flexible, "leftover_masks": masks}
        for idx, (correct, flexible, masks) in enumerate(verdicts)])
    record = store.get_eval(record.id)
    store.close()

    async def scenario():
        app = build_app(tmp_path / "dreamlab.db", poll_s=0)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(SamplesScreen(record))
            await _until(pilot, lambda: isinstance(app.screen, SamplesScreen) and app.screen.samples)
            screen = app.screen
            table = screen.query_one("#samples")
            idx = lambda: [sample["idx"] for sample in screen.listed]  # noqa: E731
            assert idx() == list(range(7)) and "all: 7 of 7" in _text(screen.query_one("#title"))
            await pilot.press("w")
            assert screen.listed[table.cursor_row]["idx"] == 1
            await pilot.press("w", "w")
            assert screen.listed[table.cursor_row]["idx"] == 5
            await pilot.press("w")  # wraps around
            assert screen.listed[table.cursor_row]["idx"] == 1
            assert "q1" in _text(screen.query_one("#sample-detail"))
            await pilot.press("f")
            assert screen.filter == "wrong" and idx() == [1, 3, 5] and table.row_count == 3
            assert "wrong: 3 of 7" in _text(screen.query_one("#title"))
            await pilot.press("f")
            assert screen.filter == "strict ≠ flexible" and idx() == [3, 4]
            await pilot.press("f")
            assert screen.filter == "leftover masks" and idx() == [3, 5]
            await pilot.press("down")
            assert "q5" in _text(screen.query_one("#sample-detail"))
            await pilot.press("f")
            assert screen.filter == "all" and idx() == list(range(7))
    asyncio.run(scenario())


def test_refreshing_the_pollers_polls_every_widget_of_the_run_screen_now(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    run_id = _one_run(db)

    async def scenario():
        app = build_app(db, poll_s=0)  # no timer polls: only the first poll and the asked ones
        async with app.run_test(size=SIZE) as pilot:
            await _until(pilot, lambda: app.screen.table.polls_applied > 0)
            app.open_run(run_id)
            await _until(pilot, lambda: isinstance(app.screen, RunDetailScreen)
                         and {type(w).__name__ for w in pollers(app.screen)} >= {"RunSummaryView", "LossPlot"})
            widgets = pollers(app.screen)
            await _until(pilot, lambda: all(w.polls_applied > 0 for w in widgets))
            before = [w.polls_applied for w in widgets]
            app.refresh_pollers()
            await _until(pilot, lambda: all(w.polls_applied > b for w, b in zip(widgets, before)))
    asyncio.run(scenario())
