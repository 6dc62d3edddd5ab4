"""The store under load (the CI-sized run of bench/store_load.py): no locked errors, no lost or duplicated rows."""

from __future__ import annotations

import pytest

from bench.store_load import run_load

pytestmark = pytest.mark.slow


def test_eight_writers_and_console_readers_for_ten_seconds_lose_nothing(tmp_path):
    report = run_load(tmp_path / "runs" / "dreamlab.db", seconds=10, writers=8, readers=2)
    assert report["locked_errors"] == 0 and report["other_errors"] == [], report
    assert report["metric_rows_committed"] > 0 and report["sample_rows_committed"] > 0
    assert report["metric_rows_stored"] == report["metric_rows_distinct"] == report["metric_rows_committed"]
    assert report["sample_rows_stored"] == report["sample_rows_distinct"] == report["sample_rows_committed"]
    assert set(report["lost_per_writer"].values()) == {0} and len(report["lost_per_writer"]) == 8
    assert report["reader_refreshes"] > 0 and report["integrity"] == "ok"
