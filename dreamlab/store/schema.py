"""The run store's schema as ordered migrations; `migrate` brings any known version up to date."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import MISSING, fields
from pathlib import Path

from dreamlab.diffusion.settings import SamplerSettings, field_types
from dreamlab.store.errors import StoreError

STATUSES = ("queued", "running", "completed", "failed", "diverged", "stopped", "lost")
EVAL_STATUSES = ("running", "completed", "interrupted", "failed")
# One `dreamlab eval` invocation (a grid of eval rows) as a job: recorded, started, watched, stopped.
EVAL_JOB_STATUSES = ("queued", "running", "completed", "failed", "stopped", "lost")
_STATUS_CHECK = ", ".join(f"'{status}'" for status in STATUSES)


# Version 1: runs, flattened params, metric points and checkpoints.
_V1_INITIAL = f"""
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ({_STATUS_CHECK})),
            recipe TEXT NOT NULL DEFAULT '{{}}',
            git_commit TEXT,
            host TEXT,
            gpus TEXT NOT NULL DEFAULT '[]',
            torch_version TEXT,
            transformers_version TEXT,
            dreamlab_version TEXT,
            pid INTEGER,
            pgid INTEGER,
            run_dir TEXT,
            sweep_id TEXT,
            created REAL NOT NULL,
            started REAL,
            ended REAL,
            heartbeat REAL,
            exit_reason TEXT
        );
        CREATE INDEX runs_by_created ON runs (created);
        CREATE INDEX runs_by_status ON runs (status);
        CREATE INDEX runs_by_sweep ON runs (sweep_id);
        CREATE TABLE params (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT,
            type TEXT NOT NULL,
            PRIMARY KEY (run_id, key)
        ) WITHOUT ROWID;
        CREATE TABLE metrics (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            key TEXT NOT NULL,
            value REAL,
            time REAL NOT NULL,
            PRIMARY KEY (run_id, key, step)
        ) WITHOUT ROWID;
        CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            created REAL NOT NULL,
            complete INTEGER NOT NULL DEFAULT 0,
            UNIQUE (run_id, path)
        );
        CREATE INDEX checkpoints_by_run_step ON checkpoints (run_id, step);
"""


# Version 2: the latest value of every metric of every run (highest step, backfilled), so tables never
# scan metrics; an index for finding stale running runs.
_V2_LATEST_METRICS = """
        CREATE TABLE latest_metrics (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            step INTEGER NOT NULL,
            value REAL,
            PRIMARY KEY (run_id, key)
        ) WITHOUT ROWID;
        INSERT INTO latest_metrics (run_id, key, step, value)
            SELECT run_id, key, MAX(step), value FROM metrics GROUP BY run_id, key;
        CREATE INDEX runs_by_status_heartbeat ON runs (status, heartbeat);
