"""The eval harness: prompts tokenized once, a grid of sampler settings, batched generation, scoring, the store.

Each grid cell is one `evals` row keyed by every answer-changing setting; each sample is written
as soon as its batch is scored, so an interrupted eval resumes with the samples it has not done.
Row r of a batch samples with seed + idx and the sampler's reveal counts are per row, so a
sample's tokens do not depend on its batch neighbours: batches are formed by prompt length (less
padding) and batch size is a speed setting. Under torchrun, dreamlab.evals.sharding deals a cell's
batches over the ranks (the `rounds` hook) and records the gathered rows on rank 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from dreamlab.diffusion.sampler import generate
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.evals.batching import AUTO, BatchSize, length_batches, run_in_batches
from dreamlab.evals.grid import cell_label
from dreamlab.evals.scoring import score_generation
from dreamlab.evals.stats import summarize
from dreamlab.evals.tasks import Sample, Task

HISTORY_SAMPLES = 4  # --history keeps the per-step sequences of this many samples (the first by idx)


@dataclass
class EvalPlan:
    """Everything one `dreamlab eval` invocation evaluates: one task and template, many cells."""

    task: Task
    samples: list[Sample]
    template: str
    shots: int
    cells: list[SamplerSettings]
    model: str
    batch_size: BatchSize = 16  # or "auto" (evals/batching.py)
    seed: int = 0
    limit: int | None = None
    checkpoint: str | None = None
    run_id: int | None = None
    history: bool = False
    grid_id: str | None = None
    task_label: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    add_bos: bool | None = None  # None: the task's prompt.add_bos

    @property
    def bos(self) -> bool:
        """Whether every prompt starts with the tokenizer's BOS."""
        return self.task.bos_for(self.template, self.add_bos)

    def settings(self, cell: SamplerSettings, device: str, dtype: str | None = None) -> dict[str, Any]:
        """The store's eval settings for one cell (batch_size None: auto, the size used is recorded at the end)."""
        return {"run_id": self.run_id, "checkpoint": self.checkpoint, "model": self.model,
                "task": self.task_label or self.task.name, "shots": self.shots, "template": self.template,
                "add_bos": self.bos, "template_hash": self.task.template_hash(self.template, self.shots, self.bos),
                **asdict(cell),
                "batch_size": None if self.batch_size == AUTO else self.batch_size, "seed": self.seed,
                "limit_n": self.limit, "versions": self.versions, "device": device, "dtype": dtype,
                "n_samples": len(self.samples), "grid_id": self.grid_id}


class Progress(Protocol):
    """What the harness reports while it runs (the CLI draws a rich progress bar from it)."""

    def start_cell(self, label: str, total: int, done: int) -> None: ...
    def advance(self, count: int) -> None: ...
    def end_cell(self, record: Any) -> None: ...


Work = Callable[[list[Sample]], list[dict[str, Any]]]
# How a data-parallel cell's batches become recorded rows: dealt over torchrun's ranks and gathered to rank 0
# by dreamlab.evals.sharding. Without it a cell runs here, batch after batch (with auto's out-of-memory back-off).
Rounds = Callable[[SamplerSettings, list[list[Sample]], Work], Iterable[list[dict[str, Any]]]]


def history_indices(plan: EvalPlan) -> set[int]:
    """The samples whose per-step sequences --history keeps."""
    return {s.idx for s in sorted(plan.samples, key=lambda s: s.idx)[:HISTORY_SAMPLES]} if plan.history else set()


def device_label(model: torch.nn.Module) -> str:
    """`cpu`, or `cuda:0 (GPU name)`."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def dtype_label(model: torch.nn.Module) -> str:
    """The parameters' dtype without the `torch.` prefix: `float32`, `bfloat16`."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def cut_at_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    """The ids before the first EOS (the sampler fills the tail with EOS)."""
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def answer_tokens(tokenizer: Any, ids: list[int], generation: str, cut_at: int | None) -> int:
    """How many generated ids the answer keeps: all of `ids` (already cut at EOS), or those wholly before a stop cut.

    `generation` is `tokenizer.decode(ids)`. The count is of the ids the sampler produced, not of a
    re-encoding of the kept text (which can differ: a word spelled out in pieces, a non-canonical split).
    """
    if cut_at is None:
        return len(ids)
    kept, low, high = generation[:cut_at], 0, len(ids)
    while low < high:  # the most ids whose decoded text is a prefix of the kept text
        middle = (low + high + 1) // 2
        if kept.startswith(tokenizer.decode(ids[:middle])):
            low = middle
        else:
            high = middle - 1
    return low


