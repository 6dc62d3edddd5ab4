"""`RunStore`: every read and write of runs, params, metrics, checkpoints and events (the only SQL in dreamlab)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dreamlab.store.errors import StoreError
from dreamlab.store.eval_jobs import EvalJobStoreMixin
from dreamlab.store.evals import EvalStoreMixin
from dreamlab.store.journal_offsets import JournalStoreMixin
from dreamlab.store.journal import JOURNAL_NAME
from dreamlab.store.names import generate_run_name, validate_run_name
from dreamlab.store.params import decode_value, flatten_recipe, same_value
from dreamlab.store.readonly import query_readonly
from dreamlab.store.records import TERMINAL_STATUSES, Checkpoint, Comparison, Event, MetricPoint, Progress, Run
from dreamlab.store.schema import STATUSES, check_sqlite_file, migrate

DEFAULT_DB = Path("runs") / "dreamlab.db"
DB_ENV = "DREAMLAB_DB"
RUNS_DIR_ENV = "DREAMLAB_RUNS_DIR"
_META_KEYS = {"git_commit", "host", "gpus", "versions"}
_VERSION_KEYS = ("torch", "transformers", "dreamlab")
# A write from a run proves it is alive: a run marked lost (silent too long) comes back to running.
_ALIVE = """UPDATE runs SET heartbeat = :now,
                status = CASE WHEN status = 'lost' THEN 'running' ELSE status END,
                ended = CASE WHEN status = 'lost' THEN NULL ELSE ended END,
                exit_reason = CASE WHEN status = 'lost' THEN NULL ELSE exit_reason END
            WHERE id = :id"""
# Run just before _ALIVE in the same transaction: a lost run that writes again says so in its history.
_REVIVED = """INSERT INTO events (run_id, time, kind, message)
            SELECT id, :now, 'revived', 'wrote again after it was marked lost' FROM runs WHERE id = :id AND status = 'lost'"""
_INSERT_RUN = """INSERT INTO runs (name, status, recipe, git_commit, host, gpus, torch_version, transformers_version,
                dreamlab_version, run_dir, sweep_id, created)
            VALUES (:name, :status, :recipe, :git_commit, :host, :gpus, :torch_version, :transformers_version,
                :dreamlab_version, :run_dir, :sweep_id, :created)"""
# Optional filters are NULL parameters and lists travel as one JSON array: no statement is built from strings.
_LIST_RUNS = """SELECT * FROM runs WHERE (:status IS NULL OR status = :status)
    AND (:sweep_id IS NULL OR sweep_id = :sweep_id) ORDER BY created DESC, id DESC LIMIT :limit"""
_COUNT_RUNS = """SELECT COUNT(*) FROM runs WHERE (:status IS NULL OR status = :status)
    AND (:sweep_id IS NULL OR sweep_id = :sweep_id)"""
_LATEST = """SELECT run_id, key, step, value FROM latest_metrics
    WHERE (:run_ids IS NULL OR run_id IN (SELECT value FROM json_each(:run_ids)))
    AND (:keys IS NULL OR key IN (SELECT value FROM json_each(:keys))) ORDER BY run_id, key"""
_MAX_STEPS = """SELECT run_id, MAX(step) FROM latest_metrics
    WHERE :run_ids IS NULL OR run_id IN (SELECT value FROM json_each(:run_ids)) GROUP BY run_id"""
_UPSERT_LATEST = """INSERT INTO latest_metrics (run_id, key, step, value) VALUES (?, ?, ?, ?)
    ON CONFLICT (run_id, key) DO UPDATE SET step = excluded.step, value = excluded.value
    WHERE excluded.step >= latest_metrics.step"""


def default_db_path() -> Path:
    """$DREAMLAB_DB if set, else runs/dreamlab.db under the current folder."""
    return Path(os.environ.get(DB_ENV) or DEFAULT_DB)


class RunStore(EvalStoreMixin, EvalJobStoreMixin, JournalStoreMixin):
    """A SQLite run store in WAL mode; safe to share between the trainer, evaluators and readers."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0) -> None:
        """Open the store at `path`, creating it (and its folder) or migrating it to the current schema."""
        self.path = Path(path)
        check_sqlite_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn
        self._lock = threading.RLock()
        self._writing = False
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes in WAL mode
            migrate(conn)
        except (sqlite3.DatabaseError, StoreError) as error:
            conn.close()
            raise StoreError(f"cannot open run store {self.path}: {error}") from None
        except BaseException:
            conn.close()
            raise

    @property
    def runs_dir(self) -> Path:
        """Where run folders go: $DREAMLAB_RUNS_DIR (a shared file system, the store on a local disk), else the
        database's folder."""
        folder = os.environ.get(RUNS_DIR_ENV)
        return Path(folder).expanduser().resolve() if folder else self.path.resolve().parent

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One small write transaction, taking the write lock up front (so the busy timeout applies); nested: the outer one."""
        with self._lock:
            if self._writing:  # inside another write of this store (a journal's ingest): part of that transaction
                yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._writing = True
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._writing = False
            self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot across several queries; never blocks writers."""
        with self._lock:
            if self._conn.in_transaction:  # already inside a read or write of this store
                yield self._conn
                return
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    # -- runs ---------------------------------------------------------------------------------------

    def create_run(self, name: str | None = None, recipe: Mapping[str, Any] | None = None,
                   meta: Mapping[str, Any] | None = None, run_dir: str | os.PathLike[str] | None = None,
                   sweep_id: str | None = None) -> Run:
        """Record a queued run with its recipe (flattened into params); a None name gets a readable unique one."""
        if name is not None:
            validate_run_name(name)
        recipe_json = json.dumps(dict(recipe or {}), default=str)
        normalized = json.loads(recipe_json)
        meta = dict(meta or {})
        unknown = set(meta) - _META_KEYS
        if unknown:
            raise StoreError(f"unknown meta keys {sorted(unknown)}; expected some of {sorted(_META_KEYS)}")
        versions = dict(meta.get("versions") or {})
        unknown = set(versions) - set(_VERSION_KEYS)
        if unknown:
            raise StoreError(f"unknown version keys {sorted(unknown)}; expected some of {list(_VERSION_KEYS)}")
        with self._write() as conn:
            if name is None:
                name = self._unused_name(conn)
            elif conn.execute("SELECT 1 FROM runs WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"a run named {name} already exists")
            folder = Path(run_dir) if run_dir is not None else self.runs_dir / name
            row = {
                "name": name, "status": "queued", "recipe": recipe_json,
                "git_commit": meta.get("git_commit"), "host": meta.get("host"),
                "gpus": json.dumps([str(gpu) for gpu in meta.get("gpus") or []]),
                **{f"{key}_version": versions.get(key) for key in _VERSION_KEYS},
                "run_dir": str(folder.resolve()), "sweep_id": sweep_id, "created": time.time(),
            }
            run_id = conn.execute(_INSERT_RUN, row).lastrowid
            _add_event(conn, run_id, "queued", None, row["created"])
            conn.executemany("INSERT INTO params (run_id, key, value, type) VALUES (?, ?, ?, ?)",
                             [(run_id, key, value, kind) for key, value, kind in flatten_recipe(normalized)])
        return self._run_by_id(run_id)

    def _unused_name(self, conn: sqlite3.Connection) -> str:
        for _ in range(100):
            name = generate_run_name()
            if not conn.execute("SELECT 1 FROM runs WHERE name = ?", (name,)).fetchone():
                return name
        raise StoreError("could not find an unused run name in 100 tries")

    def mark_started(self, run_id: int, pid: int | None = None, pgid: int | None = None, *,
                     when: float | None = None) -> Run:
        """Status running, started now (or `when`), heartbeat then, no worker yet; pid / pgid default to this process
        (resuming is allowed)."""
        pid = os.getpid() if pid is None else int(pid)
        pgid = os.getpgid(pid) if pgid is None and pid == os.getpid() else pgid
        now = _now() if when is None else float(when)
        with self._write() as conn:
            run = self._run_by_id(run_id)
            if run.status == "running":
                raise StoreError(f"run {run.name} is already running (pid {run.pid})")
            conn.execute("UPDATE runs SET status = 'running', started = ?, heartbeat = ?, ended = NULL, "
                         "exit_reason = NULL, pid = ?, pgid = ?, worker_host = NULL, worker_pid = NULL, "
                         "worker_started = NULL WHERE id = ?", (now, now, pid, pgid, run.id))
            _add_event(conn, run.id, "started", f"pid {pid}" + (f", process group {pgid}" if pgid is not None else ""), now)
        return self._run_by_id(run_id)

    def mark_submitted(self, run_id: int, job_id: str, *, when: float | None = None) -> Run:
        """Queued as Slurm job `job_id` (a first submission or a resubmission after it ended); refused while it runs."""
        now = _now() if when is None else float(when)
        with self._write() as conn:
            run = self._run_by_id(run_id)
            if run.status == "running":
                raise StoreError(f"run {run.name} is already running (Slurm job {run.job_id or '-'})")
            conn.execute("UPDATE runs SET status = 'queued', launcher = 'slurm', job_id = ?, nodes = NULL, ended = NULL, "
                         "exit_reason = NULL, pid = NULL, pgid = NULL WHERE id = ?", (str(job_id), run.id))
            _add_event(conn, run.id, "submitted", f"Slurm job {job_id}", now)
        return self._run_by_id(run_id)

    def record_nodes(self, run_id: int, nodes: str) -> None:
        """The node list of the run's Slurm job (written by rank 0 when the job starts)."""
        with self._write() as conn:
            conn.execute("UPDATE runs SET nodes = ? WHERE id = ?", (nodes, int(run_id)))

    def end_if_unfinished(self, run_id: int, status: str, exit_reason: str) -> bool:
        """End a queued, running or lost run with `status` (a reader that saw its job end); False if it already ended."""
        if status not in TERMINAL_STATUSES:
            raise StoreError(f"cannot end with status {status!r}: use one of {', '.join(TERMINAL_STATUSES)}")
        with self._write() as conn:
            now = time.time()
            cursor = conn.execute("UPDATE runs SET status = ?, ended = ?, exit_reason = ? "
                                  "WHERE id = ? AND status IN ('queued', 'running', 'lost')",
                                  (status, now, exit_reason, int(run_id)))
            if cursor.rowcount == 1:
                _add_event(conn, int(run_id), status, exit_reason, now)
            return cursor.rowcount == 1

    def record_worker(self, run_id: int, host: str, pid: int, pid_started: float) -> None:
        """The process that beats for the run (rank 0): its host, pid and creation time, for liveness checks."""
        with self._write() as conn:
            conn.execute("UPDATE runs SET worker_host = ?, worker_pid = ?, worker_started = ? WHERE id = ?",
                         (host, int(pid), float(pid_started), int(run_id)))

    def heartbeat(self, run_id: int, progress: Progress | None = None, *, when: float | None = None) -> None:
        """Heartbeat time now (or `when`), and the run's progress if given (a run marked lost comes back to running)."""
        with self._write() as conn:
            _prove_alive(conn, int(run_id), _now() if when is None else float(when))
            if progress is not None:
                conn.execute("UPDATE runs SET progress_step = ?, progress_time = ?, step_seconds = ? WHERE id = ?",
                             (int(progress.step), float(progress.time), progress.step_seconds, int(run_id)))

    def finish(self, run_id: int, status: str, exit_reason: str | None = None, *, when: float | None = None) -> Run:
        """End a run: completed / failed / diverged / stopped, ended now (or `when`); refused if it already ended."""
        if status not in TERMINAL_STATUSES:
            raise StoreError(f"cannot finish with status {status!r}: use one of {', '.join(TERMINAL_STATUSES)}")
        with self._write() as conn:
            run = self._run_by_id(run_id)
            if run.finished:
                raise StoreError(f"run {run.name} already ended ({run.status})")
            now = _now() if when is None else float(when)
            conn.execute("UPDATE runs SET status = ?, ended = ?, exit_reason = ? WHERE id = ?",
                         (status, now, exit_reason, run.id))
            _add_event(conn, run.id, status, exit_reason, now)
        return self._run_by_id(run_id)

    def record_ending(self, run_id: int, status: str, exit_reason: str | None = None, *,
                      when: float | None = None) -> Run:
        """The run's own word on how it ended (from its journal): ends it, or corrects the ending a reader guessed
        from Slurm before the journal line arrived."""
        if status not in TERMINAL_STATUSES:
            raise StoreError(f"cannot end with status {status!r}: use one of {', '.join(TERMINAL_STATUSES)}")
        now = _now() if when is None else float(when)
        with self._write() as conn:
            run = self._run_by_id(run_id)
            conn.execute("UPDATE runs SET status = ?, ended = ?, exit_reason = ? WHERE id = ?",
                         (status, now, exit_reason, run.id))
            _add_event(conn, run.id, status, exit_reason, now)
        return self._run_by_id(run_id)

    def stop_if_running(self, run_id: int, exit_reason: str) -> bool:
        """Mark a run stopped if it is still running (or lost); False when it already ended on its own."""
        with self._write() as conn:
            now = time.time()
            cursor = conn.execute("UPDATE runs SET status = 'stopped', ended = ?, exit_reason = ? "
                                  "WHERE id = ? AND status IN ('running', 'lost')", (now, exit_reason, int(run_id)))
            if cursor.rowcount == 1:
                _add_event(conn, int(run_id), "stopped", exit_reason, now)
            return cursor.rowcount == 1

    def mark_lost(self, run_id: int, reason: str) -> bool:
        """Mark a running run lost with its reason (ended at its last heartbeat); False if it is no longer running."""
        with self._write() as conn:
            cursor = conn.execute("UPDATE runs SET status = 'lost', ended = COALESCE(heartbeat, started, created), "
                                  "exit_reason = ? WHERE id = ? AND status = 'running'", (reason, int(run_id)))
            if cursor.rowcount == 1:
                _add_event(conn, int(run_id), "lost", reason, time.time())
            return cursor.rowcount == 1

    def delete_run(self, ref: int | str, *, force: bool = False) -> Run:
        """Delete a run's rows (metrics, params, checkpoints, evals, its journal's offset too); refused while it runs
        unless force."""
        with self._write() as conn:
            run = self._resolve(ref, conn)
            if run.status == "running" and not force:
                raise StoreError(f"run {run.name} is running: stop it first")
            conn.execute("DELETE FROM runs WHERE id = ?", (run.id,))
            if run.run_dir:  # a later run of the same name starts its journal afresh
                conn.execute("DELETE FROM journals WHERE path = ?", (str(Path(run.run_dir, JOURNAL_NAME).resolve()),))
        return run

    def run_owning(self, path: Path) -> int | None:
        """The id of the run whose folder holds `path` (the innermost one), if any."""
        with self._read() as conn:
            row = conn.execute("SELECT id FROM runs WHERE run_dir = :path OR substr(:path, 1, length(run_dir) + 1) = "
                               "run_dir || '/' ORDER BY length(run_dir) DESC LIMIT 1",
                               {"path": str(path.resolve())}).fetchone()
        return None if row is None else row["id"]

    def get_run(self, ref: int | str) -> Run:
        """A run by id, exact name or unique name prefix; StoreError if unknown or ambiguous."""
        with self._read() as conn:
            return self._resolve(ref, conn)

    def list_runs(self, status: str | None = None, sweep_id: str | None = None, limit: int | None = None) -> list[Run]:
        """Runs, newest first, optionally of one status and / or one sweep."""
        args = {**self._run_filter(status, sweep_id), "limit": -1 if limit is None else int(limit)}
        with self._read() as conn:
            rows = conn.execute(_LIST_RUNS, args)
            return [_run_from_row(row) for row in rows]

    def count_runs(self, status: str | None = None, sweep_id: str | None = None) -> int:
        """How many runs list_runs would return without a limit."""
        with self._read() as conn:
            return conn.execute(_COUNT_RUNS, self._run_filter(status, sweep_id)).fetchone()[0]

    @staticmethod
    def _run_filter(status: str | None, sweep_id: str | None) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
        return {"status": status, "sweep_id": sweep_id}

    # -- metrics, params, checkpoints ---------------------------------------------------------------

    def record_metrics(self, run_id: int, step: int, values: Mapping[str, float], time: float | None = None) -> None:
        """Write one step's metrics in one transaction (a step logged twice keeps the last value); updates latest.

        `time` (default now) is when they were logged, and a sign of life of the run at that time."""
        now = _now() if time is None else float(time)
        rows = [(int(run_id), int(step), _metric_key(key), _metric_value(key, value), now) for key, value in values.items()]
        with self._write() as conn:
            _prove_alive(conn, int(run_id), now)
            conn.executemany("INSERT OR REPLACE INTO metrics (run_id, step, key, value, time) VALUES (?, ?, ?, ?, ?)", rows)
            conn.executemany(_UPSERT_LATEST, [(r[0], r[2], r[1], r[3]) for r in rows])

    def record_metrics_bulk(self, rows: Iterable[tuple[int, int, str, float, float]]) -> int:
        """Import many (run_id, step, key, value, time) rows in one transaction; return how many (bench, imports)."""
        count, touched = 0, set()

        def checked() -> Iterator[tuple[int, int, str, float | None, float]]:
            nonlocal count
            for run_id, step, key, value, when in rows:
                count += 1
                touched.add(int(run_id))
                yield int(run_id), int(step), _metric_key(key), _metric_value(key, value), float(when)

        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO metrics (run_id, step, key, value, time) VALUES (?, ?, ?, ?, ?)",
                             checked())
            for run_id in touched:
                conn.execute("INSERT OR REPLACE INTO latest_metrics (run_id, key, step, value) "
                             "SELECT run_id, key, MAX(step), value FROM metrics WHERE run_id = ? GROUP BY key", (run_id,))
        return count

    def metrics(self, run_id: int, key: str | None = None) -> list[MetricPoint]:
        """Every logged point of a run (of one key), ordered by step then key."""
        if key is None:
            sql, args = "SELECT step, key, value, time FROM metrics WHERE run_id = ? ORDER BY step, key", (int(run_id),)
        else:
            sql, args = "SELECT step, key, value, time FROM metrics WHERE run_id = ? AND key = ? ORDER BY step", (int(run_id), key)
        with self._read() as conn:
            return [MetricPoint(step, name, _nan_if_none(value), when) for step, name, value, when in conn.execute(sql, args)]

    def latest_metrics(self, run_id: int) -> dict[str, tuple[int, float]]:
        """The value at the highest logged step of every metric: key -> (step, value)."""
        return self.latest_metrics_for([run_id]).get(int(run_id), {})

    def latest_metrics_for(self, run_ids: Sequence[int] | None = None,
                           keys: Sequence[str] | None = None) -> dict[int, dict[str, tuple[int, float]]]:
        """latest_metrics for many runs in one query (all runs when None), optionally of some keys only."""
        args = {"run_ids": _json_list(run_ids, int), "keys": _json_list(keys, str)}
        result: dict[int, dict[str, tuple[int, float]]] = {}
        with self._read() as conn:
            for run_id, key, step, value in conn.execute(_LATEST, args):
                result.setdefault(run_id, {})[key] = (step, _nan_if_none(value))
        return result

    def max_steps(self, run_ids: Sequence[int] | None = None) -> dict[int, int]:
        """The highest step any metric of each run reached (runs with no metrics are absent)."""
        with self._read() as conn:
            return dict(conn.execute(_MAX_STEPS, {"run_ids": _json_list(run_ids, int)}).fetchall())

    def params(self, run_id: int) -> dict[str, Any]:
        """The flattened recipe: dotted key -> typed value."""
        with self._read() as conn:
            rows = conn.execute("SELECT key, value, type FROM params WHERE run_id = ? ORDER BY key", (int(run_id),))
            return {key: decode_value(value, kind) for key, value, kind in rows}

    def record_checkpoint(self, run_id: int, step: int, path: str | os.PathLike[str], kind: str = "model+state",
                          complete: bool = True, *, when: float | None = None) -> Checkpoint:
        """Record (or update, by path) a checkpoint written now (or `when`); write complete=False first for
        checkpoints that take a while."""
        now = _now() if when is None else float(when)
        with self._write() as conn:
            _prove_alive(conn, int(run_id), now)
            if complete:
                _add_event(conn, int(run_id), "checkpoint", f"step {int(step)}: {path}", now)
            conn.execute("INSERT INTO checkpoints (run_id, step, path, kind, created, complete) VALUES (?, ?, ?, ?, ?, ?) "
                         "ON CONFLICT (run_id, path) DO UPDATE SET step = excluded.step, kind = excluded.kind, "
                         "complete = excluded.complete", (int(run_id), int(step), str(path), kind, now, int(complete)))
            row = conn.execute("SELECT run_id, step, path, kind, created, complete FROM checkpoints "
                               "WHERE run_id = ? AND path = ?", (int(run_id), str(path))).fetchone()
        return _checkpoint(row)

    def checkpoints(self, run_id: int) -> list[Checkpoint]:
        """A run's checkpoints by step."""
        with self._read() as conn:
            rows = conn.execute("SELECT run_id, step, path, kind, created, complete FROM checkpoints "
                                "WHERE run_id = ? ORDER BY step, created", (int(run_id),)).fetchall()
        return [_checkpoint(row) for row in rows]

    def latest_complete_checkpoint(self, run_id: int) -> Checkpoint | None:
        """The complete checkpoint with the highest step (what a resume loads), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT run_id, step, path, kind, created, complete FROM checkpoints "
                               "WHERE run_id = ? AND complete = 1 ORDER BY step DESC, created DESC LIMIT 1",
                               (int(run_id),)).fetchone()
        return None if row is None else _checkpoint(row)

    def record_event(self, run_id: int, kind: str, message: str | None = None, *, when: float | None = None) -> None:
        """Add a moment (now, or `when`) to a run's history (the trainer's `resumed`, a `note` the user should see, ...)."""
        if not kind or not isinstance(kind, str):
            raise StoreError(f"an event needs a kind, got {kind!r}")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (int(run_id),)).fetchone() is None:
                raise StoreError(f"no run with id {run_id}")
            _add_event(conn, int(run_id), kind, message, _now() if when is None else float(when))

    def events(self, run_id: int) -> list[Event]:
        """A run's history, oldest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT run_id, time, kind, message FROM events WHERE run_id = ? ORDER BY time, id",
                                (int(run_id),)).fetchall()
        return [Event(*row) for row in rows]

    # -- comparison and raw queries -----------------------------------------------------------------

    def compare(self, refs: Iterable[int | str]) -> Comparison:
        """Runs side by side: params that differ (key -> value per run) and each run's final metrics."""
        runs: list[Run] = []
        for ref in refs:
            run = self.get_run(ref)
            if all(run.id != seen.id for seen in runs):
                runs.append(run)
        if not runs:
            raise StoreError("nothing to compare: name at least one run")
        params = [self.params(run.id) for run in runs]
        differ: dict[str, list[Any]] = {}
        same: dict[str, Any] = {}
        for key in sorted(set().union(*params)):
            values = [p.get(key) for p in params]  # absent reads as None, like null
            if all(same_value(values[0], value) for value in values[1:]):
                same[key] = values[0]
            else:
                differ[key] = values
        latest = self.latest_metrics_for([run.id for run in runs])
        return Comparison(runs=runs, params=differ, same_params=same,
                          final_metrics=[latest.get(run.id, {}) for run in runs])

    @staticmethod
    def query_readonly(path: str | os.PathLike[str], sql: str, *, max_rows: int | None = None,
                       timeout_s: float = 10.0) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one SELECT on a connection opened read-only (URI mode=ro + query_only + an authorizer)."""
        return query_readonly(path, sql, max_rows=max_rows, timeout_s=timeout_s)

    # -- helpers ------------------------------------------------------------------------------------

    def _resolve(self, ref: int | str, conn: sqlite3.Connection) -> Run:
        if isinstance(ref, Run):
            ref = ref.id
        if isinstance(ref, int):
            return self._run_by_id(ref)
        text = str(ref).strip()
        if not text:
            raise StoreError("empty run reference")
        row = conn.execute("SELECT id FROM runs WHERE name = ?", (text,)).fetchone()
        if row is None and text.isdigit():
            row = conn.execute("SELECT id FROM runs WHERE id = ?", (int(text),)).fetchone()
        if row is not None:
            return self._run_by_id(row[0])
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        matches = conn.execute("SELECT id, name FROM runs WHERE name LIKE ? ESCAPE '\\' ORDER BY name LIMIT 6",
                               (escaped + "%",)).fetchall()
        matches = [(run_id, name) for run_id, name in matches if name.startswith(text)]  # LIKE ignores case
        if len(matches) == 1:
            return self._run_by_id(matches[0][0])
        if not matches:
            raise StoreError(f"no run named {text} (nor a name starting with it) in {self.path}")
        names = ", ".join(name for _, name in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise StoreError(f"{text} is ambiguous: it starts {names}")

    def _run_by_id(self, run_id: int) -> Run:
        if isinstance(run_id, Run):
            run_id = run_id.id
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id} in {self.path}")
        return _run_from_row(row)


def _json_list(values: Sequence[Any] | None, kind: type) -> str | None:
    """A filter's values as one JSON array parameter; None (no filter) stays None."""
    return None if values is None else json.dumps([kind(value) for value in values])