"""


# Version 3: evaluations (one row per grid cell, keyed by a hash of every answer-changing setting so
# an interrupted eval resumes into the same row) and their per-sample results.
_EVAL_STATUSES = ", ".join(f"'{status}'" for status in EVAL_STATUSES)
_V3_EVALS = f"""
        CREATE TABLE evals (
            id INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES runs (id) ON DELETE CASCADE,
            checkpoint TEXT,
            model TEXT,
            task TEXT NOT NULL,
            shots INTEGER,
            template_hash TEXT,
            alg TEXT,
            steps INTEGER,
            max_new_tokens INTEGER,
            temperature REAL,
            top_p REAL,
            top_k INTEGER,
            alg_temp REAL,
            block_length INTEGER,
            threshold REAL,
            batch_size INTEGER,
            seed INTEGER,
            limit_n INTEGER,
            settings_key TEXT NOT NULL UNIQUE,
            versions TEXT NOT NULL DEFAULT '{{}}',
            device TEXT,
            status TEXT NOT NULL CHECK (status IN ({_EVAL_STATUSES})),
            n_samples INTEGER,
            n_done INTEGER NOT NULL DEFAULT 0,
            n_correct INTEGER NOT NULL DEFAULT 0,
            accuracy REAL,
            ci_low REAL,
            ci_high REAL,
            nfe_mean REAL,
            tokens_per_s REAL,
            grid_id TEXT,
            started REAL,
            ended REAL
        );
        CREATE INDEX evals_by_run ON evals (run_id);
        CREATE INDEX evals_by_grid ON evals (grid_id);
        CREATE INDEX evals_by_checkpoint ON evals (checkpoint);
        CREATE TABLE eval_samples (
            eval_id INTEGER NOT NULL REFERENCES evals (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            question TEXT,
            gold TEXT,
            generation TEXT,
            extracted TEXT,
            correct INTEGER,
            flexible_correct INTEGER,
            flexible_extracted TEXT,
            nfe INTEGER,
            seconds REAL,
            leftover_masks INTEGER,
            unclosed_boxed INTEGER,
            n_boxed INTEGER,
            history TEXT,
            PRIMARY KEY (eval_id, idx)
        ) WITHOUT ROWID;
"""


# Version 4: a run's history as events (queued, started, checkpoint, resumed, note, revived, and every
# final status with its reason), backfilled for existing runs from their created / started / ended times.
_V4_EVENTS = """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            time REAL NOT NULL,
            kind TEXT NOT NULL,
            message TEXT
        );
        CREATE INDEX events_by_run ON events (run_id, time);
        INSERT INTO events (run_id, time, kind) SELECT id, created, 'queued' FROM runs;
        INSERT INTO events (run_id, time, kind) SELECT id, started, 'started' FROM runs WHERE started IS NOT NULL;
        INSERT INTO events (run_id, time, kind, message)
            SELECT id, ended, status, exit_reason FROM runs WHERE ended IS NOT NULL;
"""


# Version 5: what tells a healthy run from a stalled or lost one: the process that beats for it (rank 0's
# host, pid and creation time, so a reader on that host can tell a silent process from a gone one) and
# its progress (the last completed optimizer step, when it ended, the median step time so far).
_V5_LIVENESS = """
        ALTER TABLE runs ADD COLUMN worker_host TEXT;
        ALTER TABLE runs ADD COLUMN worker_pid INTEGER;
        ALTER TABLE runs ADD COLUMN worker_started REAL;
        ALTER TABLE runs ADD COLUMN progress_step INTEGER;
        ALTER TABLE runs ADD COLUMN progress_time REAL;
        ALTER TABLE runs ADD COLUMN step_seconds REAL;
"""


# Version 6: lm-eval's protocols. An eval records its template and whether prompts began with BOS (both
# also in its template hash), and the lm-eval-named accuracies (strict, flexible) beside the main one; a
# sample keeps where a stop string cut its generation (the generation itself stays whole) and lm-eval's
# strict verdict.
_V6_LM_EVAL = """
        ALTER TABLE evals ADD COLUMN template TEXT;
        ALTER TABLE evals ADD COLUMN add_bos INTEGER;
        ALTER TABLE evals ADD COLUMN strict_accuracy REAL;
        ALTER TABLE evals ADD COLUMN flexible_accuracy REAL;
        ALTER TABLE eval_samples ADD COLUMN cut_at INTEGER;
        ALTER TABLE eval_samples ADD COLUMN strict_extracted TEXT;
        ALTER TABLE eval_samples ADD COLUMN strict_correct INTEGER;
"""


# Version 7: results scored elsewhere (the lm-eval bridge): an eval's metrics as that harness reported them
# ({"exact_match,strict-match": 0.77, ...}) and each sample's per-filter metrics, both JSON.
_V7_EXTERNAL_METRICS = """
        ALTER TABLE evals ADD COLUMN metrics TEXT;
        ALTER TABLE eval_samples ADD COLUMN metrics TEXT;
"""


# Version 8: what the accuracy-vs-speed frontier needs: each sample's answer length (tokens up to EOS,
# not the padding) and, per eval, tokens revealed per model call, answer tokens per second and wall time.
_V8_SPEED = """
        ALTER TABLE eval_samples ADD COLUMN answer_tokens INTEGER;
        ALTER TABLE evals ADD COLUMN tokens_per_forward REAL;
        ALTER TABLE evals ADD COLUMN answer_tokens_per_s REAL;
        ALTER TABLE evals ADD COLUMN wall_seconds REAL;
