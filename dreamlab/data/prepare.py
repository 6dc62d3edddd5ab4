"""The `data prepare` pipeline: read, convert, filter, subsample, fit max_length, order, write."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from dreamlab.data.errors import DataError, InvalidRow
from dreamlab.data.formats import CONVERTERS, TRAJECTORIES, ConvertOptions, DreamRow, resolve_format
from dreamlab.data.lengths import TRUNCATIONS, LengthCounter, RowLength
from dreamlab.data.output import check_output_path, write_json, write_rows
from dreamlab.data.report import PrepareReport
from dreamlab.data.sources import SourceRow, read_source

ORDERS = ("original", "shuffle", "curriculum")
ON_INVALID = ("error", "drop")

# progress(stage, total) returns a function that advances that stage by n items.
Progress = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class RowFilter:
    """One `--where field=value` (or `field!=value`) test on a row's meta, then its source record."""

    field: str
    value: str
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        """Parse `field=value` or `field!=value`."""
        name, sep, value = text.partition("!=") if "!=" in text else text.partition("=")
        if not sep or not name.strip():
            raise DataError(f"--where {text!r}: expected FIELD=VALUE or FIELD!=VALUE")
        return cls(name.strip(), value.strip(), negate=sep == "!=")

    def __str__(self) -> str:
        return f"{self.field}{'!=' if self.negate else '='}{self.value}"

    def lookup(self, row: DreamRow, source: SourceRow) -> Any:
        """The field's value: meta first, then the source record; None when neither has it."""
        return row.meta.get(self.field, source.record.get(self.field))

    def matches(self, row: DreamRow, source: SourceRow) -> bool:
        """Compare as text, so `difficulty=3` matches the number 3."""
        value = self.lookup(row, source)
        return (value is not None and str(value) == self.value) != self.negate


@dataclass(frozen=True)
class PrepareOptions:
    """Every choice `dreamlab data prepare` takes, validated together."""

    format: str = "auto"
    convert: ConvertOptions = field(default_factory=ConvertOptions)
    where: tuple[str, ...] = ()
    fraction: float = 1.0
    seed: int = 0
    order: str = "original"
    curriculum_by: str = "tokens"
    max_length: int | None = None
    truncation: str = "error"
    on_invalid: str = "error"
    split: str = "train"
    subset: str | None = None

    def validate(self) -> None:
        """Refuse impossible settings before any work starts."""
        choices = {"--order": (self.order, ORDERS), "--truncation": (self.truncation, TRUNCATIONS),
                   "--on-invalid": (self.on_invalid, ON_INVALID),
                   "--trajectory": (self.convert.trajectory, TRAJECTORIES)}
        for option, (value, allowed) in choices.items():
            if value not in allowed:
                raise DataError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
        if not 0.0 < self.fraction <= 1.0:
            raise DataError(f"--fraction {self.fraction}: must be in (0, 1]")
        if self.max_length is not None and self.max_length < 1:
            raise DataError(f"--max-length {self.max_length}: must be at least 1")
        for text in self.where:
            RowFilter.parse(text)

    def as_record(self) -> dict[str, Any]:
        """The options as saved in the report."""
        return {"format": self.format, "system": self.convert.system, "trajectory": self.convert.trajectory,
                "strip_calculator": self.convert.strip_calculator, "where": list(self.where),
                "fraction": self.fraction, "seed": self.seed, "order": self.order,
                "curriculum_by": self.curriculum_by, "max_length": self.max_length,
                "truncation": self.truncation, "on_invalid": self.on_invalid, "split": self.split,
                "subset": self.subset}


def prepare(source: str, out: Path, options: PrepareOptions, tokenizer: PreTrainedTokenizerBase,
            tokenizer_name: str = "tiny", progress: Progress | None = None) -> PrepareReport:
    """Convert SOURCE into Dream SFT rows at OUT (and OUT.report.json); return the report."""
    options.validate()
    check_output_path(out)
    counter = LengthCounter(tokenizer)
    progress = progress or (lambda stage, total: lambda n: None)
    records = read_source(source, split=options.split, subset=options.subset)
    name = resolve_format(options.format, set(records[0].record))
    report = PrepareReport(source=source, format=name, output=str(out), rows_read=len(records),
                           max_length=options.max_length,
                           options={**options.as_record(), "tokenizer": tokenizer_name})

    pairs = _convert(records, name, options, report, progress("converting", len(records)))
    pairs = _filter(pairs, [RowFilter.parse(text) for text in options.where], report)
    pairs = _subsample(pairs, options.fraction, options.seed, report)
    rows, wheres = [row for row, _ in pairs], [record.where for _, record in pairs]
    lengths = counter.count(rows, progress("tokenising", len(rows)))
    report.measure(lengths)
    rows, lengths = _fit(rows, wheres, lengths, counter, options, report)
    rows = _order(rows, lengths, options)

    write_rows([row.as_record() for row in rows], out)
    report.rows_written = len(rows)
    write_json(report.as_dict(), report_path(out))
    return report


