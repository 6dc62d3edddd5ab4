"""`eval compare A B`: the same cells of two models (or two evals) side by side, with McNemar's paired test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlab.diffusion.settings import SamplerSettings, field_types
from dreamlab.evals.stats import mcnemar
from dreamlab.store import EvalRecord, RunStore, StoreError

# The settings two evals must share to be the same cell of a comparison (the model is what differs).
CELL_FIELDS = ("task", "shots", "template_hash", *field_types(SamplerSettings), "seed", "limit_n")


@dataclass(frozen=True)
class CellComparison:
    """One pair of evals scored on their shared samples."""

    a: EvalRecord
    b: EvalRecord
    shared: int
    accuracy_a: float | None
    accuracy_b: float | None
    both: int
    only_a: int
    only_b: int
    p_value: float
    method: str
    differs: dict[str, tuple[Any, Any]]

    @property
    def difference(self) -> float | None:
        """Accuracy of B minus accuracy of A on the shared samples."""
        if self.accuracy_a is None or self.accuracy_b is None:
            return None
        return self.accuracy_b - self.accuracy_a

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"a": self.a.id, "b": self.b.id, "cell": {key: getattr(self.a, key) for key in CELL_FIELDS},
                "shared": self.shared, "accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b,
                "difference": self.difference, "both_correct": self.both, "only_a": self.only_a, "only_b": self.only_b,
                "p_value": self.p_value, "method": self.method,
                "differs": {key: list(values) for key, values in self.differs.items()}}


def resolve(store: RunStore, ref: str) -> list[EvalRecord]:
    """The evals a reference names: `eval:N` or a bare number (an eval id), a model / checkpoint path, or a run."""
    text = ref.strip()
    number = text.removeprefix("eval:")
    if number.isdigit():
        return [store.get_eval(int(number))]
    path = Path(text).expanduser()
    if path.exists():
        found = [e for e in store.list_evals(checkpoint=str(path.resolve()))]
        found += [e for e in store.list_evals() if e.checkpoint is None and e.model == text and e not in found]
        if not found:
            raise StoreError(f"no evals of {text} in {store.path}: run `dreamlab eval --model {text}` first")
        return found
    found = store.list_evals(run_ref=text.removeprefix("run:"))
    if not found:
        raise StoreError(f"run {text} has no evals yet: run `dreamlab eval --run {text}` first")
    return found


def _cell(record: EvalRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, key) for key in CELL_FIELDS)


def pair(a: list[EvalRecord], b: list[EvalRecord]) -> list[tuple[EvalRecord, EvalRecord]]:
    """Matching cells: two single evals pair as they are; otherwise by CELL_FIELDS (the newest eval of each cell)."""
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])]
    newest_b = {_cell(record): record for record in b}
    newest_a = {_cell(record): record for record in a}
    pairs = [(record, newest_b[key]) for key, record in newest_a.items() if key in newest_b]
    if not pairs:
        raise StoreError("the two sides share no cell (same task, shots, template and sampler settings): "
                         "evaluate both with the same flags, or compare two eval ids")
    return pairs


def compare_pair(store: RunStore, a: EvalRecord, b: EvalRecord) -> CellComparison:
    """Accuracies on the samples both evals judged, and McNemar's p-value on their discordant pairs.

    A sample without a verdict (an lm-eval task scored by BLEU or F1 through the bridge) is left out, not counted wrong.
    """
    verdict_a = {s["idx"]: bool(s["correct"]) for s in store.eval_samples(a.id) if s["correct"] is not None}
    verdict_b = {s["idx"]: bool(s["correct"]) for s in store.eval_samples(b.id) if s["correct"] is not None}
    shared = sorted(set(verdict_a) & set(verdict_b))
    both = sum(verdict_a[i] and verdict_b[i] for i in shared)
    only_a = sum(verdict_a[i] and not verdict_b[i] for i in shared)
    only_b = sum(verdict_b[i] and not verdict_a[i] for i in shared)
    p_value, method = mcnemar(only_a, only_b)
    fields = ("checkpoint", "model", *CELL_FIELDS, "batch_size", "device", "dtype")
    differs = {key: (getattr(a, key), getattr(b, key)) for key in fields if getattr(a, key) != getattr(b, key)}
    count = len(shared)
    return CellComparison(a=a, b=b, shared=count, accuracy_a=(both + only_a) / count if count else None,
                          accuracy_b=(both + only_b) / count if count else None, both=both, only_a=only_a,
                          only_b=only_b, p_value=p_value, method=method, differs=differs)


def compare(store: RunStore, ref_a: str, ref_b: str) -> list[CellComparison]:
    """Every shared cell of A and B, compared."""
    return [compare_pair(store, a, b) for a, b in pair(resolve(store, ref_a), resolve(store, ref_b))]
