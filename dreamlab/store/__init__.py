"""The run store: runs, params, metrics, checkpoints, events and evals in one SQLite file (the only module that speaks SQL)."""

from dreamlab.store.errors import StoreError
from dreamlab.store.names import generate_run_name, validate_run_name
from dreamlab.store.records import (TERMINAL_STATUSES, Checkpoint, Comparison, EvalJob, EvalRecord, Event, MetricPoint, Progress,
                                    Run)
from dreamlab.store.runstore import DB_ENV, RunStore, default_db_path
from dreamlab.store.schema import EVAL_STATUSES, SCHEMA_VERSION, STATUSES

__all__ = [
    "DB_ENV", "EVAL_STATUSES", "EvalJob", "EvalRecord", "SCHEMA_VERSION", "STATUSES", "TERMINAL_STATUSES", "Checkpoint", "Comparison", "Event", "MetricPoint", "Progress", "Run",
    "RunStore", "StoreError", "default_db_path", "generate_run_name", "validate_run_name",
]