"""


# Version 9: which launcher started a run and its handle there: a Slurm job id, and the job's node list once
# it runs (local runs keep their pid / pgid and read launcher 'local').
_V9_LAUNCHER = """
        ALTER TABLE runs ADD COLUMN launcher TEXT NOT NULL DEFAULT 'local';
        ALTER TABLE runs ADD COLUMN job_id TEXT;
        ALTER TABLE runs ADD COLUMN nodes TEXT;
"""


# Version 10: evals as jobs, like runs. One row per `dreamlab eval` invocation (detached or in the foreground):
# its command line, process (pid, process group, log file; the writing process's pid and creation time for
# liveness), heartbeat, the grid it evaluates (its eval rows share grid_id) and its progress: samples done /
# total over the grid, correct so far, samples per second this session (the ETA's rate).
_JOB_STATUSES = ", ".join(f"'{status}'" for status in EVAL_JOB_STATUSES)
_V10_EVAL_JOBS = f"""
        CREATE TABLE eval_jobs (
            id INTEGER PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ({_JOB_STATUSES})),
            command TEXT NOT NULL DEFAULT '[]',
            detached INTEGER NOT NULL DEFAULT 0,
            run_id INTEGER REFERENCES runs (id) ON DELETE SET NULL,
            model TEXT,
            task TEXT,
            grid_id TEXT,
            eval_ids TEXT NOT NULL DEFAULT '[]',
            host TEXT,
            pid INTEGER,
            pgid INTEGER,
            log_path TEXT,
            worker_pid INTEGER,
            worker_started REAL,
            n_total INTEGER,
            n_done INTEGER NOT NULL DEFAULT 0,
            n_correct INTEGER NOT NULL DEFAULT 0,
            samples_per_s REAL,
            progress_time REAL,
            created REAL NOT NULL,
            started REAL,
            ended REAL,
            heartbeat REAL,
            exit_reason TEXT
        );
        CREATE INDEX eval_jobs_by_created ON eval_jobs (created);
        CREATE INDEX eval_jobs_by_status ON eval_jobs (status);
        CREATE INDEX eval_jobs_by_run ON eval_jobs (run_id);
"""


# Version 11: one device at full speed. The dtype the model ran in (bfloat16 on CUDA by default) and the batch
# size a cell's batches actually ran at (`--batch-size auto` records NULL in batch_size and the size it found
# here; a fixed size is recorded in both).
_V11_DEVICE_SPEED = """
        ALTER TABLE evals ADD COLUMN dtype TEXT;
        ALTER TABLE evals ADD COLUMN batch_size_used INTEGER;
