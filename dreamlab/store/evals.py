"""The run store's evaluation tables: one `evals` row per grid cell, one `eval_samples` row per sample."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from dreamlab.diffusion.settings import SamplerSettings, field_types
from dreamlab.store.errors import StoreError
from dreamlab.store.records import EvalRecord
from dreamlab.store.schema import EVAL_STATUSES

# Every setting that can change an answer; their hash is the eval's identity (resume = same hash).
# The model spec as typed counts only when there is no checkpoint path (`--run x` and `--model
# runs/x/...` name the same weights).
SAMPLER_FIELDS = tuple(field_types(SamplerSettings))
KEY_FIELDS = ("checkpoint", "task", "shots", "template_hash", *SAMPLER_FIELDS, "batch_size", "seed", "limit_n",
              "versions", "device")
# The sampler settings hashed since evals began; one added later counts only off its default, so the
# evals recorded before it keep their key (and resume).
_FIRST_SAMPLER_FIELDS = ("alg", "steps", "max_new_tokens", "temperature", "top_p", "top_k", "alg_temp", "block_length",
                         "threshold")
_SAMPLER_DEFAULTS = {f.name: f.default for f in fields(SamplerSettings)}
SETTING_FIELDS = ("run_id", "model", *KEY_FIELDS, "n_samples", "grid_id")
SAMPLE_FIELDS = ("idx", "question", "gold", "generation", "extracted", "correct", "flexible_correct",
                 "flexible_extracted", "nfe", "seconds", "leftover_masks", "unclosed_boxed", "n_boxed", "history")
SUMMARY_FIELDS = ("accuracy", "ci_low", "ci_high", "nfe_mean", "tokens_per_s", "n_done", "n_correct", "n_samples")
_RECORD_FIELDS = {f.name for f in fields(EvalRecord)}
_BOOL_FIELDS = [name for name, kind in field_types(SamplerSettings).items() if kind is bool]


def settings_key(settings: Mapping[str, Any]) -> str:
    """A stable hash of the answer-changing settings (floats as given, dicts with sorted keys)."""
    picked = {key: settings.get(key) for key in KEY_FIELDS if key in _FIRST_SAMPLER_FIELDS or key not in SAMPLER_FIELDS
              or settings.get(key, _SAMPLER_DEFAULTS[key]) != _SAMPLER_DEFAULTS[key]}
    if picked["checkpoint"] is None:
        picked["model"] = settings.get("model")
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class EvalStoreMixin:
    """Eval reads and writes; mixed into RunStore (which provides _read, _write, _resolve, db)."""

    def create_or_resume_eval(self, settings: Mapping[str, Any]) -> EvalRecord:
        """The eval row for these settings: created as running, or the existing one (running again unless completed)."""
        unknown = set(settings) - set(SETTING_FIELDS)
        if unknown:
            raise StoreError(f"unknown eval settings {sorted(unknown)}; expected some of {list(SETTING_FIELDS)}")
        if not settings.get("task"):
            raise StoreError("an eval needs a task")
        key = settings_key(settings)
        row = {name: settings.get(name) for name in SETTING_FIELDS}
        row["versions"] = json.dumps(dict(settings.get("versions") or {}), sort_keys=True)
        with self._write() as conn:  # type: ignore[attr-defined]
            if row["run_id"] is not None:
                self._resolve(int(row["run_id"]), conn)  # type: ignore[attr-defined]
            found = conn.execute("SELECT id, status FROM evals WHERE settings_key = ?", (key,)).fetchone()
            if found is None:
                columns = [*row, "settings_key", "status", "started"]
                values = [*row.values(), key, "running", time.time()]
                conn.execute(f"INSERT INTO evals ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values)
                eval_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            else:
                eval_id, status = found
                if status != "completed":
                    conn.execute("UPDATE evals SET status = 'running', ended = NULL, grid_id = COALESCE(?, grid_id), "
                                 "n_samples = COALESCE(?, n_samples) WHERE id = ?",
                                 (row["grid_id"], row["n_samples"], eval_id))
        return self.get_eval(eval_id)

    def record_eval_samples(self, eval_id: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write finished samples (keyed by idx; a rewrite replaces) and update the eval's progress, in one transaction."""
        prepared = []
        for sample in rows:
            unknown = set(sample) - set(SAMPLE_FIELDS)
            if unknown or "idx" not in sample:
                raise StoreError(f"bad eval sample: unknown fields {sorted(unknown)}" if unknown else "an eval sample needs idx")
            values = {name: sample.get(name) for name in SAMPLE_FIELDS}
            for flag in ("correct", "flexible_correct", "unclosed_boxed"):
                if values[flag] is not None:
                    values[flag] = int(bool(values[flag]))
            if values["history"] is not None and not isinstance(values["history"], str):
                values["history"] = json.dumps(values["history"])
            prepared.append((int(eval_id), *values.values()))
        columns = ", ".join(("eval_id", *SAMPLE_FIELDS))
        with self._write() as conn:  # type: ignore[attr-defined]
            if conn.execute("SELECT 1 FROM evals WHERE id = ?", (int(eval_id),)).fetchone() is None:
                raise StoreError(f"no eval with id {eval_id}")
            conn.executemany(f"INSERT OR REPLACE INTO eval_samples ({columns}) VALUES ({', '.join('?' * (len(SAMPLE_FIELDS) + 1))})",
                             prepared)
            conn.execute("UPDATE evals SET n_done = (SELECT COUNT(*) FROM eval_samples WHERE eval_id = :id), "
                         "n_correct = (SELECT COALESCE(SUM(correct), 0) FROM eval_samples WHERE eval_id = :id) "
                         "WHERE id = :id", {"id": int(eval_id)})

    def done_sample_indices(self, eval_id: int) -> set[int]:
        """The idx of every sample already recorded for this eval."""
        with self._read() as conn:  # type: ignore[attr-defined]
            return {row[0] for row in conn.execute("SELECT idx FROM eval_samples WHERE eval_id = ?", (int(eval_id),))}

    def finish_eval(self, eval_id: int, status: str, summary: Mapping[str, Any] | None = None) -> EvalRecord:
        """End an eval (completed / interrupted / failed) with its summary numbers (accuracy, CI, NFE, tokens/s)."""
        if status not in EVAL_STATUSES or status == "running":
            raise StoreError(f"cannot finish an eval as {status!r}: use completed, interrupted or failed")
        summary = dict(summary or {})
        unknown = set(summary) - set(SUMMARY_FIELDS)
        if unknown:
            raise StoreError(f"unknown eval summary fields {sorted(unknown)}; expected some of {list(SUMMARY_FIELDS)}")
        assignments = ", ".join(f"{name} = :{name}" for name in summary)
        with self._write() as conn:  # type: ignore[attr-defined]
            cursor = conn.execute(f"UPDATE evals SET status = :status, ended = :ended{', ' + assignments if assignments else ''} "
                                  "WHERE id = :id", {**summary, "status": status, "ended": time.time(), "id": int(eval_id)})
            if cursor.rowcount == 0:
                raise StoreError(f"no eval with id {eval_id}")
        return self.get_eval(eval_id)

    def get_eval(self, eval_id: int) -> EvalRecord:
        """One eval by id; StoreError if unknown."""
        with self._read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute("SELECT * FROM evals WHERE id = ?", (int(eval_id),)).fetchall()
        if not rows:
            raise StoreError(f"no eval with id {eval_id} in {self.path}")  # type: ignore[attr-defined]
        return _eval_from_row(rows[0])

    def list_evals(self, run_ref: int | str | None = None, grid_id: str | None = None,
                   checkpoint: str | None = None) -> list[EvalRecord]:
        """Evals oldest first, optionally of one run (name, prefix or id), one grid, or one checkpoint path."""
        where: list[str] = []
        args: list[Any] = []
        with self._read() as conn:  # type: ignore[attr-defined]
            if run_ref is not None:
                where.append("run_id = ?")
                args.append(self._resolve(run_ref, conn).id)  # type: ignore[attr-defined]
            if grid_id is not None:
                where.append("grid_id = ?")
                args.append(grid_id)
            if checkpoint is not None:
                where.append("checkpoint = ?")
                args.append(checkpoint)
            sql = "SELECT * FROM evals" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
            return [_eval_from_row(row) for row in conn.execute(sql, args)]

    def eval_samples(self, eval_id: int) -> list[dict[str, Any]]:
        """Every recorded sample of an eval by idx; history decoded from JSON (None when not kept)."""
        with self._read() as conn:  # type: ignore[attr-defined]
            cursor = conn.execute(f"SELECT {', '.join(SAMPLE_FIELDS)} FROM eval_samples WHERE eval_id = ? ORDER BY idx",
                                  (int(eval_id),))
            samples = [dict(zip(SAMPLE_FIELDS, row)) for row in cursor]
        for sample in samples:
            if sample["history"] is not None:
                sample["history"] = json.loads(sample["history"])
        return samples

    def best_eval_accuracy(self, run_ids: Sequence[int] | None = None) -> dict[int, float]:
        """The highest accuracy of any completed eval of each run (runs without one are absent)."""
        sql = "SELECT run_id, MAX(accuracy) FROM evals WHERE status = 'completed' AND run_id IS NOT NULL AND accuracy IS NOT NULL"
        args: list[int] = []
        if run_ids is not None:
            sql += f" AND run_id IN ({', '.join('?' * len(run_ids))})"
            args = [int(run_id) for run_id in run_ids]
        with self._read() as conn:  # type: ignore[attr-defined]
            return dict(conn.execute(sql + " GROUP BY run_id", args).fetchall())


def _eval_from_row(row: Mapping[str, Any]) -> EvalRecord:
    values = {key: row[key] for key in row.keys() if key in _RECORD_FIELDS}
    values["versions"] = json.loads(row["versions"] or "{}")
    for name in _BOOL_FIELDS:  # SQLite keeps booleans as 0 / 1
        values[name] = None if values[name] is None else bool(values[name])
    return EvalRecord(**values)
