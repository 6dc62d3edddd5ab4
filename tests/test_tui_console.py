"""The console driven by Pilot (80x24, headless) on a store filled by real tiny training runs.

Every main screen is saved as an SVG into the test's tmp_path; with DREAMLAB_DOCS_SVG=1 they are
also copied to docs/console-*.svg (the README's pictures).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from textual.command import CommandList
from typer.testing import CliRunner

from dreamlab.cli import app as cli
from dreamlab.store import RunStore
from dreamlab.tui.app import build_app
from dreamlab.tui.queries import LR_KEY
from dreamlab.tui.screens.compare import CompareScreen
from dreamlab.tui.screens.detail import RunDetailScreen
from dreamlab.tui.screens.help import HelpScreen
from dreamlab.tui.screens.launch import LaunchScreen
from dreamlab.tui.widgets.gpu_panel import GpuPanel
from dreamlab.tui.widgets.log_tail import LogTail
from dreamlab.tui.widgets.plots import LossPlot

pytestmark = pytest.mark.slow
DOCS = Path(__file__).resolve().parents[1] / "docs"
SMALL = ["model.compile=false", "data.micro_batch_size_per_gpu=8", "data.val_size=16", "model.tiny_hidden_size=64", "model.tiny_num_layers=2",
         "model.tiny_intermediate_size=128", "trainer.log_every=1", "trainer.val_check_interval=3",
         "trainer.total_training_steps=6", "trainer.save_checkpoint_steps=6"]


def _wait(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.3)


def _alive(pgid: int) -> bool:
    from dreamlab.train.processes import group_alive

    return group_alive(pgid)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """Two finished runs that differ in optim.lr, and one killed with -9 while it trained."""
    db = tmp_path_factory.mktemp("console") / "runs" / "dreamlab.db"
    runner = CliRunner()
    for name, lr in (("alpha", "1e-3"), ("beta", "3e-3")):
        result = runner.invoke(cli, ["train", *SMALL, f"optim.lr={lr}", "--name", name, "--foreground", "--db", str(db)])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", *SMALL, "trainer.total_training_steps=100000", "trainer.val_check_interval=null",
                                 "trainer.save_checkpoint_steps=null", "--name", "gamma", "--db", str(db)])
    assert result.exit_code == 0, result.output
    store = RunStore(db)
    _wait(lambda: store.latest_metrics(store.get_run("gamma").id).get("train/loss"))
    pgid = store.get_run("gamma").pgid
    os.killpg(pgid, signal.SIGKILL)
    _wait(lambda: not _alive(pgid), timeout=30)
    store.close()
    return db


def _save(app, tmp_path: Path, name: str) -> None:
    app.save_screenshot(f"console-{name}.svg", str(tmp_path))
    assert (tmp_path / f"console-{name}.svg").stat().st_size > 1000
    if os.environ.get("DREAMLAB_DOCS_SVG"):
        shutil.copy(tmp_path / f"console-{name}.svg", DOCS / f"console-{name}.svg")


async def _until(pilot, predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.1)


async def _go_to(pilot, app, name: str) -> None:
    table = app.screen.table
    await _until(pilot, lambda: table.polls_applied > 0)
    table.move_cursor(row=table.get_row_index(str(app.store.get_run(name).id)))
    await pilot.pause()


def test_runs_table_shows_the_runs_with_steps_and_losses(store_path, tmp_path):
    async def scenario():
        app = build_app(store_path, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.table
            await _until(pilot, lambda: table.polls_applied > 0)
            rows = {row.name: row for row in table.all_rows}
            assert set(rows) == {"alpha", "beta", "gamma"}
            assert rows["alpha"].status == rows["beta"].status == "completed"
            assert rows["alpha"].steps == 6 and rows["alpha"].lr == 1e-3
            alpha_id = app.store.get_run("alpha").id
            assert rows["alpha"].loss == app.store.latest_metrics(alpha_id)["train/loss"][1]
            assert table.get_cell(str(alpha_id), "steps").plain == "6"
            await pilot.press("slash", *"beta", "enter")
            assert [row.name for row in table.visible_rows()] == ["beta"] and table.row_count == 1
            await pilot.press("escape")
            assert table.row_count == 3
            table.sort_on("name")
            assert [table.get_cell_at((i, 1)) for i in range(3)] == ["alpha", "beta", "gamma"]
            _save(app, tmp_path, "runs")
    asyncio.run(scenario())


def test_detail_screen_plots_the_recorded_losses_and_shows_gpu_log_checkpoints_history(store_path, tmp_path):
    async def scenario():
        app = build_app(store_path, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await _go_to(pilot, app, "alpha")
            await pilot.press("enter")
            assert isinstance(app.screen, RunDetailScreen)
            plot = app.screen.query_one(LossPlot)
            await _until(pilot, lambda: plot.polls_applied > 0)
            run_id = app.store.get_run("alpha").id
            recorded = [(p.step, p.value) for p in app.store.metrics(run_id, "train/loss")]
            steps, values = plot.curves.get("train/loss")
            assert list(zip(steps, values)) == recorded and len(recorded) == 6
            assert plot.curves.get("val/loss")[0] == [3, 6] and plot.curves.get(LR_KEY)[0]
            assert "completed" in str(app.screen.query_one("#summary").render())
            _save(app, tmp_path, "detail")
            await pilot.press("g")
            panel = app.screen.query_one(GpuPanel)
            await _until(pilot, lambda: panel.polls_applied > 0)
            devices = str(app.screen.query_one("#gpu-devices").render())
            assert ("No NVIDIA GPU (unavailable:" in devices) == bool(panel.data.snapshot.unavailable)
            assert {"memory/rss_gb", "memory/allocated_gb"} & set(panel.data.memory.series)
            _save(app, tmp_path, "gpu")
            await pilot.press("o")
            log = app.screen.query_one(LogTail)
            await _until(pilot, lambda: log.polls_applied > 0)
            assert any(line.startswith("step 6 ") for line in log.shown)
            await pilot.press("k")
            checkpoints = app.screen.query_one("#checkpoints")
            assert checkpoints.get_cell_at((0, 0)) == 6
            await pilot.press("h")
            history = app.screen.query_one("#history")
            kinds = [str(history.get_cell_at((row, 1))) for row in range(history.row_count)]
            assert kinds == [event.kind for event in app.store.events(run_id)]
            assert kinds[:2] == ["queued", "started"] and "checkpoint" in kinds and kinds[-1] == "completed"
    asyncio.run(scenario())


def test_compare_shows_the_differing_parameters_and_both_curves(store_path, tmp_path):
    async def scenario():
        app = build_app(store_path, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await _go_to(pilot, app, "alpha")
            await pilot.press("space")
            await _go_to(pilot, app, "beta")
            await pilot.press("space", "c")
            assert isinstance(app.screen, CompareScreen)
            await _until(pilot, lambda: app.screen.data is not None)
            comparison = app.screen.data.comparison
            assert list(comparison.params) == ["optim.lr"]
            table = app.screen.query_one("#compare-table")
            assert table.get_row("param:optim.lr")[0] == "optim.lr"
            assert sorted(table.get_row("param:optim.lr")[1:]) == ["0.001", "0.003"]
            assert [len(steps) for steps, _ in app.screen.data.losses.values()] == [6, 6]
            _save(app, tmp_path, "compare")
    asyncio.run(scenario())


def test_launch_with_a_bad_override_shows_the_error_and_starts_nothing(store_path, tmp_path):
    async def scenario():
        app = build_app(store_path, poll_s=0.5)
        before = app.store.count_runs()
        folders = sorted(p.name for p in store_path.parent.iterdir())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("n")
            assert isinstance(app.screen, LaunchScreen)
            assert app.screen.query_one("#recipe").value == "tiny-arithmetic"  # listed at once, no worker
            await pilot.press(*"optim.lrr=1")
            error = app.screen.query_one("#launch-error")
            await _until(pilot, lambda: "did you mean optim.lr" in str(error.render()))
            await pilot.press("ctrl+s")
            await _until(pilot, lambda: not app.screen.launching)
            assert isinstance(app.screen, LaunchScreen) and error.has_class("error")
            assert "did you mean optim.lr" in str(error.render())
            _save(app, tmp_path, "launch")
        assert app.store.count_runs() == before
        assert sorted(p.name for p in store_path.parent.iterdir()) == folders
    asyncio.run(scenario())


def test_a_run_killed_with_sigkill_shows_as_lost_without_the_console_writing_it(store_path):
    async def scenario():
        time.sleep(1.1)  # the killed run's last heartbeat is now more than a second old
        app = build_app(store_path, lost_after_s=1.0, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.table
            await _until(pilot, lambda: table.polls_applied > 0)
            gamma = next(row for row in table.all_rows if row.name == "gamma")
            assert gamma.status == "lost" and "is gone" in gamma.reason
            assert table.get_cell(str(gamma.id), "status").plain == "lost"
            table.move_cursor(row=table.get_row_index(str(gamma.id)))
            await _until(pilot, lambda: "is gone" in str(app.screen.query_one("#title").render()))
        assert app.store.get_run("gamma").status == "running"  # shown, never written: the console is a reader
    asyncio.run(scenario())


def test_help_lists_the_keys_and_the_palette_opens_a_run(store_path, tmp_path):
    async def scenario():
        app = build_app(store_path, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: app.screen.table.polls_applied > 0)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            _save(app, tmp_path, "help")
            await pilot.press("escape", "ctrl+p")
            await pilot.press(*"Open run beta")
            hits = app.screen.query_one(CommandList)
            await _until(pilot, lambda: hits.highlighted is not None
                         and "beta" in str(hits.get_option_at_index(hits.highlighted).prompt))
            await pilot.press("enter")
            await _until(pilot, lambda: isinstance(app.screen, RunDetailScreen))
            assert app.screen.run.name == "beta"
    asyncio.run(scenario())


def test_evals_grid_samples_and_denoising_replay(store_path, tmp_path):
    from dreamlab.display import MASK_GLYPH
    from dreamlab.tui.screens.evals import EvalsScreen, ReplayScreen, SamplesScreen, shown

    # A real 2 x 2 grid on the fixture's trained run; --history keeps the per-step tokens of the first samples.
    result = CliRunner().invoke(cli, ["eval", "--run", "alpha", "--alg", "entropy,origin", "--steps", "2,4",
                                      "--max-new-tokens", "8", "--limit", "3", "--batch-size", "4", "--history",
                                      "--db", str(store_path)])
    assert result.exit_code == 0, result.output
    stored = {(e.alg, e.steps): e for e in RunStore(store_path).list_evals(run_ref="alpha")}
    assert set(stored) == {("entropy", 2), ("entropy", 4), ("origin", 2), ("origin", 4)}

    async def scenario():
        app = build_app(store_path, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await _go_to(pilot, app, "alpha")
            table = app.screen.table
            await _until(pilot, lambda: table.rows_by_id[app.store.get_run("alpha").id].best_eval is not None)
            alpha = table.rows_by_id[app.store.get_run("alpha").id]
            assert alpha.best_eval == max(e.accuracy for e in stored.values())
            assert table.get_cell(str(alpha.id), "eval").plain == f"{100 * alpha.best_eval:.1f}%"
            await pilot.press("e")
            assert isinstance(app.screen, EvalsScreen) and app.screen.run_name == "alpha"
            await _until(pilot, lambda: app.screen.grid.cells)
            grid = app.screen.query_one("#eval-grid")
            assert app.screen.grid.rows == [("arithmetic", "entropy"), ("arithmetic", "origin")]
            assert app.screen.grid.steps == [2, 4]
            for row, alg in enumerate(("entropy", "origin")):
                for column, steps in enumerate((2, 4), start=1):
                    cell = grid.get_cell_at((row, column)).plain
                    assert cell.startswith(f"{100 * stored[(alg, steps)].accuracy:.1f}%"), cell
                    assert f"nfe {stored[(alg, steps)].nfe_mean:.0f}" in cell
            _save(app, tmp_path, "evals")

            grid.move_cursor(row=0, column=2)  # entropy, 4 steps
            await pilot.press("enter")
            assert isinstance(app.screen, SamplesScreen) and app.screen.record.id == stored[("entropy", 4)].id
            await _until(pilot, lambda: app.screen.samples)
            samples = app.store.eval_samples(stored[("entropy", 4)].id)
            assert [s["idx"] for s in app.screen.samples] == [0, 1, 2]
            await pilot.press("down")
            detail = str(app.screen.query_one("#sample-detail").render())
            second = samples[1]
            for label, key in (("question", "question"), ("generation", "generation"), ("extracted", "extracted"),
                               ("gold", "gold")):
                assert f"{label}: {shown(second[key])}\n" in detail, (label, detail)
            assert "main / lm-eval strict / flexible: " + ("✓" if second["correct"] else "✗") in detail

            await pilot.press("d")
            assert isinstance(app.screen, ReplayScreen)
            replay = app.screen
            await _until(pilot, lambda: replay.frames, timeout=60)
            masks = [frame.count(MASK_GLYPH) for frame in replay.frames]
            assert len(masks) == 4 and masks[0] > 0 and masks[-1] == 0
            assert masks == sorted(masks, reverse=True) and len(set(masks)) == 4  # 2 of 8 positions revealed a step
            title = lambda: str(replay.query_one("#title").render())  # noqa: E731
            assert f"step 1/4 · {masks[0]} masks left" in title()
            await pilot.press("right")
            assert replay.position == 1 and f"{masks[1]} masks left" in title()
            assert str(replay.query_one("#replay-text").render()).count(MASK_GLYPH) == masks[1] < masks[0]
            await pilot.press("space")  # plays to the last step
            await _until(pilot, lambda: replay.position == 3)
            assert f"step 4/4 · {masks[3]} masks left" in title()
            assert replay.player is None  # stopped on the last frame
            await pilot.press("left")
            await pilot.pause(0.4)  # more than two play ticks: a still-running player would move it back to 3
            assert replay.position == 2
            await pilot.press("home", "space", "right")  # stepping while playing pauses the player
            assert replay.player is None
            paused_at = replay.position
            await pilot.pause(0.4)
            assert replay.position == paused_at
            await pilot.press("escape", "escape", "escape")
            await pilot.press("enter")  # the run detail screen has the same key
            await pilot.press("e")
            assert isinstance(app.screen, EvalsScreen) and app.screen.run_name == "alpha"
    asyncio.run(scenario())


def test_a_run_launched_from_the_form_trains_and_leaves_no_zombie_while_the_console_stays_open(tmp_path):
    import psutil

    async def scenario():
        app = build_app(tmp_path / "runs" / "dreamlab.db", poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("n")
            assert isinstance(app.screen, LaunchScreen)
            await pilot.press(*" ".join([*SMALL, "trainer.total_training_steps=3", "trainer.save_checkpoint_steps=null",
                                         "trainer.val_check_interval=null"]))
            await pilot.press("tab", *"formed")
            await pilot.press("ctrl+s")
            await _until(pilot, lambda: not isinstance(app.screen, LaunchScreen))
            run = app.store.get_run("formed")
            await _until(pilot, lambda: app.store.get_run("formed").status == "completed", timeout=300)  # a busy machine

            def state() -> str:
                try:
                    return psutil.Process(run.pid).status()
                except psutil.NoSuchProcess:
                    return "reaped"
            await _until(pilot, lambda: state() in ("reaped", psutil.STATUS_ZOMBIE))  # torchrun has ended
            # Without a reaper the ended torchrun stays a zombie for as long as the console runs.
            await _until(pilot, lambda: state() == "reaped", timeout=10)
    asyncio.run(scenario())