def report_path(out: Path) -> Path:
    """Where the report of an output file goes: FILE.report.json beside it."""
    return out.with_name(out.name + ".report.json")


def _convert(records: Sequence[SourceRow], name: str, options: PrepareOptions, report: PrepareReport,
             advance: Callable[[int], None]) -> list[tuple[DreamRow, SourceRow]]:
    converter = CONVERTERS[name]
    pairs = []
    for record in records:
        try:
            pairs.append((converter(record, options.convert), record))
        except InvalidRow:
            if options.on_invalid == "error":
                raise
            report.dropped["invalid"] += 1
        advance(1)
    if not pairs:
        raise DataError(f"no valid rows: all {len(records)} rows are invalid for format {name}")
    return pairs


def _filter(pairs: list[tuple[DreamRow, SourceRow]], filters: list[RowFilter],
            report: PrepareReport) -> list[tuple[DreamRow, SourceRow]]:
    for row_filter in filters:
        if all(row_filter.lookup(row, record) is None for row, record in pairs):
            known = sorted({key for row, record in pairs for key in (*row.meta, *record.record)})
            raise DataError(f"--where {row_filter.field}: no row has that field (fields: {', '.join(known)})")
    kept = [(row, record) for row, record in pairs if all(f.matches(row, record) for f in filters)]
    if not kept:
        raise DataError("no row matches " + " ".join(f"--where {f}" for f in filters))
    report.dropped["filter"] = len(pairs) - len(kept)
    return kept


def _subsample(pairs: list[tuple[DreamRow, SourceRow]], fraction: float, seed: int,
               report: PrepareReport) -> list[tuple[DreamRow, SourceRow]]:
    """A seeded sample of round(fraction * n) rows (at least one), kept in their original order."""
    if fraction >= 1.0:
        return pairs
    size = max(1, round(fraction * len(pairs)))
    chosen = sorted(random.Random(seed).sample(range(len(pairs)), size))
    report.dropped["fraction"] = len(pairs) - size
    return [pairs[i] for i in chosen]


def _fit(rows: list[DreamRow], wheres: list[str], lengths: list[RowLength], counter: LengthCounter, options: PrepareOptions,
         report: PrepareReport) -> tuple[list[DreamRow], list[RowLength]]:
    limit = options.max_length
    if limit is None:
        return rows, lengths
    over = [i for i, length in enumerate(lengths) if length.total > limit]
    if over and options.truncation == "error":
        length = lengths[over[0]]
        more = f" (and {len(over) - 1} more row{'s' if len(over) > 2 else ''})" if len(over) > 1 else ""
        raise DataError(
            f"{wheres[over[0]]}: {length.total} tokens (prompt {length.prompt} + response "
            f"{length.response}), over --max-length {limit}{more}; pass --truncation drop, left or right"
        )
    fitted_rows, fitted_lengths = [], []
    for row, length in zip(rows, lengths):
        if length.total > limit:
            cut = None if options.truncation == "drop" else counter.truncate(row, length, limit, options.truncation)
            if cut is None:
                report.dropped["over_length"] += 1
                continue
            row, length = cut, counter.count([cut])[0]
            report.truncated += 1
        fitted_rows.append(row)
        fitted_lengths.append(length)
    if not fitted_rows:
        raise DataError(f"--max-length {limit} drops every row: the shortest is {min(x.total for x in lengths)} tokens")
    return fitted_rows, fitted_lengths


def _order(rows: list[DreamRow], lengths: list[RowLength], options: PrepareOptions) -> list[DreamRow]:
    if options.order == "original":
        return rows
    if options.order == "shuffle":
        shuffled = list(rows)
        random.Random(options.seed).shuffle(shuffled)
        return shuffled
    # Curriculum: short (or easy) first; the sort is stable, so ties keep the original order.
    if options.curriculum_by == "tokens":
        keys = [length.total for length in lengths]
    else:
        missing = [row.meta["index"] for row in rows if row.meta.get(options.curriculum_by) is None]
        if missing:
            raise DataError(f"--curriculum-by {options.curriculum_by}: row {missing[0]} has no such meta field")
        keys = [row.meta[options.curriculum_by] for row in rows]
    try:
        return [row for _, row in sorted(zip(keys, rows), key=lambda pair: pair[0])]
    except TypeError:
        raise DataError(f"--curriculum-by {options.curriculum_by}: its values do not compare (mixed types)") from None
