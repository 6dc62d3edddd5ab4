"""Kill the console (kill -9 of its process group) while a run it launched trains; a new console shows the run live."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app as cli
from dreamlab.store import RunStore
from dreamlab.train.processes import group_alive
from dreamlab.tui.app import build_app
from tests.test_faults_train import TINY, small_rows

pytestmark = pytest.mark.slow

CONSOLE = r'''
import asyncio, sys
from dreamlab.config import load_recipe
from dreamlab.train.launcher import launch
from dreamlab.tui.app import build_app

async def main():
    app = build_app(sys.argv[1], poll_s=0.5)
    async with app.run_test(size=(80, 24)) as pilot:
        run, _ = launch(app.store, app.store.path, load_recipe(None, sys.argv[2:]), name="live")  # what the launch screen calls
        print("launched", run.pgid, flush=True)
        while True:
            await pilot.pause(0.5)

asyncio.run(main())
'''


def _wait(predicate, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)
    return value


def test_killing_the_console_leaves_its_run_training_and_a_new_console_shows_it_live(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    RunStore(db).close()
    overrides = [*TINY, "trainer.total_training_steps=100000", "trainer.save_checkpoint_steps=null",
                 f"data.train_files=[{small_rows(tmp_path)}]", "data.val_files=[]"]
    console = subprocess.Popen([sys.executable, "-c", CONSOLE, str(db), *overrides], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd(), text=True)
    store = RunStore(db)
    try:
        line = console.stdout.readline()
        assert line.startswith("launched"), line
        pgid = int(line.split()[1])
        step = lambda: store.latest_metrics(store.get_run("live").id).get("train/loss", (0,))[0]  # noqa: E731
        _wait(lambda: step() >= 1)
        os.killpg(console.pid, signal.SIGKILL)  # the console and everything in its session, like a dropped SSH link
        console.wait(timeout=30)
        before = step()
        _wait(lambda: step() >= before + 3)  # still training, still recording
        assert store.get_run("live").status == "running" and group_alive(pgid)

        async def scenario():
            app = build_app(db, poll_s=0.3)
            async with app.run_test(size=(80, 24)) as pilot:
                table = app.screen.table
                seen = []
                deadline = time.monotonic() + 120
                while len(set(seen)) < 3:
                    assert time.monotonic() < deadline, seen
                    await pilot.pause(0.3)
                    row = {r.name: r for r in table.all_rows}.get("live")
                    if row is not None:
                        assert row.status == "running"
                        seen.append(row.steps)
                assert seen == sorted(seen)  # the step count moves forward, poll after poll
        asyncio.run(scenario())
    finally:
        if console.poll() is None:
            os.killpg(console.pid, signal.SIGKILL)
        run = store.get_run("live") if any(r.name == "live" for r in store.list_runs()) else None
        if run is not None and run.status == "running":
            stopped = CliRunner().invoke(cli, ["runs", "stop", "live", "--grace", "60", "--db", str(db)])
            assert stopped.exit_code == 0, stopped.output
            assert store.get_run("live").status == "stopped"
