"""`dreamlab runs ...` through typer's CliRunner against real SQLite files and real child processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.store import RunStore

runner = CliRunner()


def runs(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return runner.invoke(app, ["runs", *args], env={"COLUMNS": "200", **(env or {})}, input=input)


@pytest.fixture
def db(tmp_path):
    """A store with three runs: `alpha` (running, metrics, a checkpoint), `beta` (completed), `gamma` (queued)."""
    path = tmp_path / "runs" / "dreamlab.db"
    with RunStore(path) as store:
        alpha = store.create_run(name="alpha", recipe={"model": {"partial_pretrain": "tiny"}, "optim": {"lr": 3e-4}, "seed": 1},
                                 meta={"host": socket.gethostname()}, sweep_id="sw")
        beta = store.create_run(name="beta", recipe={"model": {"partial_pretrain": "tiny"}, "optim": {"lr": 1e-3}, "seed": 1},
                                sweep_id="sw")
        store.create_run(name="gamma", recipe={"model": {"partial_pretrain": "dream-7b"}})
        store.mark_started(alpha.id, pid=2_000_000, pgid=2_000_000)
        store.record_metrics(alpha.id, 10, {"train/loss": 2.5, "lr": 3e-4})
        store.record_metrics(alpha.id, 20, {"train/loss": 1.75})
        store.record_checkpoint(alpha.id, 20, str(tmp_path / "runs" / "alpha" / "step-20"))
        store.mark_started(beta.id, pid=2_000_001, pgid=2_000_001)
        store.record_metrics(beta.id, 20, {"train/loss": 1.5})
        store.finish(beta.id, "completed")
    return path


def test_list_as_json_with_db_flag(db):
    result = runs("list", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert [row["name"] for row in json.loads(result.output)] == ["gamma", "beta", "alpha"]
    assert {key: rows["alpha"][key] for key in ("status", "steps", "train_loss", "model", "lr", "sweep_id")} == {
        "status": "running", "steps": 20, "train_loss": 1.75, "model": "tiny", "lr": 3e-4, "sweep_id": "sw"}
    assert (rows["beta"]["status"], rows["beta"]["steps"], rows["beta"]["train_loss"]) == ("completed", 20, 1.5)
    assert (rows["gamma"]["status"], rows["gamma"]["steps"], rows["gamma"]["model"]) == ("queued", None, "dream-7b")


def test_list_table_with_the_environment_variable_and_filters(db):
    result = runs("list", env={"DREAMLAB_DB": str(db)})
    assert result.exit_code == 0, result.output
    for text in ("alpha", "beta", "gamma", "running", "completed", "1.75", "tiny", "0.0003"):
        assert text in result.output
    result = runs("list", "--status", "completed", "--json", env={"DREAMLAB_DB": str(db)})
    assert [row["name"] for row in json.loads(result.output)] == ["beta"]
    result = runs("list", "--sweep", "sw", "--json", env={"DREAMLAB_DB": str(db)})
    assert [row["name"] for row in json.loads(result.output)] == ["beta", "alpha"]


def test_the_flag_wins_over_the_environment_and_a_missing_store_is_one_line(db, tmp_path):
    missing = tmp_path / "missing.db"
    result = runs("list", "--json", "--db", str(db), env={"DREAMLAB_DB": str(missing)})
    assert result.exit_code == 0 and len(json.loads(result.output)) == 3
    result = runs("list", "--db", str(missing), env={"DREAMLAB_DB": str(db)})
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no run store at {missing} (no runs yet? pass --db or set DREAMLAB_DB)"
    assert not missing.exists()


def test_list_marks_silent_running_runs_lost(db):
    assert json.loads(runs("list", "--db", str(db), "--json").output)[2]["status"] == "running"
    time.sleep(0.01)
    rows = json.loads(runs("list", "--db", str(db), "--json", "--lost-after", "0").output)
    assert {row["name"]: row["status"] for row in rows} == {"alpha": "lost", "beta": "completed", "gamma": "queued"}


def test_list_and_show_say_why_a_running_run_is_stalled_and_status_stalled_finds_it(db):
    with RunStore(db) as store:  # alpha's rank 0 is this (alive) process
        store.record_worker(store.get_run("alpha").id, socket.gethostname(), os.getpid(), psutil.Process().create_time())
    time.sleep(0.01)
    rows = json.loads(runs("list", "--db", str(db), "--json", "--stall-after", "0", "--status", "stalled").output)
    assert [(row["name"], row["status"]) for row in rows] == [("alpha", "stalled")]
    assert rows[0]["reason"].startswith("no optimizer step since the start for ")
    table = runs("list", "--db", str(db), "--stall-after", "0")
    assert "alpha stalled: no optimizer step since the start for " in table.output, table.output
    shown = runs("show", "alpha", "--db", str(db), "--stall-after", "0")
    assert "stalled" in shown.output and "no optimizer step since the start" in shown.output, shown.output
    assert "rank 0, pid" in shown.output
    assert json.loads(runs("list", "--db", str(db), "--json").output)[2]["status"] == "running"  # 600 s by default
    with RunStore(db) as store:
        assert store.get_run("alpha").status == "running"  # stalled is shown, never stored


def test_show(db):
    result = runs("show", "alph", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["run"]["name"], shown["run"]["status"], shown["run"]["pid"]) == ("alpha", "running", 2_000_000)
    assert shown["params"] == {"model.partial_pretrain": "tiny", "optim.lr": 3e-4, "seed": 1}
    assert shown["latest_metrics"] == {"lr": {"step": 10, "value": 3e-4}, "train/loss": {"step": 20, "value": 1.75}}
    assert [(c["step"], c["complete"]) for c in shown["checkpoints"]] == [(20, True)]
    assert [(e["kind"], e["message"]) for e in shown["events"]] == [
        ("queued", None), ("started", "pid 2000000, process group 2000000"), ("checkpoint", f"step 20: {db.parent / 'alpha' / 'step-20'}")]
    table = runs("show", "alpha", "--db", str(db))
    assert table.exit_code == 0
    for text in ("run alpha", "params", "optim.lr", "latest metrics", "train/loss", "checkpoints", "step-20",
                 "history", "pid 2000000, process group 2000000"):
        assert text in table.output
    unknown = runs("show", "delta", "--db", str(db))
    assert unknown.exit_code == 2 and unknown.output.startswith("error: no run named delta")


def test_compare(db):
    result = runs("compare", "alpha", "beta", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "runs": ["alpha", "beta"],
        "params": {"optim.lr": [3e-4, 1e-3]},
        "same_params": {"model.partial_pretrain": "tiny", "seed": 1},
        "final_metrics": {"alpha": {"lr": {"step": 10, "value": 3e-4}, "train/loss": {"step": 20, "value": 1.75}},
                          "beta": {"train/loss": {"step": 20, "value": 1.5}}},
    }
    by_sweep = json.loads(runs("compare", "--sweep", "sw", "--db", str(db), "--json").output)
    assert by_sweep["runs"] == ["alpha", "beta"]
    table = runs("compare", "alpha", "beta", "gamma", "--db", str(db))
    assert table.exit_code == 0 and "model.partial_pretrain" in table.output and "dream-7b" in table.output
    alone = runs("compare", "alpha", "--db", str(db))
    assert alone.exit_code == 2 and alone.output.startswith("error: compare needs two or more runs")


def test_query_is_read_only_from_the_command_line(db):
    result = runs("query", "SELECT name, status FROM runs ORDER BY name", "--db", str(db), "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == [{"name": "alpha", "status": "running"}, {"name": "beta", "status": "completed"},
                                         {"name": "gamma", "status": "queued"}]
    for sql in ("DROP TABLE runs", "UPDATE runs SET status = 'failed'", "INSERT INTO params VALUES (1, 'k', 'v', 'str')",
                f"ATTACH DATABASE '{db.parent / 'x.db'}' AS x", "PRAGMA writable_schema=1"):
        refused = runs("query", sql, "--db", str(db))
        assert refused.exit_code == 2
        assert refused.output.startswith("error: query refused") and refused.output.count("\n") == 1
    after = json.loads(runs("query", "SELECT name, status FROM runs ORDER BY name", "--db", str(db), "--json").output)
    assert after == json.loads(result.output)
    counts = runs("query", "SELECT (SELECT COUNT(*) FROM params) AS p, (SELECT COUNT(*) FROM metrics) AS m",
                  "--db", str(db), "--json")
    assert json.loads(counts.output) == [{"p": 7, "m": 4}]


def test_rm_deletes_rows_and_the_folder_inside_the_runs_directory(db):
    folder = db.parent / "beta"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "train.log").write_text("log")
    declined = runs("rm", "beta", "--db", str(db), input="n\n")
    assert declined.exit_code == 1 and folder.exists()
    result = runs("rm", "beta", "--db", str(db), "--yes")
    assert result.exit_code == 0, result.output
    assert not folder.exists() and db.exists()
    names = [row["name"] for row in json.loads(runs("list", "--db", str(db), "--json").output)]
    assert names == ["gamma", "alpha"]
    refused = runs("rm", "alpha", "--db", str(db), "--yes")
    assert refused.exit_code == 2 and "is running: stop it first" in refused.output


def test_rm_refuses_a_folder_outside_the_runs_directory(tmp_path):
    path = tmp_path / "runs" / "dreamlab.db"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with RunStore(path) as store:
        store.create_run(name="far", run_dir=outside)
    refused = runs("rm", "far", "--db", str(path), "--yes")
    assert refused.exit_code == 2 and "not a folder inside" in refused.output
    assert outside.exists() and len(RunStore(path).list_runs()) == 1
    kept = runs("rm", "far", "--db", str(path), "--yes", "--keep-folder")
    assert kept.exit_code == 0 and outside.exists() and RunStore(path).list_runs() == []


def _started_run(path, code: str) -> tuple[subprocess.Popen, int]:
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"  # its signal handlers are in place
    with RunStore(path) as store:
        run = store.create_run(name=f"proc-{child.pid}", meta={"host": socket.gethostname()})
        store.mark_started(run.id, pid=child.pid, pgid=os.getpgid(child.pid))
    return child, run.id


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["exits-on-sigterm", "needs-sigkill"])
def test_stop_signals_the_process_group_and_marks_the_run_stopped(tmp_path, ignores_sigterm):
    path = tmp_path / "runs" / "dreamlab.db"
    handler = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignores_sigterm else ""
    child, run_id = _started_run(path, f"import signal, time; {handler}print('ready', flush=True); time.sleep(60)")
    try:
        start = time.monotonic()
        result = runs("stop", str(run_id), "--grace", "1", "--db", str(path))
        elapsed = time.monotonic() - start
        assert result.exit_code == 0, result.output
        assert child.wait(timeout=5) == (-9 if ignores_sigterm else -15)
        assert ("sent SIGKILL" in result.output) is ignores_sigterm
        if ignores_sigterm:  # a lower bound only: how fast a SIGTERM is obeyed depends on the machine's load
            assert elapsed >= 1.0
        run = RunStore(path).get_run(run_id)
        assert run.status == "stopped"
        assert run.exit_reason == ("stopped by user (SIGKILL after 1 s grace)" if ignores_sigterm
                                   else "stopped by user (SIGTERM)")
        kinds = [event.kind for event in RunStore(path).events(run_id)]
        assert kinds == ["queued", "started", "stop requested", *(["killed"] if ignores_sigterm else []), "stopped"]
        again = runs("stop", str(run_id), "--db", str(path))
        assert again.exit_code == 2 and again.output == f"error: run {run.name} is not running (status stopped)\n"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=5)


def test_stop_refuses_groups_it_must_never_signal(tmp_path):
    path = tmp_path / "runs" / "dreamlab.db"
    with RunStore(path) as store:
        for name, pgid, host in (("init", 1, None), ("zero", 0, None), ("mine", os.getpgrp(), None),
                                 ("remote", 2_000_002, "some-other-host"), ("none", None, None)):
            run = store.create_run(name=name, meta={"host": host} if host else None)
            store.mark_started(run.id, pid=2_000_002, pgid=pgid)
    expected = {"init": "records process group 1: refusing", "zero": "records process group 0: refusing",
                "mine": "this command's own: refusing", "remote": "runs on some-other-host, not on this machine",
                "none": "has no process group recorded"}
    for name, message in expected.items():
        result = runs("stop", name, "--grace", "0", "--db", str(path))
        assert result.exit_code == 2 and message in result.output, (name, result.output)
        assert result.output.count("\n") == 1
    assert {run.status for run in RunStore(path).list_runs()} == {"running"}


def test_list_shows_the_newest_runs_and_says_how_many_are_left_out(db):
    result = runs("list", "--limit", "2", "--db", str(db))
    assert result.exit_code == 0
    assert "gamma" in result.output and "beta" in result.output and "alpha" not in result.output
    assert "the newest 2 of 3 runs (--limit N or --all for more)" in result.output
    assert len(json.loads(runs("list", "--limit", "1", "--all", "--json", "--db", str(db)).output)) == 3
    assert RunStore(db).count_runs(sweep_id="sw") == 2


def test_gpu_lists_for_sweeps_parse_exactly_or_name_the_bad_part():
    from dreamlab.train.sweep import gpu_env, parse_gpus

    assert parse_gpus("") == [] and parse_gpus("0, 1,3") == [0, 1, 3]
    with pytest.raises(ValueError, match="'-1' is not a GPU index"):
        parse_gpus("0,-1")
    with pytest.raises(ValueError, match="names a GPU twice"):
        parse_gpus("1,1")
    assert gpu_env([2, 3]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2,3"}