def _now() -> float:
    return time.time()


def _add_event(conn: sqlite3.Connection, run_id: int, kind: str, message: str | None, when: float) -> None:
    conn.execute("INSERT INTO events (run_id, time, kind, message) VALUES (?, ?, ?, ?)", (run_id, when, kind, message))


def _prove_alive(conn: sqlite3.Connection, run_id: int, now: float) -> None:
    """Heartbeat now inside the caller's write; a lost run comes back to running (and says so)."""
    conn.execute(_REVIVED, {"now": now, "id": run_id})
    if conn.execute(_ALIVE, {"now": now, "id": run_id}).rowcount == 0:
        raise StoreError(f"no run with id {run_id}")


def _metric_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise StoreError(f"metric keys must be non-empty strings, got {key!r}")
    return key


def _metric_value(key: str, value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StoreError(f"metric {key} must be a number, got {value!r}") from None
    return None if math.isnan(number) else number  # SQLite stores NaN as NULL; it reads back as NaN


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _run_from_row(row: Mapping[str, Any]) -> Run:
    return Run(
        id=row["id"], name=row["name"], status=row["status"], recipe=json.loads(row["recipe"] or "{}"),
        git_commit=row["git_commit"], host=row["host"], gpus=json.loads(row["gpus"] or "[]"),
        versions={key: row[f"{key}_version"] for key in _VERSION_KEYS}, pid=row["pid"], pgid=row["pgid"],
        run_dir=row["run_dir"], sweep_id=row["sweep_id"], created=row["created"], started=row["started"],
        ended=row["ended"], heartbeat=row["heartbeat"], exit_reason=row["exit_reason"],
        worker_host=row["worker_host"], worker_pid=row["worker_pid"], worker_started=row["worker_started"],
        progress=None if row["progress_step"] is None else Progress(row["progress_step"], row["progress_time"],
                                                                     row["step_seconds"]),
        launcher=row["launcher"], job_id=row["job_id"], nodes=row["nodes"],
    )


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    run_id, step, path, kind, created, complete = row
    return Checkpoint(run_id=run_id, step=step, path=path, kind=kind, created=created, complete=bool(complete))
