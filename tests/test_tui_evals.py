"""The console's eval jobs: the form that starts a detached eval, the live evals screen, the compare view (Pilot, 80x24).

Screens are saved as SVG into the test's tmp_path; with DREAMLAB_DOCS_SVG=1 also to docs/console-*.svg.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input
from typer.testing import CliRunner

from dreamlab.cli import app as cli
from dreamlab.evals.compare import compare_pair
from dreamlab.store import RunStore
from dreamlab.tui.app import build_app
from dreamlab.tui.screens.detail import RunDetailScreen
from dreamlab.tui.screens.eval_compare import EvalCompareScreen, differences
from dreamlab.tui.screens.eval_launch import EvalLaunchScreen, EvalRequest
from dreamlab.tui.screens.evals import EvalJobsTable, EvalsScreen

runner = CliRunner()
RUN = "tiny-sft"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _save(app, tmp_path: Path, name: str) -> None:
    app.save_screenshot(f"console-{name}.svg", str(tmp_path))
    assert (tmp_path / f"console-{name}.svg").stat().st_size > 1000
    if os.environ.get("DREAMLAB_DOCS_SVG"):
        shutil.copy(tmp_path / f"console-{name}.svg", DOCS / f"console-{name}.svg")


def test_the_form_builds_the_eval_command_line():
    request = EvalRequest(("--run", RUN), "arithmetic", "entropy, origin", " 4,8", "2", "1", "")
    assert request.argv() == ["--run", RUN, "--task", "arithmetic", "--alg", "entropy,origin", "--steps", "4,8",
                              "--batch-size", "2"]
    parallel = EvalRequest(("--model", "/ckpt/model"), "gsm8k_cot", "", "", "16", "2", "50")
    assert parallel.argv() == ["--model", "/ckpt/model", "--task", "gsm8k_cot", "--batch-size", "16", "--limit", "50",
                               "--nproc-per-node", "2"]
    for field, request in (("batch size: a whole number, not 'x'", EvalRequest(("--run", RUN), "arithmetic", batch_size="x")),
                           ("processes: at least 1, not 0", EvalRequest(("--run", RUN), "arithmetic", processes="0")),
                           ("limit: a whole number, not '1.5'", EvalRequest(("--run", RUN), "arithmetic", limit="1.5"))):
        with pytest.raises(ValueError, match=field):
            request.argv()


def test_differences_are_the_shared_samples_judged_differently():
    a = [{"idx": 0, "correct": 1}, {"idx": 1, "correct": 0}, {"idx": 2, "correct": 1}, {"idx": 3, "correct": None},
         {"idx": 5, "correct": 1}]
    b = [{"idx": 0, "correct": 0}, {"idx": 1, "correct": 0}, {"idx": 2, "correct": 1}, {"idx": 3, "correct": 1},
         {"idx": 4, "correct": 1}, {"idx": 1, "correct": 0}]
    assert [d.idx for d in differences(a, b)] == [0]
    assert [(d.idx, d.a["correct"], d.b["correct"]) for d in differences(b, a)] == [(0, 0, 1)]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A real `dreamlab train` run of the tiny model (4 steps, one checkpoint)."""
    path = tmp_path_factory.mktemp("tui-evals") / "runs" / "dreamlab.db"
    result = runner.invoke(cli, ["train", "model.compile=false", "data.micro_batch_size_per_gpu=8", "data.val_size=16",
                                 "model.tiny_hidden_size=64", "model.tiny_num_layers=2", "model.tiny_intermediate_size=128",
                                 "trainer.total_training_steps=4", "trainer.save_checkpoint_steps=4",
                                 "trainer.val_check_interval=null", "--name", RUN, "--foreground", "--db", str(path)])
    assert result.exit_code == 0, result.output
    return path


