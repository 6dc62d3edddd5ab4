"""A Slurm job's journal and its ingestion into the store: torn lines, lines recorded once, order, eval jobs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dreamlab.store import EvalJob, Progress, RunStore, StoreError
from dreamlab.store.evals import settings_key
from dreamlab.store.ingest import apply_run_record, ingest_eval_job, ingest_run, ingest_runs
from dreamlab.store.journal import JOURNAL_NAME, Journal, read_from
from dreamlab.train.sinks import StoreSink


def slurm_run(store: RunStore, name: str = "job"):
    run = store.create_run(name=name)
    return store.mark_submitted(run.id, "41")


def journal(run) -> Journal:
    return Journal(f"{run.run_dir}/{JOURNAL_NAME}")


def test_a_torn_last_line_is_left_for_the_next_read_and_read_once_complete(tmp_path):
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(b'{"kind": "a", "time": 1}\n{"kind": "b", "ti')
    first = read_from(path, 0)
    assert ([r["kind"] for r in first.records], first.bad_lines, first.offset) == (["a"], [], 25)
    with open(path, "ab") as file:
        file.write(b'me": 2}\n')
    second = read_from(path, first.offset)
    assert ([r["kind"] for r in second.records], second.offset) == (["b"], path.stat().st_size)
    assert read_from(path, second.offset).records == []


def test_a_writer_after_a_crash_starts_a_fresh_line_so_the_torn_one_is_skipped_alone(tmp_path):
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(b'{"kind": "metrics", "time": 1, "step": 1, "val')  # the job died mid-line
    Journal(path).write("event", event="note", message="after")
    chunk = read_from(path, 0)
    assert [r["kind"] for r in chunk.records] == ["event"]
    assert chunk.bad_lines == ['{"kind": "metrics", "time": 1, "step": 1, "val']


def test_lines_that_are_not_records_are_reported_not_raised(tmp_path):
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(b'[1, 2]\n{"no kind": 1}\n\n{"kind": "ok", "time": 1}\n')
    chunk = read_from(path, 0)
    assert [r["kind"] for r in chunk.records] == ["ok"] and chunk.bad_lines == ["[1, 2]", '{"no kind": 1}']
    assert read_from(tmp_path / "missing.jsonl", 7).offset == 7


def test_ingesting_twice_records_each_line_once(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    run = slurm_run(store)
    writer = journal(run)
    writer.write("started", pid=7, nodes="node[1-2]", time=100.0)
    writer.write("metrics", step=1, values={"train/loss": 2.5}, time=101.0)
    writer.write("event", event="note", message="hello", time=102.0)
    assert ingest_run(store, run) == 3
    assert ingest_run(store, run) == 0
    writer.write("metrics", step=2, values={"train/loss": 2.0}, time=103.0)
    assert ingest_runs(store) == 1 and ingest_runs(store) == 0
    found = store.get_run(run.id)
    assert (found.status, found.started, found.nodes, found.pid, found.heartbeat) == ("running", 100.0, "node[1-2]", 7, 103.0)
    assert [(p.step, p.value, p.time) for p in store.metrics(run.id)] == [(1, 2.5, 101.0), (2, 2.0, 103.0)]
    assert [(e.kind, e.message) for e in store.events(run.id)].count(("note", "hello")) == 1


def test_two_readers_ingesting_at_once_record_each_line_once(tmp_path):
    """Reader A holds its ingest open after its first line while reader B (another connection) ingests too."""
    db = tmp_path / "dreamlab.db"
    first, second = RunStore(db), RunStore(db)
    run = slurm_run(first)
    writer = journal(run)
    for step in (1, 2, 3):
        writer.write("metrics", step=step, values={"train/loss": 1.0 / step})
    inside, release = threading.Event(), threading.Event()

    def held(record):
        apply_run_record(first, run.id, record)
        inside.set()
        assert release.wait(30)

    result = {}
    reader_a = threading.Thread(target=lambda: result.setdefault("a", first.ingest_journal(writer.path, held)))
    reader_a.start()
    assert inside.wait(30)
    reader_b = threading.Thread(target=lambda: result.setdefault("b", ingest_run(second, run)))
    reader_b.start()  # blocks on the write lock that A holds
    release.set()
    reader_a.join(30)
    reader_b.join(30)
    assert result == {"a": (3, []), "b": 0}
    assert [p.step for p in second.metrics(run.id)] == [1, 2, 3]


def test_records_apply_in_order_an_ending_then_a_resubmission_leaves_the_run_queued(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    run = slurm_run(store)
    writer = journal(run)
    writer.write("started", pid=1, nodes="n1")
    writer.write("finish", status="stopped", reason="Slurm time limit; resubmitted (trainer.slurm_requeue)")
    writer.write("submitted", job_id="42")
    ingest_run(store, run)
    found = store.get_run(run.id)
    assert (found.status, found.job_id, found.exit_reason, found.ended) == ("queued", "42", None, None)
    kinds = [e.kind for e in store.events(run.id)]
    assert kinds[-3:] == ["started", "stopped", "submitted"]


def test_the_journal_s_ending_corrects_an_ending_a_reader_guessed_from_slurm(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    run = slurm_run(store)
    journal(run).write("finish", status="stopped", reason="stop requested (SIGTERM/SIGINT)", time=50.0)
    store.end_if_unfinished(run.id, "stopped", "Slurm job cancelled (job 41; the run recorded no ending)")
    ingest_run(store, run)
    found = store.get_run(run.id)
    assert (found.status, found.exit_reason, found.ended) == ("stopped", "stop requested (SIGTERM/SIGINT)", 50.0)


def test_a_torn_or_refused_line_becomes_a_note_and_the_rest_is_recorded(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    run = slurm_run(store)
    path = tmp_path / run.name / JOURNAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"kind": "metrics", "time": 1, "st\n{"kind": "bogus", "time": 2}\n'
                     b'{"kind": "metrics", "time": 3, "step": 4, "values": {"train/loss": 1.5}}\n')
    assert ingest_run(store, run) == 1
    notes = [e.message for e in store.events(run.id) if e.kind == "note"]
    assert len(notes) == 2 and "unreadable line" in notes[0] and "unknown run record kind 'bogus'" in notes[1]
    assert [(p.step, p.value) for p in store.metrics(run.id)] == [(4, 1.5)]
    assert ingest_run(store, run) == 0  # the skipped lines are behind the offset too


def test_the_journal_and_the_store_sink_record_the_same_run(tmp_path):
    """Rank 0's records through a journal + ingestion and straight into the store end the same."""
    records = [("started", {"pid": 5, "nodes": "n1"}), ("worker", {"host": "n1", "pid": 5, "created": 1.0}),
               ("metrics", {"step": 1, "values": {"train/loss": 3.0, "train/lr": 0.1}}),
               ("heartbeat", {"progress": [1, 10.0, 0.5]}),
               ("checkpoint", {"step": 1, "path": str(tmp_path / "ckpt-1")}),
               ("event", {"event": "resumed", "message": "resumed from step 1"}),
               ("finish", {"status": "completed", "reason": None})]
    (tmp_path / "ckpt-1").mkdir()
    store = RunStore(tmp_path / "dreamlab.db")
    direct, journaled = slurm_run(store, "direct"), slurm_run(store, "journaled")
    sink, writer = StoreSink(store.path, direct.id), journal(journaled)
    for kind, fields in records:
        sink.write(kind, **fields)
        writer.write(kind, **fields)
    sink.close()
    writer.close()
    ingest_run(store, journaled)
    a, b = store.get_run(direct.id), store.get_run(journaled.id)
    assert (a.status, a.nodes, a.worker_host, a.progress) == (b.status, b.nodes, b.worker_host, b.progress) == (
        "completed", "n1", "n1", Progress(1, 10.0, 0.5))
    assert [(p.step, p.key, p.value) for p in store.metrics(a.id)] == [(p.step, p.key, p.value) for p in store.metrics(b.id)]
    assert [(c.step, c.complete) for c in store.checkpoints(a.id)] == [(c.step, c.complete) for c in store.checkpoints(b.id)]
    assert [e.kind for e in store.events(a.id)] == [e.kind for e in store.events(b.id)]


