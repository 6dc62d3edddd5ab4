"""The run store against real SQLite files: round trips, migrations, liveness, concurrency, read-only SQL."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import time

import pytest

from dreamlab.store import SCHEMA_VERSION, Progress, RunStore, StoreError, default_db_path, validate_run_name
from dreamlab.store.schema import MIGRATIONS, migrate, schema_version
from tests.store_helpers import store_at_version

RECIPE = {"model": {"name": "tiny", "layers": 2}, "optim": {"lr": 3e-4, "betas": [0.9, 0.95]},
          "trainer": {"bf16": False, "resume": None}, "seed": 7}
META = {"git_commit": "abc123", "host": "box", "gpus": ["H100", "H100"],
        "versions": {"torch": "2.13.0", "transformers": "5.24", "dreamlab": "0.1.0"}}


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs" / "dreamlab.db") as opened:
        yield opened


def test_create_and_get_round_trip(store, tmp_path):
    run = store.create_run(name="base", recipe=RECIPE, meta=META, sweep_id="sw1")
    assert (run.name, run.status, run.sweep_id, run.recipe) == ("base", "queued", "sw1", RECIPE)
    assert (run.git_commit, run.host, run.gpus) == ("abc123", "box", ["H100", "H100"])
    assert run.versions == {"torch": "2.13.0", "transformers": "5.24", "dreamlab": "0.1.0"}
    assert run.run_dir == str((tmp_path / "runs" / "base").resolve())
    assert store.get_run("base") == run == store.get_run(run.id) == store.get_run(str(run.id)) == store.get_run("ba")
    assert store.params(run.id) == {"model.name": "tiny", "model.layers": 2, "optim.lr": 3e-4,
                                    "optim.betas": [0.9, 0.95], "trainer.bf16": False, "trainer.resume": None,
                                    "seed": 7}
    reopened = RunStore(store.path)
    assert reopened.get_run("base") == run
    reopened.close()


def test_generated_names_are_unique_and_valid(store):
    names = {store.create_run().name for _ in range(20)}
    assert len(names) == 20
    assert all(validate_run_name(name) == name for name in names)


def test_duplicate_unknown_and_ambiguous_references_are_refused(store):
    store.create_run(name="lr-1e-3")
    store.create_run(name="lr-3e-4")
    with pytest.raises(StoreError, match="already exists"):
        store.create_run(name="lr-1e-3")
    with pytest.raises(StoreError, match="ambiguous: it starts lr-1e-3, lr-3e-4"):
        store.get_run("lr-")
    with pytest.raises(StoreError, match="no run named nope"):
        store.get_run("nope")
    with pytest.raises(StoreError, match="no run with id 99"):
        store.get_run(99)
    assert store.get_run("lr-3").name == "lr-3e-4"
    with pytest.raises(StoreError, match="unknown meta keys"):
        store.create_run(meta={"commit": "x"})


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "", "..", ".hidden", "a..b", "x" * 65, "a\\b",
                                  "with space", "dreamlab.db", "-flag"])
def test_unsafe_names_are_refused(store, name):
    with pytest.raises(StoreError):
        store.create_run(name=name)
    assert store.list_runs() == []


def test_lifecycle_list_order_and_filters(store):
    first = store.create_run(name="first")
    second = store.create_run(name="second", sweep_id="sw")
    third = store.create_run(name="third", sweep_id="sw")
    started = store.mark_started(second.id, pid=4321, pgid=4321)
    assert (started.status, started.pid, started.pgid) == ("running", 4321, 4321)
    assert started.heartbeat == started.started
    with pytest.raises(StoreError, match="already running"):
        store.mark_started(second.id, pid=1, pgid=1)
    finished = store.finish(second.id, "completed", exit_reason="max steps")
    assert (finished.status, finished.exit_reason) == ("completed", "max steps")
    assert finished.ended >= finished.started and finished.duration() == finished.ended - finished.started
    with pytest.raises(StoreError, match="already ended"):
        store.finish(second.id, "failed")
    with pytest.raises(StoreError, match="cannot finish with status 'running'"):
        store.finish(first.id, "running")
    assert [run.name for run in store.list_runs()] == ["third", "second", "first"]
    assert [run.name for run in store.list_runs(sweep_id="sw")] == ["third", "second"]
    assert [run.name for run in store.list_runs(status="completed")] == ["second"]
    assert [run.name for run in store.list_runs(limit=1)] == ["third"]
    with pytest.raises(StoreError, match="unknown status"):
        store.list_runs(status="done")
    assert third.status == "queued"


def test_latest_metrics_follow_the_highest_step_not_the_last_write(store):
    run = store.create_run(name="m")
    store.record_metrics(run.id, 20, {"train/loss": 0.5, "lr": 1e-4}, time=1000.0)
    store.record_metrics(run.id, 10, {"train/loss": 0.9, "lr": 2e-4, "grad_norm": 3.0}, time=1001.0)
    store.record_metrics(run.id, 30, {"train/loss": float("nan")}, time=1002.0)
    store.record_metrics(run.id, 20, {"lr": 1.5e-4}, time=1003.0)  # a resumed run logs step 20 again
    latest = store.latest_metrics(run.id)
    assert latest["lr"] == (20, 1.5e-4)
    assert latest["grad_norm"] == (10, 3.0)
    assert latest["train/loss"][0] == 30 and math.isnan(latest["train/loss"][1])
    assert store.metrics(run.id, "lr") == [(10, "lr", 2e-4, 1001.0), (20, "lr", 1.5e-4, 1003.0)]
    assert [(p.step, p.key) for p in store.metrics(run.id)] == [
        (10, "grad_norm"), (10, "lr"), (10, "train/loss"), (20, "lr"), (20, "train/loss"), (30, "train/loss")]
    with pytest.raises(StoreError, match="must be a number"):
        store.record_metrics(run.id, 40, {"train/loss": "low"})
    with pytest.raises(StoreError, match="no run with id 999"):
        store.record_metrics(999, 1, {"x": 1.0})
    assert len(store.metrics(run.id)) == 6  # the refused writes left nothing behind


def test_checkpoints(store):
    run = store.create_run(name="c")
    store.record_checkpoint(run.id, 100, "runs/c/checkpoints/step-100")
    store.record_checkpoint(run.id, 200, "runs/c/checkpoints/step-200", complete=False)
    assert store.latest_complete_checkpoint(run.id).step == 100
    store.record_checkpoint(run.id, 200, "runs/c/checkpoints/step-200", complete=True)
    latest = store.latest_complete_checkpoint(run.id)
    assert (latest.step, latest.path, latest.kind, latest.complete) == (200, "runs/c/checkpoints/step-200", "model+state", True)
    assert [c.step for c in store.checkpoints(run.id)] == [100, 200]
    assert store.latest_complete_checkpoint(store.create_run(name="empty").id) is None


def test_compare_lists_differing_params_and_final_metrics(store):
    a = store.create_run(name="a", recipe={"model": {"name": "tiny"}, "optim": {"lr": 3e-4}, "seed": 1})
    b = store.create_run(name="b", recipe={"model": {"name": "tiny"}, "optim": {"lr": 1e-3}, "seed": 1, "extra": True})
    store.record_metrics(a.id, 5, {"train/loss": 2.0})
    store.record_metrics(a.id, 9, {"train/loss": 1.25, "eval/acc": 0.5})
    store.record_metrics(b.id, 9, {"train/loss": 1.5})
    comparison = store.compare(["a", "b", "a"])
    assert [run.name for run in comparison.runs] == ["a", "b"]
    assert comparison.params == {"extra": [None, True], "optim.lr": [3e-4, 1e-3]}
    assert comparison.same_params == {"model.name": "tiny", "seed": 1}
    assert comparison.final_metrics == [{"train/loss": (9, 1.25), "eval/acc": (9, 0.5)}, {"train/loss": (9, 1.5)}]
    assert comparison.metric_keys() == ["eval/acc", "train/loss"]


def test_mark_lost_records_the_reason_only_for_running_runs_and_a_heartbeat_revives(store):
    fresh = store.create_run(name="fresh")
    stale = store.create_run(name="stale")
    queued = store.create_run(name="queued")
    store.mark_started(fresh.id, pid=10, pgid=10)
    store.mark_started(stale.id, pid=11, pgid=11)
    beat = store.get_run(stale.id).heartbeat
    assert store.mark_lost(fresh.id, "no heartbeat for 61 s") and store.mark_lost(stale.id, "no heartbeat for 61 s")
    assert not store.mark_lost(stale.id, "again") and not store.mark_lost(queued.id, "never ran")
    store.heartbeat(fresh.id)  # alive after all: back to running
    later = store.get_run(fresh.id)
    assert (later.status, later.ended, later.exit_reason) == ("running", None, None)
    gone = store.get_run(stale.id)
    assert (gone.status, gone.ended, gone.exit_reason) == ("lost", beat, "no heartbeat for 61 s")
    assert store.get_run(queued.id).status == "queued"


def test_worker_and_progress_are_recorded_and_a_new_start_forgets_the_worker(store):
    run = store.create_run(name="beating")
    store.mark_started(run.id, pid=10, pgid=10)
    store.record_worker(run.id, "node-1", 4242, 1234.5)
    store.heartbeat(run.id, Progress(step=7, time=2000.0, step_seconds=0.25))
    store.heartbeat(run.id)  # a beat without news keeps the last progress
    found = store.get_run(run.id)
    assert (found.worker_host, found.worker_pid, found.worker_started) == ("node-1", 4242, 1234.5)
    assert found.progress == Progress(7, 2000.0, 0.25)
    store.finish(run.id, "stopped")
    restarted = store.mark_started(run.id, pid=11, pgid=11)
    assert (restarted.worker_host, restarted.worker_pid, restarted.progress) == (None, None, Progress(7, 2000.0, 0.25))


def test_events_tell_a_run_s_history_in_order(store):
    run = store.create_run(name="story")
    store.mark_started(run.id, pid=21, pgid=21)
    store.record_checkpoint(run.id, 5, "ckpt/step-5", complete=False)  # being written: not an event yet
    store.record_checkpoint(run.id, 5, "ckpt/step-5", complete=True)
    store.record_event(run.id, "resumed", "resumed from step 5")
    store.mark_lost(run.id, "no heartbeat for 60 s")
    store.record_metrics(run.id, 6, {"train/loss": 0.5})  # a write from the "lost" run: it was alive
    store.finish(run.id, "diverged", exit_reason="non-finite loss (nan) at step 7")
    history = [(event.kind, event.message) for event in store.events(run.id)]
    assert history == [
        ("queued", None), ("started", "pid 21, process group 21"), ("checkpoint", "step 5: ckpt/step-5"),
        ("resumed", "resumed from step 5"), ("lost", "no heartbeat for 60 s"),
        ("revived", "wrote again after it was marked lost"), ("diverged", "non-finite loss (nan) at step 7"),
    ]
    times = [event.time for event in store.events(run.id)]
    assert times == sorted(times)
    other = store.create_run(name="other")
    assert store.stop_if_running(other.id, "stopped by user") is False  # never ran: nothing to record
    assert [event.kind for event in store.events(other.id)] == ["queued"]
    with pytest.raises(StoreError, match="no run with id 999"):
        store.record_event(999, "note", "x")
    with pytest.raises(StoreError, match="needs a kind"):
        store.record_event(run.id, "", "x")


def test_delete_run_removes_every_row(store):
    run = store.create_run(name="gone", recipe=RECIPE)
    store.record_metrics(run.id, 1, {"x": 1.0})
    store.record_checkpoint(run.id, 1, "p")
    store.mark_started(run.id, pid=5, pgid=5)
    with pytest.raises(StoreError, match="running: stop it first"):
        store.delete_run("gone")
    store.finish(run.id, "stopped")
    assert store.delete_run("gone").name == "gone"
    counts = [RunStore.query_readonly(store.path, f"SELECT COUNT(*) FROM {table}")[1][0][0]
              for table in ("runs", "params", "metrics", "latest_metrics", "checkpoints", "events")]
    assert counts == [0, 0, 0, 0, 0, 0]


def test_a_v1_store_is_migrated_with_its_latest_metrics_backfilled(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 1
    conn.execute("INSERT INTO runs (id, name, status, created) VALUES (1, 'old', 'completed', 1.0)")
    conn.executemany("INSERT INTO metrics (run_id, step, key, value, time) VALUES (1, ?, ?, ?, 0)",
                     [(3, "loss", 0.7), (1, "loss", 0.9), (2, "loss", 0.8), (1, "acc", 0.1)])
    assert "latest_metrics" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    with RunStore(path) as store:
        assert store.latest_metrics(1) == {"loss": (3, 0.7), "acc": (1, 0.1)}
        assert store.get_run("old").status == "completed"
        check = sqlite3.connect(path)
        assert schema_version(check) == SCHEMA_VERSION == len(MIGRATIONS)
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        check.close()


def test_a_v3_store_gets_events_backfilled_from_its_runs(tmp_path):
    path = store_at_version(tmp_path / "v3.db", 3,
                            "INSERT INTO runs (id, name, status, created) VALUES (1, 'waiting', 'queued', 1.0)",
                            "INSERT INTO runs (id, name, status, created, started, ended, exit_reason) "
                            "VALUES (2, 'done', 'failed', 2.0, 3.0, 4.0, 'torchrun exited with code 1')")
    with RunStore(path) as store:
        assert [(e.time, e.kind, e.message) for e in store.events(1)] == [(1.0, "queued", None)]
        assert [(e.time, e.kind, e.message) for e in store.events(2)] == [
            (2.0, "queued", None), (3.0, "started", None), (4.0, "failed", "torchrun exited with code 1")]


def test_a_v4_store_gains_worker_and_progress_columns_empty(tmp_path):
    path = store_at_version(tmp_path / "v4.db", 4, "INSERT INTO runs (id, name, status, created, started, heartbeat, pid) "
                                                  "VALUES (1, 'busy', 'running', 1.0, 2.0, 3.0, 77)")
    with RunStore(path) as store:
        run = store.get_run("busy")
        assert (run.status, run.heartbeat, run.pid) == ("running", 3.0, 77)
        assert (run.worker_host, run.worker_pid, run.worker_started, run.progress) == (None, None, None, None)


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    RunStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this dreamlab understands"):
        RunStore(path)


def test_default_db_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DREAMLAB_DB", raising=False)
    assert str(default_db_path()) == "runs/dreamlab.db"
    monkeypatch.setenv("DREAMLAB_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"


def _writer(path: str, run_id: int, steps: int, start_at: float, errors) -> None:
    try:
        store = RunStore(path)
        while time.time() < start_at:
            time.sleep(0.001)
        for step in range(steps):
            store.record_metrics(run_id, step, {"train/loss": 1.0 / (step + 1), "lr": 1e-4, "shared/step": float(step)})
            if step % 10 == 0:
                store.heartbeat(run_id)
        store.close()
    except Exception as error:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(error).__name__}: {error}")


def test_two_processes_write_concurrently_without_losing_rows(tmp_path):
    path = tmp_path / "runs" / "dreamlab.db"
    with RunStore(path) as store:
        ids = [store.create_run(name=f"w{i}").id for i in range(2)]
        for run_id in ids:
            store.mark_started(run_id, pid=1000 + run_id, pgid=1000 + run_id)
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    steps = 1500
    start_at = time.time() + 0.5
    workers = [context.Process(target=_writer, args=(str(path), run_id, steps, start_at, errors)) for run_id in ids]
    for worker in workers:
        worker.start()
    with RunStore(path) as reader:  # a reader polling meanwhile, as the console does
        while any(worker.is_alive() for worker in workers):
            reader.list_runs()
            reader.latest_metrics_for()
            time.sleep(0.02)
        for worker in workers:
            worker.join(timeout=60)
        assert [worker.exitcode for worker in workers] == [0, 0]
        assert errors.empty(), errors.get()
        for run_id in ids:
            assert len(reader.metrics(run_id)) == 3 * steps
            assert reader.latest_metrics(run_id)["shared/step"] == (steps - 1, float(steps - 1))


def test_query_readonly_refuses_every_write(store):
    run = store.create_run(name="keep", recipe=RECIPE)
    store.record_metrics(run.id, 1, {"train/loss": 1.0})
    before = RunStore.query_readonly(store.path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    columns, rows = RunStore.query_readonly(store.path, "SELECT name, status FROM runs")
    assert (columns, rows) == (["name", "status"], [("keep", "queued")])
    attached = store.path.parent / "other.db"
    for sql in ("DROP TABLE runs", "UPDATE runs SET status = 'failed'", "INSERT INTO runs (name, status, created) "
                "VALUES ('x', 'queued', 0)", "DELETE FROM metrics", f"ATTACH DATABASE '{attached}' AS other",
                "PRAGMA writable_schema=1", "PRAGMA journal_mode=delete", "CREATE TABLE t (x)",
                "SELECT 1; DROP TABLE runs", "VACUUM"):
        with pytest.raises(StoreError, match="query refused") as refused:
            RunStore.query_readonly(store.path, sql)
        assert "\n" not in str(refused.value)
    assert RunStore.query_readonly(store.path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == before
    assert store.get_run("keep").status == "queued" and len(store.list_runs()) == 1
    assert store.latest_metrics(run.id) == {"train/loss": (1, 1.0)}
    assert not attached.exists()
    with pytest.raises(StoreError, match="no run store at"):
        RunStore.query_readonly(store.path.parent / "missing.db", "SELECT 1")



def _write_then_wait(path: str, written, release) -> None:
    store = RunStore(path)
    run = store.create_run()
    for step in range(200):
        store.record_metrics(run.id, step, {"train/loss": 1.0})
    written.set()
    release.wait(60)
    store.close()


def test_opening_the_store_again_keeps_this_processs_locks_while_another_process_writes(tmp_path):
    """Nothing outside SQLite may open and close the database file: closing drops every POSIX lock this
    process holds on it, and SQLite then reads a store another process writes as malformed."""
    path = tmp_path / "runs" / "dreamlab.db"
    first = RunStore(path)
    context = multiprocessing.get_context("spawn")
    for count in range(1, 4):
        written, release = context.Event(), context.Event()
        writer = context.Process(target=_write_then_wait, args=(str(path), written, release))
        writer.start()
        assert written.wait(120)
        RunStore(path).close()  # opened again while the writer is connected (the eval command opens it twice)
        release.set()
        writer.join(60)
        assert writer.exitcode == 0
        with RunStore(path) as again:
            assert again.count_runs() == count
    assert len(first.list_runs()) == 3
    first.close()