def _wait(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


async def _until(pilot, predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.1)


def _text(widget) -> str:
    return str(widget.render())


@pytest.mark.slow
def test_the_form_starts_a_detached_eval_that_outlives_the_console(db, tmp_path):
    store = RunStore(db)
    run = store.get_run(RUN)
    checkpoint = store.latest_complete_checkpoint(run.id)
    before = {job.id for job in store.list_eval_jobs()}

    async def scenario() -> None:
        app = build_app(db, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            app.open_run(run.id)
            await _until(pilot, lambda: isinstance(app.screen, RunDetailScreen))
            await pilot.press("k")  # Checkpoints tab: enter on a checkpoint opens the form for that checkpoint
            table = app.screen.query_one("#checkpoints", DataTable)
            await _until(pilot, lambda: table.row_count == 1 and app.screen.query_one("#summary").summary is not None)
            table.focus()
            await pilot.press("enter")
            await _until(pilot, lambda: isinstance(app.screen, EvalLaunchScreen))
            assert app.screen.checkpoint == checkpoint.path and app.screen.weights == ("--model", checkpoint.path)
            await pilot.press("escape")
            await _until(pilot, lambda: isinstance(app.screen, RunDetailScreen))

            await pilot.press("v")  # the run's newest checkpoint
            await _until(pilot, lambda: isinstance(app.screen, EvalLaunchScreen))
            form = app.screen
            verdict = form.query_one("#launch-error")
            form.query_one("#steps", Input).value = "4"
            form.query_one("#batch-size", Input).value = "x"
            await _until(pilot, lambda: "error: batch size: a whole number, not 'x'" in _text(verdict))
            form.query_one("#batch-size", Input).value = "2"
            form.query_one("#limit", Input).value = "4"
            await _until(pilot, lambda: _text(verdict).startswith("ok: 1 cell(s) of arithmetic"))
            _save(app, tmp_path, "eval-form")
            await pilot.press("ctrl+s")
            await _until(pilot, lambda: isinstance(app.screen, RunDetailScreen))
        # the console has closed; the eval goes on in its own session

    asyncio.run(scenario())
    [job] = [job for job in store.list_eval_jobs() if job.id not in before]
    assert job.detached and job.run_id == run.id and os.getsid(job.pid) == job.pid
    assert job.command == ["--run", RUN, "--task", "arithmetic", "--steps", "4", "--batch-size", "2", "--limit", "4"]
    _wait(lambda: store.get_eval_job(job.id).status != "running")
    done = store.get_eval_job(job.id)
    assert done.status == "completed" and (done.n_done, done.n_total) == (4, 4)
    assert [store.get_eval(i).checkpoint for i in done.eval_ids] == [checkpoint.path]


def _detach(db, alg: str, limit: int) -> int:
    """Start a detached eval of the run's checkpoint (16 steps, 16 tokens, batch 2); its job id."""
    started = runner.invoke(cli, ["eval", "--run", RUN, "--alg", alg, "--steps", "16", "--max-new-tokens", "16",
                                  "--limit", str(limit), "--batch-size", "2", "--detach", "--db", str(db)])
    assert started.exit_code == 0, started.output
    return RunStore(db).list_eval_jobs()[0].id


@pytest.mark.slow
def test_the_evals_screen_follows_a_running_eval_live(db, tmp_path):
    # 200 problems: the console opens and sees the job running long before any machine finishes them.
    job_id = _detach(db, "origin", limit=200)

    async def scenario() -> None:
        app = build_app(db, poll_s=0.3)
        async with app.run_test(size=(80, 24)) as pilot:
            run = app.store.get_run(RUN)
            app.open_evals(run.id, RUN)
            await _until(pilot, lambda: isinstance(app.screen, EvalsScreen) and app.screen.query("#eval-jobs"))
            jobs = app.screen.query_one("#eval-jobs", EvalJobsTable)
            row = lambda: next((r for r in jobs.rows_shown if r.job.id == job_id), None)  # noqa: E731
            await _until(pilot, lambda: row() is not None and row().status == "running" and row().job.n_done >= 2)
            shown = row()
            cells = [_text_of(jobs.get_cell_at((jobs.rows_shown.index(shown), column))) for column in range(6)]
            assert cells[:4] == [str(job_id), "running", "arithmetic", f"{shown.job.n_done}/200"]
            assert cells[4] == f"{100 * shown.job.n_correct / shown.job.n_done:.1f}%" and cells[5] != "—"  # an ETA
            grid = app.screen.query_one("#eval-grid", DataTable)
            where = (app.screen.grid.rows.index(("arithmetic", "origin")), app.screen.grid.steps.index(16) + 1)
            running_cell = app.screen.grid.cells[("arithmetic", "origin", 16)]
            assert running_cell.status == "running"
            assert _text_of(grid.get_cell_at(where)).startswith(f"{running_cell.n_done}/200")
            _save(app, tmp_path, "evals-live")
            await _until(pilot, lambda: row().status == "completed")
            final = app.store.get_eval(row().job.eval_ids[0])
            await _until(pilot, lambda: _text_of(grid.get_cell_at(where)).startswith(f"{100 * final.accuracy:.1f}%"))
            assert _text_of(jobs.get_cell_at((jobs.rows_shown.index(row()), 3))) == "200/200"

    asyncio.run(scenario())


def _text_of(cell) -> str:
    return getattr(cell, "plain", str(cell))


@pytest.mark.slow
def test_two_evals_compared_with_mcnemar_and_their_differing_samples(db, tmp_path):
    result = runner.invoke(cli, ["eval", "--run", RUN, "--alg", "entropy,maskgit_plus", "--steps", "6", "--max-new-tokens",
                                 "8", "--limit", "8", "--batch-size", "4", "--db", str(db)])
    assert result.exit_code == 0, result.output
    store = RunStore(db)
    evals = {e.alg: e for e in store.list_evals(run_ref=RUN) if e.steps == 6}
    a, b = evals["entropy"], evals["maskgit_plus"]
    expected = compare_pair(store, a, b)
    verdict_a = {s["idx"]: bool(s["correct"]) for s in store.eval_samples(a.id)}
    verdict_b = {s["idx"]: bool(s["correct"]) for s in store.eval_samples(b.id)}
    discordant = [idx for idx in sorted(verdict_a) if verdict_a[idx] != verdict_b[idx]]

    async def scenario() -> None:
        app = build_app(db, poll_s=0.5)
        async with app.run_test(size=(80, 24)) as pilot:
            app.open_evals(store.get_run(RUN).id, RUN)
            await _until(pilot, lambda: isinstance(app.screen, EvalsScreen) and app.screen.grid.cells)
            screen = app.screen
            grid = screen.query_one("#eval-grid", DataTable)
            column = screen.grid.steps.index(6) + 1
            for alg in ("entropy", "maskgit_plus"):
                grid.move_cursor(row=screen.grid.rows.index(("arithmetic", alg)), column=column)
                await pilot.press("m")
            assert screen.marked == [a.id, b.id]
            assert _text_of(grid.get_cell_at(grid.cursor_coordinate)).startswith("● ")
            await pilot.press("c")
            assert isinstance(app.screen, EvalCompareScreen)
            compare = app.screen
            await _until(pilot, lambda: compare.result is not None)
            summary = _text(compare.query_one("#compare-summary"))
            assert f"McNemar p = {expected.p_value:.3g} ({expected.method})" in summary
            assert f"on {expected.shared} shared · only A right {expected.only_a} · only B right {expected.only_b}" in summary
            assert "alg entropy → maskgit_plus" in summary
            table = compare.query_one("#differences", DataTable)
            assert [table.get_cell_at((i, 0)) for i in range(table.row_count)] == [str(i) for i in discordant]
            assert len(discordant) == expected.only_a + expected.only_b
            _save(app, tmp_path, "eval-compare")

    asyncio.run(scenario())


@pytest.mark.slow
def test_x_on_the_evals_screen_stops_the_highlighted_eval_job(db):
    # 500 problems: far more than any machine finishes between the test seeing 2 done and pressing x.
    job_id = _detach(db, "topk_margin", limit=500)
    store = RunStore(db)

    async def scenario() -> None:
        app = build_app(db, poll_s=0.3)
        async with app.run_test(size=(80, 24)) as pilot:
            app.open_evals(store.get_run(RUN).id, RUN)
            await _until(pilot, lambda: isinstance(app.screen, EvalsScreen) and app.screen.query("#eval-jobs"))
            jobs = app.screen.query_one("#eval-jobs", EvalJobsTable)
            await _until(pilot, lambda: jobs.rows_shown and jobs.rows_shown[0].job.id == job_id
                         and jobs.rows_shown[0].job.n_done >= 2)
            await pilot.press("x")
            await _until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
            await pilot.press("y")
            await _until(pilot, lambda: jobs.rows_shown[0].status == "stopped", timeout=60)

    asyncio.run(scenario())
    job = store.get_eval_job(job_id)
    assert job.status == "stopped" and "SIGTERM" in job.exit_reason
    assert 2 <= job.n_done < 500 and len(store.eval_samples(job.eval_ids[0])) == job.n_done