"""


# Version 12: Slurm jobs. What a Slurm job writes into its folder instead of the store (runs/<run>/journal.jsonl,
# an eval job's folder) and how far the submitting host has read each journal into the store (so a line is recorded
# once); an eval submitted with `dreamlab eval --slurm` is an eval_jobs row with launcher 'slurm', its Slurm job id,
# node list, folder (script, log, journal) and Slurm's word on it (a pending job's reason).
_V12_JOURNALS = """
        CREATE TABLE journals (
            path TEXT PRIMARY KEY,
            offset INTEGER NOT NULL DEFAULT 0,
            lines INTEGER NOT NULL DEFAULT 0,
            bad_lines INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        ALTER TABLE eval_jobs ADD COLUMN launcher TEXT NOT NULL DEFAULT 'local' CHECK (launcher IN ('local', 'slurm'));
        ALTER TABLE eval_jobs ADD COLUMN job_id TEXT;
        ALTER TABLE eval_jobs ADD COLUMN nodes TEXT;
        ALTER TABLE eval_jobs ADD COLUMN folder TEXT;
        ALTER TABLE eval_jobs ADD COLUMN reason TEXT;
"""


# Ordered: MIGRATIONS[i] takes a database from version i to version i + 1. Never edit a released
# migration; append a new one.
MIGRATIONS: tuple[str, ...] = (_V1_INITIAL, _V2_LATEST_METRICS, _V3_EVALS, _V4_EVENTS, _V5_LIVENESS, _V6_LM_EVAL,
                                _V7_EXTERNAL_METRICS, _V8_SPEED, _V9_LAUNCHER, _V10_EVAL_JOBS, _V11_DEVICE_SPEED,
                                _V12_JOURNALS)
SCHEMA_VERSION = len(MIGRATIONS)
# Tables that hold a settings dataclass's fields as columns: a new field becomes a column on the next open.
SETTINGS_COLUMNS = {"evals": SamplerSettings}
_SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT", bool: "INTEGER"}

# The eval statements, built once here from the same settings fields as the columns above: a new
# sampler setting needs no edit. Callers pass parameter dicts; nothing is built at call time.
EVAL_SETTING_COLUMNS = ("run_id", "model", "checkpoint", "task", "shots", "template", "add_bos", "template_hash",
                        *(item.name for item in fields(SETTINGS_COLUMNS["evals"])), "batch_size", "seed", "limit_n",
                        "versions", "device", "dtype", "n_samples", "grid_id")
EVAL_SAMPLE_COLUMNS = ("idx", "question", "gold", "generation", "extracted", "correct", "flexible_correct",
                       "flexible_extracted", "strict_correct", "strict_extracted", "cut_at", "nfe", "seconds",
                       "leftover_masks", "unclosed_boxed", "n_boxed", "history", "metrics", "answer_tokens")
EVAL_SUMMARY_COLUMNS = ("accuracy", "strict_accuracy", "flexible_accuracy", "ci_low", "ci_high", "nfe_mean",
                        "tokens_per_s", "n_done", "n_correct", "n_samples", "metrics", "tokens_per_forward",
                        "answer_tokens_per_s", "wall_seconds", "batch_size_used")


def _insert(verb: str, table: str, columns: tuple[str, ...]) -> str:
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + name for name in columns)})"


INSERT_EVAL = _insert("INSERT", "evals", (*EVAL_SETTING_COLUMNS, "settings_key", "status", "started"))
INSERT_EVAL_SAMPLE = _insert("INSERT OR REPLACE", "eval_samples", ("eval_id", *EVAL_SAMPLE_COLUMNS))
# A summary column changes only when the summary names it (`set_<column>` true), even to NULL.
FINISH_EVAL = ("UPDATE evals SET status = :status, ended = :ended, "
               + ", ".join(f"{name} = CASE WHEN :set_{name} THEN :{name} ELSE {name} END" for name in EVAL_SUMMARY_COLUMNS)
               + " WHERE id = :id")


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in the database (0 for an empty file)."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def check_sqlite_file(path: Path) -> None:
    """Refuse a one-byte file, which SQLite reads as an empty database and would overwrite with a new store.

    Other files that are not SQLite, SQLite refuses itself. Only the size is looked at: opening and closing
    the file here would drop the POSIX locks this process's connections hold on it, and SQLite would then
    read a store that another process writes as malformed.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as error:
        raise StoreError(f"cannot open run store {path}: {error.strerror or error}") from None
    if size == 1:
        raise StoreError(f"cannot open run store {path}: not a SQLite database (one byte)")


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to `target` in one immediate transaction; return the new version.

    The connection must be in autocommit mode (isolation_level None) so this function owns the transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "schema_version" not in tables:  # another program's database: leave it as it is
            raise StoreError(f"not a dreamlab run store (its tables are {', '.join(sorted(tables)[:5])})")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise StoreError(f"the run store has schema version {current}, newer than this dreamlab "
                             f"understands ({SCHEMA_VERSION}): upgrade dreamlab")
        for version in range(current, target):
            _run_script(conn, MIGRATIONS[version])
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version + 1, time.time()))
        if target == SCHEMA_VERSION:
            for table, settings in SETTINGS_COLUMNS.items():
                add_missing_columns(conn, table, settings)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return max(current, target)


def add_missing_columns(conn: sqlite3.Connection, table: str, settings: type) -> None:
    """Add a column for each field of the `settings` dataclass that `table` lacks.

    Existing rows get the field's default: they were made before the setting existed, that is with it.
    """
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    types = field_types(settings)
    for item in fields(settings):
        if item.name in present:
            continue
        value = int(item.default) if isinstance(item.default, bool) else item.default
        default = "" if value in (MISSING, None) else f" DEFAULT {value!r}"
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {item.name} {_SQL_TYPES[types[item.name]]}{default}")


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction first: run the statements one by one instead.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            conn.execute(buffer)
            buffer = ""
    if buffer.strip():
        raise StoreError(f"incomplete SQL statement in a migration: {buffer.strip()[:60]}")
