"""Training end to end: real torchrun processes (gloo on the CPU), a real SQLite store, checkpoints."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.store import RunStore
from dreamlab.train.checkpoint import complete_checkpoints

pytestmark = pytest.mark.slow
runner = CliRunner()

SMALL = [
    "model.compile=false", "data.micro_batch_size_per_gpu=8", "data.val_size=16", "model.tiny_hidden_size=64", "model.tiny_num_layers=2",
    "model.tiny_intermediate_size=128", "trainer.log_every=1", "trainer.val_check_interval=4",
]


def train(tmp_path: Path, *args: str):
    db = tmp_path / "runs" / "dreamlab.db"
    return runner.invoke(app, ["train", *args, "--foreground", "--db", str(db)]), RunStore(db)


def losses(store: RunStore, run_id: int) -> list[float]:
    return [value for step, key, value, _ in store.metrics(run_id, key="train/loss")]


def test_two_process_fsdp_run_trains_records_and_checkpoints(tmp_path):
    result, store = train(tmp_path, *SMALL, "trainer.nproc_per_node=2", "trainer.total_training_steps=12",
                          "trainer.save_checkpoint_steps=6", "optim.lr=3e-3", "--name", "two-ranks")
    assert result.exit_code == 0, result.output
    run = store.get_run("two-ranks")
    assert run.status == "completed"
    curve = losses(store, run.id)
    assert len(curve) == 12
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    # t ~ U(eps, 1) per row: about half the response tokens are masked (12 steps x 16 rows: mean within 7 sd).
    fractions = [value for _, _, value, _ in store.metrics(run.id, key="train/masked_fraction")]
    assert len(fractions) == 12 and all(0.0 < f < 1.0 for f in fractions) and 0.35 < sum(fractions) / 12 < 0.65
    steps = [step for step, _ in complete_checkpoints(Path(run.run_dir))]
    assert steps == [6, 12]
    assert [(c.step, c.complete) for c in store.checkpoints(run.id)] == [(6, True), (12, True)]
    assert store.latest_metrics(run.id)["val/loss"][0] == 12
    from dreamlab.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(Path(run.run_dir) / "checkpoints" / "step-000012" / "model"), device="cpu")
    assert model.config.hidden_size == 64 and tokenizer.mask_token_id == 1
    sampled = runner.invoke(app, ["generate", "--run", "two-ranks", "--steps", "8", "--max-new-tokens", "8",
                                  "--db", str(tmp_path / "runs" / "dreamlab.db")])
    assert sampled.exit_code == 0 and "step-000012" in sampled.output, sampled.output


def test_one_and_two_processes_give_the_same_curve_for_the_same_global_batch(tmp_path):
    """Same global batch (2 x 4 rows vs 1 x 8 rows), no random cutoff: the loss curves agree.

    They are not bitwise equal: the two ranks draw masks from different generators than the single
    rank does, so each step's masked positions differ. What must agree is the expected loss, so the
    comparison is on the mean over steps 3..10 within 15%.
    """
    common = [*SMALL, "data.perbatch_cutoff_type=longest", "trainer.total_training_steps=10", "trainer.val_check_interval=null"]
    one, store = train(tmp_path, *common, "data.micro_batch_size_per_gpu=8", "--name", "one")
    two, _ = train(tmp_path, *common, "data.micro_batch_size_per_gpu=4", "trainer.nproc_per_node=2", "--name", "two")
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    a, b = losses(store, store.get_run("one").id), losses(store, store.get_run("two").id)
    assert abs(sum(a[2:]) - sum(b[2:])) / sum(a[2:]) < 0.15


def test_compile_follows_the_eager_curve_and_without_a_compiler_trains_eagerly_saying_why(tmp_path, monkeypatch):
    common = [*SMALL, "trainer.total_training_steps=4", "trainer.val_check_interval=null"]
    eager, store = train(tmp_path, *common, "--name", "eager")
    assert eager.exit_code == 0, eager.output
    compiled, _ = train(tmp_path, *common, "model.compile=true", "--name", "compiled")
    assert compiled.exit_code == 0, compiled.output
    reference = losses(store, store.get_run("eager").id)
    # Inductor fuses and reorders float32 arithmetic: the same curve up to rounding, not bit for bit.
    assert losses(store, store.get_run("compiled").id) == pytest.approx(reference, rel=1e-3)
    assert not [e for e in store.events(store.get_run("compiled").id) if e.kind == "note"]

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    fallback, _ = train(tmp_path, *common, "model.compile=true", "--name", "no-compiler")
    assert fallback.exit_code == 0, fallback.output
    run = store.get_run("no-compiler")
    notes = [e.message for e in store.events(run.id) if e.kind == "note"]
    assert len(notes) == 1 and "needs a C++ compiler" in notes[0] and "no-such-compiler not found" in notes[0]
    # Eager after all: the same arithmetic as the eager run, in another process (rounding may differ by alignment).
    assert losses(store, run.id) == pytest.approx(reference, rel=1e-5)
    assert "training without torch.compile" in (Path(run.run_dir) / "train.log").read_text()


def test_resume_continues_the_same_curve(tmp_path):
    common = [*SMALL, "trainer.total_training_steps=8", "trainer.val_check_interval=null"]
    straight, store = train(tmp_path, *common, "--name", "straight")
    assert straight.exit_code == 0, straight.output
    first, _ = train(tmp_path, *common, "trainer.save_checkpoint_steps=4", "--name", "halves")
    run = store.get_run("halves")
    # Cut the finished run back to its step-4 checkpoint, as if it had been killed after it.
    for step, path in complete_checkpoints(Path(run.run_dir)):
        if step > 4:
            subprocess.run(["rm", "-rf", str(path)], check=True)
    resumed = runner.invoke(app, ["train", "--resume", "halves", "--foreground", "--db", str(tmp_path / "runs" / "dreamlab.db")])
    assert resumed.exit_code == 0, resumed.output
    a = [v for s, k, v, _ in store.metrics(store.get_run("straight").id, key="train/loss")]
    b = {s: v for s, k, v, _ in store.metrics(run.id, key="train/loss")}
    assert b[8] == pytest.approx(a[-1], rel=1e-5)
    history = [(event.kind, event.message) for event in store.events(run.id)]
    assert ("resumed", "resumed from step 4") in history and history[-1][0] == "completed"


def test_bad_recipes_stop_before_any_process_starts(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    for args, message in [
        (["optim.lr=0"], "optim.lr: must be > 0"),
        (["optim.lrr=1"], "did you mean optim.lr"),
        (["data.max_length=5000"], "above the model's context of 1024"),
        (["model.partial_pretrain=/nowhere/model"], "no model at /nowhere/model"),
        (["data.train_files=[/nowhere/rows.jsonl]"], "does not exist"),
    ]:
        result = runner.invoke(app, ["train", *args, "--db", str(db)])
        assert result.exit_code == 2 and message in result.output, result.output
    assert RunStore(db).list_runs() == []


def test_a_data_file_in_the_wrong_format_fails_the_run_with_a_clear_reason(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "no prompt here"}) + "\n")
    result, store = train(tmp_path, *SMALL, f"data.train_files=[{rows}]", "data.val_files=[]", "--name", "badfmt")
    assert result.exit_code == 1
    run = store.get_run("badfmt")
    assert run.status == "failed" and "unknown format" in run.exit_reason


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def test_a_detached_run_survives_its_launcher_stops_cleanly_and_a_killed_one_reads_as_lost(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    common = [*SMALL, "trainer.total_training_steps=100000", "trainer.val_check_interval=null", "--db", str(db)]
    result = runner.invoke(app, ["train", *common, "--name", "detached"])
    assert result.exit_code == 0 and "started run" in result.output, result.output
    store = RunStore(db)
    wait_for(lambda: store.latest_metrics(store.get_run("detached").id).get("train/loss"))
    stop = runner.invoke(app, ["runs", "stop", "detached", "--grace", "60", "--db", str(db)])
    assert stop.exit_code == 0, stop.output
    run = store.get_run("detached")
    assert run.status == "stopped"
    assert complete_checkpoints(Path(run.run_dir)), "a stop request writes a checkpoint first"
    kinds = [event.kind for event in store.events(run.id)]
    assert kinds[:3] == ["queued", "started", "stop requested"] and kinds[-2:] == ["checkpoint", "stopped"], kinds

    result = runner.invoke(app, ["train", *common, "--name", "killed"])
    assert result.exit_code == 0, result.output
    wait_for(lambda: store.latest_metrics(store.get_run("killed").id).get("train/loss"))
    os.killpg(store.get_run("killed").pgid, signal.SIGKILL)
    wait_for(lambda: not processes_mentioning(str(tmp_path / "runs" / "killed")), timeout=30)  # no orphan rank
    time.sleep(0.1)  # `--lost-after 0` needs the last heartbeat in the past
    listed = runner.invoke(app, ["runs", "list", "--lost-after", "0", "--json", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    assert {row["name"]: row["status"] for row in json.loads(listed.output)} == {"killed": "lost", "detached": "stopped"}
    killed = store.get_run("killed")
    assert killed.status == "lost" and "is gone" in killed.exit_reason
    assert RunStore.query_readonly(db, "SELECT count(*) FROM runs")[1][0][0] == 2


def test_a_non_finite_loss_ends_the_run_as_diverged_keeping_the_last_good_checkpoint(tmp_path):
    result, store = train(tmp_path, *SMALL, "optim.lr=1e30", "optim.warmup_steps_ratio=0", "optim.lr_scheduler=constant",
                          "trainer.total_training_steps=50", "trainer.save_checkpoint_steps=1",
                          "trainer.val_check_interval=null", "--name", "boom")
    assert result.exit_code == 1, result.output
    run = store.get_run("boom")
    assert run.status == "diverged" and "non-finite" in run.exit_reason
    kept = complete_checkpoints(Path(run.run_dir))
    assert kept, "the last good checkpoint stays"
    last_logged = max(p.step for p in store.metrics(run.id, key="train/loss"))
    assert kept[-1][0] == last_logged  # nothing was saved after the bad step
    recorded = {c.step for c in store.checkpoints(run.id) if c.complete}
    assert recorded == {step for step, _ in kept}  # rotated-out checkpoints are no longer complete


def test_a_sweep_queues_the_grid_under_one_id_and_runs_it(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    grid = [*SMALL, "trainer.total_training_steps=3", "trainer.val_check_interval=null", "optim.lr=1e-3,3e-3"]
    result = runner.invoke(app, ["sweep", *grid, "--name", "grid", "--foreground", "--db", str(db)])
    assert result.exit_code == 0, result.output
    store = RunStore(db)
    runs = sorted(store.list_runs(), key=lambda r: r.name)
    assert [(r.name, r.status) for r in runs] == [("grid-1", "completed"), ("grid-2", "completed")]
    assert runs[0].sweep_id == runs[1].sweep_id is not None
    assert [store.params(r.id)["optim.lr"] for r in runs] == [1e-3, 3e-3]
    compared = runner.invoke(app, ["runs", "compare", "--sweep", runs[0].sweep_id, "--db", str(db)])
    assert compared.exit_code == 0 and "optim.lr" in compared.output, compared.output


def test_a_sweep_with_one_bad_point_starts_nothing(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["sweep", "optim.lr=1e-3,0", "--db", str(db)])
    assert result.exit_code == 2 and "grid point optim.lr=0" in result.output
    assert not db.exists() or RunStore(db).list_runs() == []


def test_a_detached_sweep_runs_its_queue_after_the_command_returns(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    grid = [*SMALL, "trainer.total_training_steps=2", "trainer.val_check_interval=null", "optim.lr=1e-3,2e-3"]
    result = runner.invoke(app, ["sweep", *grid, "--name", "bg", "--db", str(db)])
    assert result.exit_code == 0 and "detached" in result.output, result.output
    store = RunStore(db)
    wait_for(lambda: [r.status for r in store.list_runs()] == ["completed", "completed"], timeout=180)
    log = next((tmp_path / "runs").glob("sweep-*.log"))
    wait_for(lambda: "bg-2: completed" in log.read_text(), timeout=30)  # the driver reports after the store
    assert "bg-1: completed" in log.read_text()


def test_a_sweep_given_two_gpus_runs_two_points_at_once_each_on_its_own(tmp_path):
    # CPU runs stand in for GPU runs: the driver's scheduling and the environment each run gets are the same.
    db = tmp_path / "runs" / "dreamlab.db"
    grid = [*SMALL, "trainer.total_training_steps=12", "trainer.val_check_interval=null", "optim.lr=1e-3,2e-3,3e-3"]
    result = runner.invoke(app, ["sweep", *grid, "--name", "par", "--gpus", "0,1", "--foreground", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "GPUs 0,1: up to 2 runs at once" in result.output
    store = RunStore(db)
    runs = {r.name: r for r in store.list_runs()}
    assert {name: r.status for name, r in runs.items()} == {"par-1": "completed", "par-2": "completed",
                                                             "par-3": "completed"}
    first, second, third = runs["par-1"], runs["par-2"], runs["par-3"]
    assert second.started < first.ended and first.started < second.ended  # the first two ran at once
    assert third.started >= min(first.ended, second.ended)  # the third waited for a free GPU
    logs = {name: (Path(r.run_dir) / "train.log").read_text() for name, r in runs.items()}
    assert "(CUDA_VISIBLE_DEVICES=0)" in logs["par-1"] and "(CUDA_VISIBLE_DEVICES=1)" in logs["par-2"]
    # It took a GPU whose run had ended by then. Not necessarily the first to end: the driver polls
    # every 0.5 s, so two runs ending inside one poll free both GPUs at once and the lower id is taken.
    freed = {device for device, run in (("0", first), ("1", second)) if run.ended <= third.started}
    taken = re.search(r"\(CUDA_VISIBLE_DEVICES=(\d)\)", logs["par-3"]).group(1)
    assert taken in freed, (taken, freed)


def test_a_sweep_refuses_points_that_need_more_gpus_than_it_has(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["sweep", *SMALL, "trainer.nproc_per_node=2", "optim.lr=1e-3,2e-3", "--gpus", "3",
                                 "--db", str(db)])
    assert result.exit_code == 2 and "trainer.nproc_per_node=2 needs more GPUs than the sweep has (3)" in result.output
    result = runner.invoke(app, ["sweep", *SMALL, "optim.lr=1e-3,2e-3", "--gpus", "0,x", "--db", str(db)])
    assert result.exit_code == 2 and "'x' is not a GPU index" in result.output
    assert not db.exists() or RunStore(db).list_runs() == []
