"""The run store's evaluation tables: one `evals` row per grid cell, one `eval_samples` row per sample."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol

from dreamlab.diffusion.settings import SamplerSettings, field_types
from dreamlab.store.errors import StoreError
from dreamlab.store.records import EvalRecord, Run
from dreamlab.store.schema import (EVAL_SAMPLE_COLUMNS, EVAL_SETTING_COLUMNS, EVAL_STATUSES, EVAL_SUMMARY_COLUMNS,
                                   FINISH_EVAL, INSERT_EVAL, INSERT_EVAL_SAMPLE)

# Every setting that can change an answer; their hash is the eval's identity (resume = same hash).
# The model spec as typed counts only when there is no checkpoint path (`--run x` and `--model
# runs/x/...` name the same weights).
SAMPLER_FIELDS = tuple(field_types(SamplerSettings))
# template and add_bos are in template_hash already (added to the key they would change every older eval's key).
KEY_FIELDS = tuple(name for name in EVAL_SETTING_COLUMNS
                   if name not in ("run_id", "model", "n_samples", "grid_id", "template", "add_bos"))
# The sampler settings hashed since evals began; one added later counts only off its default, so the
# evals recorded before it keep their key (and resume).
_FIRST_SAMPLER_FIELDS = ("alg", "steps", "max_new_tokens", "temperature", "top_p", "top_k", "alg_temp", "block_length",
                         "threshold")
_SAMPLER_DEFAULTS = {f.name: f.default for f in fields(SamplerSettings)}
# Other settings added to the key later, with the values that leave it as it was (float32 is what every
# CPU eval ran in; a GPU eval recorded before v10 ran in bfloat16 unrecorded and does not resume into a new one).
_LATER_KEY_FIELDS = {"dtype": (None, "float32")}
# Optional filters are NULL parameters and lists travel as one JSON array (as in runstore).
_LIST_EVALS = """SELECT * FROM evals WHERE (:run_id IS NULL OR run_id = :run_id)
    AND (:grid_id IS NULL OR grid_id = :grid_id) AND (:checkpoint IS NULL OR checkpoint = :checkpoint) ORDER BY id"""
_BEST_ACCURACY = """SELECT run_id, MAX(accuracy) FROM evals
    WHERE status = 'completed' AND run_id IS NOT NULL AND accuracy IS NOT NULL
    AND (:run_ids IS NULL OR run_id IN (SELECT value FROM json_each(:run_ids))) GROUP BY run_id"""
_RECORD_FIELDS = {f.name for f in fields(EvalRecord)}
_JSON_SAMPLE_FIELDS = ("history", "metrics")
_BOOL_FIELDS = [name for name, kind in field_types(SamplerSettings).items() if kind is bool]


def settings_key(settings: Mapping[str, Any]) -> str:
    """A stable hash of the answer-changing settings (floats as given, dicts with sorted keys)."""
    picked = {key: settings.get(key) for key in KEY_FIELDS if key in _FIRST_SAMPLER_FIELDS or key not in SAMPLER_FIELDS
              or settings.get(key, _SAMPLER_DEFAULTS[key]) != _SAMPLER_DEFAULTS[key]}
    for key, neutral in _LATER_KEY_FIELDS.items():
        if picked.get(key) in neutral:
            del picked[key]
    if picked["checkpoint"] is None:
        picked["model"] = settings.get("model")
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class StoreCore(Protocol):
    """What the eval methods need of the store that holds them (RunStore)."""

    path: Path

    def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def _resolve(self, ref: int | str, conn: sqlite3.Connection) -> Run: ...


class EvalStoreMixin:
    """Eval reads and writes of a StoreCore; mixed into RunStore."""

    def create_or_resume_eval(self: StoreCore, settings: Mapping[str, Any]) -> EvalRecord:
        """The eval row for these settings: created as running, or the existing one (running again unless completed)."""
        unknown = set(settings) - set(EVAL_SETTING_COLUMNS)
        if unknown:
            raise StoreError(f"unknown eval settings {sorted(unknown)}; expected some of {list(EVAL_SETTING_COLUMNS)}")
        if not settings.get("task"):
            raise StoreError("an eval needs a task")
        key = settings_key(settings)
        row = {name: settings.get(name) for name in EVAL_SETTING_COLUMNS}
        row["versions"] = json.dumps(dict(settings.get("versions") or {}), sort_keys=True)
        row["add_bos"] = None if row["add_bos"] is None else int(bool(row["add_bos"]))
        with self._write() as conn:
            if row["run_id"] is not None:
                self._resolve(int(row["run_id"]), conn)
            found = conn.execute("SELECT id, status FROM evals WHERE settings_key = ?", (key,)).fetchone()
            if found is None:
                conn.execute(INSERT_EVAL, {**row, "settings_key": key, "status": "running", "started": time.time()})
                eval_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            else:
                eval_id, status = found
                # A completed cell joins the new grid too: the grid (and its job) are every cell this eval covers.
                conn.execute("UPDATE evals SET grid_id = COALESCE(?, grid_id) WHERE id = ?", (row["grid_id"], eval_id))
                if status != "completed":
                    conn.execute("UPDATE evals SET status = 'running', ended = NULL, "
                                 "n_samples = COALESCE(?, n_samples) WHERE id = ?", (row["n_samples"], eval_id))
        return _get_eval(self, eval_id)

    def record_eval_samples(self: StoreCore, eval_id: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write finished samples (keyed by idx; a rewrite replaces) and update the eval's progress, in one transaction."""
        prepared = []
        for sample in rows:
            unknown = set(sample) - set(EVAL_SAMPLE_COLUMNS)
            if unknown or "idx" not in sample:
                raise StoreError(f"bad eval sample: unknown fields {sorted(unknown)}" if unknown else "an eval sample needs idx")
            values = {name: sample.get(name) for name in EVAL_SAMPLE_COLUMNS}
            for flag in ("correct", "flexible_correct", "strict_correct", "unclosed_boxed"):
                if values[flag] is not None:
                    values[flag] = int(bool(values[flag]))
            for name in _JSON_SAMPLE_FIELDS:
                if values[name] is not None and not isinstance(values[name], str):
                    values[name] = json.dumps(values[name])
            prepared.append({"eval_id": int(eval_id), **values})
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM evals WHERE id = ?", (int(eval_id),)).fetchone() is None:
                raise StoreError(f"no eval with id {eval_id}")
            conn.executemany(INSERT_EVAL_SAMPLE, prepared)
            conn.execute("UPDATE evals SET n_done = (SELECT COUNT(*) FROM eval_samples WHERE eval_id = :id), "
                         "n_correct = (SELECT COALESCE(SUM(correct), 0) FROM eval_samples WHERE eval_id = :id) "
                         "WHERE id = :id", {"id": int(eval_id)})

    def done_sample_indices(self: StoreCore, eval_id: int) -> set[int]:
        """The idx of every sample already recorded for this eval."""
        with self._read() as conn:
            return {row[0] for row in conn.execute("SELECT idx FROM eval_samples WHERE eval_id = ?", (int(eval_id),))}

    def finish_eval(self: StoreCore, eval_id: int, status: str, summary: Mapping[str, Any] | None = None) -> EvalRecord:
        """End an eval (completed / interrupted / failed) with its summary numbers (accuracy, CI, NFE, tokens/s)."""
        if status not in EVAL_STATUSES or status == "running":
            raise StoreError(f"cannot finish an eval as {status!r}: use completed, interrupted or failed")
        summary = dict(summary or {})
        if summary.get("metrics") is not None and not isinstance(summary["metrics"], str):
            summary["metrics"] = json.dumps(summary["metrics"], sort_keys=True)
        unknown = set(summary) - set(EVAL_SUMMARY_COLUMNS)
        if unknown:
            raise StoreError(f"unknown eval summary fields {sorted(unknown)}; expected some of {list(EVAL_SUMMARY_COLUMNS)}")
        args = {"status": status, "ended": time.time(), "id": int(eval_id)}
        for name in EVAL_SUMMARY_COLUMNS:
            args[name], args[f"set_{name}"] = summary.get(name), name in summary
        with self._write() as conn:
            if conn.execute(FINISH_EVAL, args).rowcount == 0:
                raise StoreError(f"no eval with id {eval_id}")
        return _get_eval(self, eval_id)

    def find_eval(self: StoreCore, key: str) -> EvalRecord:
        """The eval with this settings key (`settings_key` of its settings); StoreError if none."""
        with self._read() as conn:
            row = conn.execute("SELECT id FROM evals WHERE settings_key = ?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"no eval with settings key {key} in {self.path}")
        return _get_eval(self, row[0])

    def get_eval(self: StoreCore, eval_id: int) -> EvalRecord:
        """One eval by id; StoreError if unknown."""
        return _get_eval(self, eval_id)

    def list_evals(self: StoreCore, run_ref: int | str | None = None, grid_id: str | None = None,
                   checkpoint: str | None = None) -> list[EvalRecord]:
        """Evals oldest first, optionally of one run (name, prefix or id), one grid, or one checkpoint path."""
        with self._read() as conn:
            run_id = None if run_ref is None else self._resolve(run_ref, conn).id
            rows = conn.execute(_LIST_EVALS, {"run_id": run_id, "grid_id": grid_id, "checkpoint": checkpoint})
            return [_eval_from_row(row) for row in rows]

    def eval_samples(self: StoreCore, eval_id: int) -> list[dict[str, Any]]:
        """Every recorded sample of an eval by idx; history and metrics decoded from JSON (None when not kept)."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM eval_samples WHERE eval_id = ? ORDER BY idx", (int(eval_id),))
            samples = [{name: row[name] for name in EVAL_SAMPLE_COLUMNS} for row in rows]
        for sample in samples:
            for name in _JSON_SAMPLE_FIELDS:
                if sample[name] is not None:
                    sample[name] = json.loads(sample[name])
        return samples

    def best_eval_accuracy(self: StoreCore, run_ids: Sequence[int] | None = None) -> dict[int, float]:
        """The highest accuracy of any completed eval of each run (runs without one are absent)."""
        run_list = None if run_ids is None else json.dumps([int(run_id) for run_id in run_ids])
        with self._read() as conn:
            return dict(conn.execute(_BEST_ACCURACY, {"run_ids": run_list}).fetchall())


def _get_eval(store: StoreCore, eval_id: int) -> EvalRecord:
    with store._read() as conn:
        row = conn.execute("SELECT * FROM evals WHERE id = ?", (int(eval_id),)).fetchone()
    if row is None:
        raise StoreError(f"no eval with id {eval_id} in {store.path}")
    return _eval_from_row(row)


def _eval_from_row(row: Mapping[str, Any]) -> EvalRecord:
    values = {key: row[key] for key in row.keys() if key in _RECORD_FIELDS}
    values["versions"] = json.loads(row["versions"] or "{}")
    values["metrics"] = None if row["metrics"] is None else json.loads(row["metrics"])
    for name in (*_BOOL_FIELDS, "add_bos"):  # SQLite keeps booleans as 0 / 1
        values[name] = None if values[name] is None else bool(values[name])
    return EvalRecord(**values)
