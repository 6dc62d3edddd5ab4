"""The prepare report: counts of what was read, dropped and written, and token-length percentiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from dreamlab.data.lengths import RowLength

PERCENTILES = (50, 90, 99)
DROP_REASONS = ("filter", "fraction", "invalid", "over_length")


def length_summary(values: Sequence[int]) -> dict[str, int]:
    """p50 / p90 / p99 (nearest rank: always an observed length) and the max of some lengths."""
    if not values:
        return {**{f"p{q}": 0 for q in PERCENTILES}, "max": 0}
    picks = np.percentile(np.asarray(values), PERCENTILES, method="inverted_cdf")
    return {**{f"p{q}": int(v) for q, v in zip(PERCENTILES, picks)}, "max": int(max(values))}


@dataclass
class PrepareReport:
    """What `dreamlab data prepare` did; saved as FILE.report.json beside the output."""

    source: str
    format: str
    output: str
    rows_read: int = 0
    rows_written: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    truncated: int = 0
    max_length: int | None = None
    over_max_length: int = 0
    # Measured on the rows that passed conversion, filters and fraction, before any truncation.
    lengths: dict[str, dict[str, int]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def measure(self, lengths: Sequence[RowLength]) -> None:
        """Fill the length percentiles and the count over max_length from the measured rows."""
        self.lengths = {
            "prompt": length_summary([x.prompt for x in lengths]),
            "response": length_summary([x.response for x in lengths]),
            "total": length_summary([x.total for x in lengths]),
        }
        if self.max_length is not None:
            self.over_max_length = sum(x.total > self.max_length for x in lengths)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return asdict(self)


def report_tables(report: PrepareReport) -> tuple[Table, Table]:
    """Two rich tables: row counts, then token-length percentiles."""
    counts = Table(title=f"data prepare ({report.format})")
    counts.add_column("rows")
    counts.add_column("", justify="right")
    counts.add_row("rows read", str(report.rows_read))
    for reason in DROP_REASONS:
        counts.add_row(f"dropped: {reason.replace('_', '-')}", str(report.dropped[reason]))
    counts.add_row("truncated", str(report.truncated))
    limit = "no limit" if report.max_length is None else str(report.max_length)
    counts.add_row(f"over max_length ({limit})", str(report.over_max_length))
    counts.add_row("rows written", str(report.rows_written), style="bold")
    lengths = Table(title="token lengths (before truncation)")
    lengths.add_column("")
    for part in ("prompt", "response", "total"):
        lengths.add_column(part, justify="right")
    for stat in [f"p{q}" for q in PERCENTILES] + ["max"]:
        lengths.add_row(stat, *(str(report.lengths.get(part, {}).get(stat, 0)) for part in ("prompt", "response", "total")))
    return counts, lengths