def slurm_eval_job(store: RunStore, folder: Path) -> EvalJob:
    """A Slurm eval job recorded as `dreamlab eval --slurm` records it, submitted as Slurm job 77."""
    job = store.create_eval_job(["eval", "--job-dir", str(folder)], detached=True, launcher="slurm", folder=str(folder))
    return store.update_slurm_eval_job(job.id, job_id="77", reason="Slurm job 77 submitted")


def test_an_eval_job_s_journal_becomes_its_grid_s_eval_rows_and_its_progress(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    folder = tmp_path / "evals" / "e1"
    job = slurm_eval_job(store, folder)
    settings = {"task": "arithmetic", "model": "tiny", "alg": "entropy", "steps": 4, "n_samples": 2, "grid_id": "g1"}
    writer = Journal(folder / JOURNAL_NAME)
    writer.write("started", nodes="n3", time=10.0)
    writer.write("job", run_id=None, model="tiny", task="arithmetic", grid_id="g1", n_total=2)
    key = settings_key(settings)
    writer.write("eval", key=key, settings=settings)
    rows = [{"idx": i, "question": f"q{i}", "gold": "1", "generation": "1", "correct": i == 0} for i in range(2)]
    writer.write("samples", key=key, rows=rows)
    assert ingest_eval_job(store, job) == 4
    running = store.get_eval_job(job.id)
    assert (running.status, running.reason, running.n_done, running.n_correct, running.n_total) == ("running", None, 2, 1, 2)
    (record,) = store.list_evals()
    assert (record.status, record.n_done, record.n_correct, record.grid_id) == ("running", 2, 1, "g1")
    writer.write("eval_finish", key=record.settings_key, status="completed", summary={"accuracy": 0.5})
    writer.write("finish", status="completed", reason=None, time=20.0)
    assert ingest_eval_job(store, job) == 2 and ingest_eval_job(store, job) == 0
    found = store.get_eval_job(job.id)
    assert (found.status, found.nodes, found.started, found.ended, found.eval_ids, found.model) == (
        "completed", "n3", 10.0, 20.0, [record.id], "tiny")
    assert (store.get_eval(record.id).status, store.get_eval(record.id).accuracy) == ("completed", 0.5)


def test_a_requeued_eval_job_runs_again_and_its_journal_ending_wins(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    folder = tmp_path / "evals" / "e4"
    job = slurm_eval_job(store, folder)
    writer = Journal(folder / JOURNAL_NAME)
    writer.write("started", nodes="n1", time=1.0)
    writer.write("finish", status="stopped", reason="StopRequested: ", time=2.0)
    writer.write("started", nodes="n2", time=3.0)
    ingest_eval_job(store, job)
    again = store.get_eval_job(job.id)
    assert (again.status, again.nodes, again.ended, again.exit_reason) == ("running", "n2", None, None)
    store.finish_eval_job(job.id, "failed", "Slurm job failed (job 77; the eval recorded no ending)")  # a guess
    writer.write("finish", status="completed", time=4.0)
    ingest_eval_job(store, job)
    found = store.get_eval_job(job.id)
    assert (found.status, found.ended, found.exit_reason) == ("completed", 4.0, None)


def test_samples_before_their_eval_line_are_refused_as_a_reason_not_a_traceback(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    folder = tmp_path / "evals" / "e2"
    job = slurm_eval_job(store, folder)
    folder.mkdir(parents=True)
    (folder / JOURNAL_NAME).write_text(json.dumps({"kind": "samples", "time": 1, "key": "nope", "rows": []}) + "\n")
    assert ingest_eval_job(store, job) == 0
    assert "no eval with settings key nope" in store.get_eval_job(job.id).reason


def test_slurm_eval_job_updates_refuse_unknown_fields_endings_and_local_jobs(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    job = slurm_eval_job(store, tmp_path)
    with pytest.raises(StoreError, match="unknown eval job fields"):
        store.update_slurm_eval_job(job.id, colour="red")
    with pytest.raises(StoreError, match="eval job status 'completed': set queued or running here"):
        store.update_slurm_eval_job(job.id, status="completed")
    local = store.create_eval_job([], detached=False)
    with pytest.raises(StoreError, match=f"eval job {local.id} is not a Slurm job"):
        store.update_slurm_eval_job(local.id, nodes="n1")
    with pytest.raises(StoreError, match="a Slurm eval job needs its folder"):
        store.create_eval_job([], detached=True, launcher="slurm")
    with pytest.raises(StoreError, match="unknown eval job launcher 'k8s'"):
        store.create_eval_job([], detached=True, launcher="k8s", folder=str(tmp_path))
    assert ingest_eval_job(store, local) == 0  # a local job has no journal


def test_a_long_journal_is_read_in_batches_each_with_its_offset(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    run = slurm_run(store)
    writer = journal(run)
    for step in range(1, 8):
        writer.write("metrics", step=step, values={"train/loss": float(step)}, time=1.0)
    seen = []
    applied, skipped = store.ingest_journal(writer.path, lambda record: seen.append(
        (record["step"], store.journal_offsets().get(str(writer.path.resolve()), 0))), batch_lines=3)
    assert (applied, skipped) == (7, [])
    line = writer.path.stat().st_size // 7  # every line here has the same length (one digit, the same time)
    assert seen == [(1, 0), (2, 0), (3, 0), (4, 3 * line), (5, 3 * line), (6, 3 * line), (7, 6 * line)]
    assert store.journal_offsets() == {str(writer.path.resolve()): 7 * line}


def test_an_eval_job_rerun_in_its_folder_resumes_from_its_own_journal(tmp_path):
    from dreamlab.evals.journaled import JournalEvalStore

    settings = {"task": "arithmetic", "model": "tiny", "alg": "entropy", "steps": 4, "n_samples": 2}
    first = JournalEvalStore(tmp_path)
    record = first.create_or_resume_eval(settings)
    assert (record.id, record.status, record.n_done) == (settings_key(settings), "running", 0)
    first.record_eval_samples(record.id, [{"idx": 0, "question": "q", "gold": "1", "generation": "1", "correct": True}])
    rerun = JournalEvalStore(tmp_path)  # Slurm reran the job: the same folder
    record = rerun.create_or_resume_eval(settings)
    assert (rerun.done_sample_indices(record.id), record.n_done, record.n_correct) == ({0}, 1, 1)
    rerun.finish_eval(record.id, "completed", {"accuracy": 1.0})
    lines = (tmp_path / JOURNAL_NAME).read_text().count("\n")
    again = JournalEvalStore(tmp_path).create_or_resume_eval(settings)
    assert (again.status, again.accuracy) == ("completed", 1.0)
    assert (tmp_path / JOURNAL_NAME).read_text().count("\n") == lines  # a completed cell is not opened again


def test_a_deleted_run_s_journal_offset_goes_with_it_so_a_new_run_of_its_name_starts_afresh(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    old = slurm_run(store, "again")
    writer = journal(old)
    for step in range(1, 4):
        writer.write("metrics", step=step, values={"train/loss": 1.0})
    ingest_run(store, old)
    store.delete_run(old.id)
    assert store.journal_offsets() == {}
    Path(old.run_dir, JOURNAL_NAME).unlink()  # `runs rm` removes the folder
    new = slurm_run(store, "again")
    journal(new).write("metrics", step=1, values={"train/loss": 2.0})
    assert ingest_run(store, new) == 1 and [(p.step, p.value) for p in store.metrics(new.id)] == [(1, 2.0)]
