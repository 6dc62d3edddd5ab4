"""How a reader decides running / stalled / lost (store.health judges, train.processes probes); the console only reads."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from dreamlab.store import Progress, Run, RunStore
from dreamlab.store.health import Health, Liveness, Thresholds, judge
from dreamlab.train.processes import assess, probe
from dreamlab.tui.app import build_app
from dreamlab.tui.queries import load_runs, load_summary

NOW = 10_000.0
LIMITS = Thresholds(lost_after_s=60, stall_after_s=600, stall_factor=20)


def running(beat_ago: float, step_ago: float | None = None, step_seconds: float | None = 1.0,
            started_ago: float = 5000.0) -> Run:
    """A running run, started `started_ago` s before NOW, last heartbeat and last step so long ago."""
    progress = None if step_ago is None else Progress(step=12, time=NOW - step_ago, step_seconds=step_seconds)
    return Run(id=1, name="r", status="running", created=0.0, started=NOW - started_ago, heartbeat=NOW - beat_ago,
               pid=7, worker_pid=8, progress=progress)


@pytest.mark.parametrize(("run", "liveness", "expected"), [
    (running(2, 3), Liveness.ALIVE, Health("running")),
    (running(2, 3), Liveness.UNKNOWN, Health("running")),
    # Exactly at a threshold is still inside it.
    (running(60, 600), Liveness.UNKNOWN, Health("running")),
    # Silent and not seen alive: lost, and how we know.
    (running(61, 3), Liveness.UNKNOWN, Health("lost", "no heartbeat for 61 s (threshold 60 s)")),
    (running(61, 3), Liveness.GONE, Health("lost", "no heartbeat for 61 s (threshold 60 s); process 8 is gone")),
    # Gone but a beat just now: it exited a moment ago and its final status is on its way.
    (running(2, 3), Liveness.GONE, Health("running")),
    # Silent but alive (a long C call holding the GIL): running, with a note.
    (running(61, 3), Liveness.ALIVE, Health("running", "no heartbeat for 61 s (threshold 60 s)")),
    (running(2, 3), Liveness.STOPPED, Health("running", "process 8 is stopped (SIGSTOP?)")),
    # Beating but no step (a hung collective): stalled.
    (running(2, 720), Liveness.ALIVE, Health("stalled", "no optimizer step for 12 min (threshold 10 min)")),
    (running(2, 720), Liveness.UNKNOWN, Health("stalled", "no optimizer step for 12 min (threshold 10 min)")),
    # SIGSTOP: silent, alive, no step.
    (running(700, 720), Liveness.STOPPED,
     Health("stalled", "no optimizer step for 12 min (threshold 10 min); no heartbeat for 12 min (threshold 60 s); "
                       "process 8 is stopped (SIGSTOP?)")),
    # Slow steps raise the threshold to stall_factor x the median step time.
    (running(2, 720, step_seconds=60.0), Liveness.ALIVE, Health("running")),
    (running(2, 1260, step_seconds=60.0), Liveness.ALIVE,
     Health("stalled", "no optimizer step for 21 min (threshold 20 min)")),
    # No step yet: counted from the start (model load, data); a step from before a restart does not count.
    (running(2, None, started_ago=500), Liveness.ALIVE, Health("running")),
    (running(2, None, started_ago=720), Liveness.ALIVE,
     Health("stalled", "no optimizer step since the start for 12 min (threshold 10 min)")),
    (running(2, 9000, started_ago=30), Liveness.ALIVE, Health("running")),
])
def test_judge(run, liveness, expected):
    assert judge(run, NOW, liveness, LIMITS) == expected


def test_judge_leaves_ended_runs_as_recorded():
    ended = Run(id=1, name="r", status="completed", exit_reason=None, heartbeat=0.0)
    lost = Run(id=2, name="l", status="lost", exit_reason="no heartbeat for 61 s (threshold 60 s)", heartbeat=0.0)
    failed = Run(id=3, name="f", status="failed", exit_reason="ValueError: x", heartbeat=0.0)
    assert judge(ended, NOW, Liveness.GONE, LIMITS) == Health("completed")
    assert judge(lost, NOW, Liveness.GONE, LIMITS) == Health("lost", "no heartbeat for 61 s (threshold 60 s)")
    assert judge(failed, NOW, Liveness.GONE, LIMITS) == Health("failed")


def test_thresholds_come_from_the_run_s_recipe_and_a_reader_may_override_them():
    old = Run(id=1, name="old", status="running", recipe={"trainer": {"seed": 0}})
    assert Thresholds.of_run(old) == Thresholds(60.0, 600.0, 20.0)
    tuned = Run(id=2, name="t", status="running",
                recipe={"trainer": {"lost_after_s": 5, "stall_after_s": 30.0, "stall_factor": 0}})
    assert Thresholds.of_run(tuned) == Thresholds(5.0, 30.0, 0.0)
    assert Thresholds.of_run(tuned, lost_after_s=1.0) == Thresholds(1.0, 30.0, 0.0)
    assert Thresholds.of_run(tuned, stall_after_s=2.0) == Thresholds(5.0, 2.0, 0.0)


def worker_run(pid: int, host: str | None = None, created: float | None = None) -> Run:
    created = psutil.Process(pid).create_time() if created is None else created
    return Run(id=1, name="r", status="running", worker_host=host or socket.gethostname(), worker_pid=pid,
               worker_started=created)


def test_probe_tells_alive_gone_reused_and_elsewhere():
    me = os.getpid()
    assert probe(worker_run(me)) is Liveness.ALIVE
    assert probe(worker_run(me, host="another-node")) is Liveness.UNKNOWN
    assert probe(worker_run(me, created=psutil.Process(me).create_time() - 30)) is Liveness.GONE  # a reused pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(child.pid).create_time()
    child.wait()
    assert probe(worker_run(child.pid, created=created)) is Liveness.GONE
    nothing = Run(id=1, name="r", status="running")
    assert probe(nothing) is Liveness.UNKNOWN


def test_probe_without_a_worker_asks_about_the_launcher_started_before_the_run():
    here = socket.gethostname()
    launcher = Run(id=1, name="r", status="running", pid=os.getpid(), host=here, started=time.time())
    assert probe(launcher) is Liveness.ALIVE
    too_old_run = Run(id=1, name="r", status="running", pid=os.getpid(), host=here,
                      started=psutil.Process().create_time() - 60)
    assert probe(too_old_run) is Liveness.GONE  # this pid was started after the run: not its launcher
    assert probe(Run(id=1, name="r", status="running", pid=os.getpid(), host="elsewhere", started=time.time())) \
        is Liveness.UNKNOWN


def test_probe_sees_a_stopped_process_and_a_zombie():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run = worker_run(child.pid)
        child.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: probe(run) is Liveness.STOPPED)
        child.send_signal(signal.SIGCONT)
        assert wait_for(lambda: probe(run) is Liveness.ALIVE)
        child.kill()
        assert wait_for(lambda: probe(run) is Liveness.GONE)  # a zombie until reaped: gone all the same
    finally:
        child.kill()
        child.wait()


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def dump(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_the_console_shows_lost_and_stalled_with_reasons_and_writes_nothing(tmp_path):
    db = tmp_path / "dreamlab.db"
    store = RunStore(db)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(child.pid).create_time()
    child.wait()
    gone = store.create_run(name="gone", recipe={"trainer": {"lost_after_s": 0.5}})
    store.mark_started(gone.id, pid=child.pid)
    store.record_worker(gone.id, socket.gethostname(), child.pid, created)
    stuck = store.create_run(name="stuck", recipe={"trainer": {"stall_after_s": 0.5, "stall_factor": 0}})
    store.mark_started(stuck.id)
    store.record_worker(stuck.id, socket.gethostname(), os.getpid(), psutil.Process().create_time())
    store.heartbeat(stuck.id, Progress(step=3, time=time.time(), step_seconds=0.01))
    time.sleep(1.0)
    store.heartbeat(stuck.id)  # beating, not stepping
    store.close()
    before = dump(db)

    async def scenario() -> None:
        app = build_app(db, poll_s=0.2)
        async with app.run_test(size=(100, 24)) as pilot:
            table = app.screen.table
            deadline = time.monotonic() + 30
            while table.polls_applied < 3:
                assert time.monotonic() < deadline, "the runs table never polled"
                await pilot.pause(0.1)
            rows = {row.name: row for row in table.all_rows}
            assert rows["gone"].status == "lost" and "is gone" in rows["gone"].reason
            assert rows["stuck"].status == "stalled" and "no optimizer step for" in rows["stuck"].reason
        app.store.close()
    asyncio.run(scenario())

    reader = RunStore(db)
    assert [row.status for row in load_runs(reader)] == ["stalled", "lost"]
    summary = load_summary(reader, reader.get_run("gone").id)
    assert summary.health.status == "lost" and summary.run.status == "running"
    assert assess(reader.get_run("stuck")).status == "stalled"
    reader.close()
    assert dump(db) == before