def tokenize_prompts(task: Task, tokenizer: Any, samples: Sequence[Sample], template: str, shots: int,
                     add_bos: bool = False) -> dict[int, list[int]]:
    """Each sample's prompt ids (by idx), rendered once for the whole grid; BOS first when `add_bos`."""
    bos = []
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError(f"task {task.name} starts prompts with BOS (prompt.add_bos) but the tokenizer has no BOS "
                             "token: pass --no-bos")
        bos = [tokenizer.bos_token_id]
    return {s.idx: bos + tokenizer(task.render(s.question, tokenizer, template, shots), add_special_tokens=False).input_ids
            for s in samples}


def check_context(model: torch.nn.Module, prompts: dict[int, list[int]], cells: Sequence[SamplerSettings]) -> None:
    """Refuse before anything runs when the longest prompt plus max_new_tokens does not fit the model."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if context is None or not prompts:
        return
    longest = max(len(ids) for ids in prompts.values())
    widest = max(cell.max_new_tokens for cell in cells)
    if longest + widest > context:
        raise ValueError(f"the longest prompt ({longest} tokens) + max_new_tokens ({widest}) exceeds the model's "
                         f"context of {context}: use fewer --shots, a smaller --max-new-tokens or a bigger model")


@torch.no_grad()
def generate_and_score(model: torch.nn.Module, tokenizer: Any, task: Task, batch: Sequence[Sample],
                       prompts: dict[int, list[int]], cell: SamplerSettings, seed: int, history_for: set[int] = frozenset()) -> list[dict[str, Any]]:
    """Generate one left-padded batch, then score each sample in this (main) thread; rows for the store."""
    device = next(model.parameters()).device
    width = max(len(prompts[s.idx]) for s in batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(prompts[s.idx])) + prompts[s.idx] for s in batch], device=device)
    attention = torch.tensor([[0] * (width - len(prompts[s.idx])) + [1] * len(prompts[s.idx]) for s in batch], device=device)
    keep_history = any(s.idx in history_for for s in batch)
    started = time.perf_counter()
    out = generate(model, input_ids, attention, **asdict(cell), seed=[seed + s.idx for s in batch],
                   return_history=keep_history)
    seconds = (time.perf_counter() - started) / len(batch)
    mask_id = getattr(model.config, "mask_token_id", None)
    rows = []
    for row, sample in enumerate(batch):
        ids = cut_at_eos(tokenizer, out.sequences[row, width:].tolist())
        generation = tokenizer.decode(ids)
        score = score_generation(generation, sample.gold, extractor=task.extractor, scorer=task.scorer,
                                 numeric=task.numeric, mask_token=tokenizer.mask_token, until=task.until,
                                 lm_eval=task.lm_eval, reference=sample.reference)
        # A row's own model calls (what it costs alone: the sampler is batch-invariant) and answer length:
        # up to EOS, or to a stop string's cut (what lm-eval would keep), never the padding.
        record = {"idx": sample.idx, "question": sample.question, "gold": sample.gold, "generation": generation,
                  **score.as_row(), "nfe": out.row_nfe[row] if out.row_nfe else out.nfe, "seconds": seconds,
                  "history": None, "answer_tokens": answer_tokens(tokenizer, ids, generation, score.cut_at)}
        record["leftover_masks"] = max(record["leftover_masks"], ids.count(mask_id) if mask_id is not None else 0)
        if keep_history and sample.idx in history_for:
            record["history"] = [step[row, width:].tolist() for step in out.history or []]
        rows.append(record)
    return rows


def run_cell(store: Any, model: torch.nn.Module, tokenizer: Any, plan: EvalPlan, cell: SamplerSettings,
             prompts: dict[int, list[int]], progress: Progress, device: str,
             on_backoff: Callable[[int, int], None] | None = None, rounds: Rounds | None = None) -> Any:
    """Evaluate one cell into its store row, skipping samples already recorded; returns the finished EvalRecord."""
    record = store.create_or_resume_eval(plan.settings(cell, device, dtype_label(model)))
    label = cell_label(cell)
    if record.status == "completed":
        progress.start_cell(label, len(plan.samples), len(plan.samples))
        progress.end_cell(record)
        return record
    done = store.done_sample_indices(record.id)
    history_for = history_indices(plan)
    progress.start_cell(label, len(plan.samples), len(done & {s.idx for s in plan.samples}))

    def pending() -> list[Sample]:
        recorded = store.done_sample_indices(record.id)
        return [s for s in plan.samples if s.idx not in recorded]

    def work(batch: list[Sample]) -> list[dict[str, Any]]:
        return generate_and_score(model, tokenizer, plan.task, batch, prompts, cell, plan.seed, history_for)

    def handle(batch: list[Sample]) -> None:
        store.record_eval_samples(record.id, work(batch))
        progress.advance(len(batch))

    used = None
    try:
        if rounds is None:
            used = run_in_batches(pending, handle, prompts, plan.batch_size, next(model.parameters()).device, on_backoff)
        else:
            if not isinstance(plan.batch_size, int):
                raise ValueError("--batch-size auto runs in one process: give data-parallel evals a number")
            for rows in rounds(cell, length_batches(pending(), prompts, plan.batch_size), work):
                store.record_eval_samples(record.id, rows)
                progress.advance(len(rows))
            used = plan.batch_size
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        store.finish_eval(record.id, status, _summary(store, record.id, cell, plan, used))
        raise
    finished = store.finish_eval(record.id, "completed", _summary(store, record.id, cell, plan, used))
    progress.end_cell(finished)
    return finished


def _summary(store: Any, eval_id: int, cell: SamplerSettings, plan: EvalPlan, used: int | None) -> dict[str, Any]:
    summary = summarize(store.eval_samples(eval_id), cell.max_new_tokens, len(plan.samples))
    if used is not None:  # a resumed cell with nothing left keeps the size its batches ran at
        summary["batch_size_used"] = used
    return summary


def run_plan(store: Any, model: torch.nn.Module, tokenizer: Any, plan: EvalPlan, progress: Progress,
             on_backoff: Callable[[int, int], None] | None = None, rounds: Rounds | None = None) -> list[Any]:
    """Every cell of the plan with the model loaded once; returns the EvalRecords in grid order."""
    prompts = tokenize_prompts(plan.task, tokenizer, plan.samples, plan.template, plan.shots, plan.bos)
    check_context(model, prompts, plan.cells)
    device = device_label(model)
    return [run_cell(store, model, tokenizer, plan, cell, prompts, progress, device, on_backoff, rounds)
            for cell in plan.cells]


def evaluate_in_memory(model: torch.nn.Module, tokenizer: Any, task: Task, samples: Sequence[Sample], cell: SamplerSettings, *,
                       template: str | None = None, shots: int | None = None, batch_size: BatchSize = 64,
                       seed: int = 0, add_bos: bool | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score a model without a store (benchmarks, notebooks): the summary (with batch_size_used) and the per-sample rows."""
    template, shots = task.prompt_shape(template, shots)
    prompts = tokenize_prompts(task, tokenizer, samples, template, shots, task.bos_for(template, add_bos))
    check_context(model, prompts, [cell])
    rows: list[dict[str, Any]] = []

    def pending() -> list[Sample]:
        finished = {row["idx"] for row in rows}
        return [s for s in samples if s.idx not in finished]

    def handle(batch: list[Sample]) -> None:
        rows.extend(generate_and_score(model, tokenizer, task, batch, prompts, cell, seed))

    used = run_in_batches(pending, handle, prompts, batch_size, next(model.parameters()).device)
    rows.sort(key=lambda row: row["idx"])
    return {**summarize(rows, cell.max_new_tokens, len(samples)), "batch_size_used": used}, rows
