"""Eval batches: bucketing by prompt length, `--batch-size auto` and its out-of-memory back-off, the recorded speed."""

from __future__ import annotations

import platform
import re

import pytest
import torch
from rich.console import Console

from dreamlab.cpu_memory import keep_freed_memory
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.evals.batching import (AUTO, CPU_AUTO_BATCH_SIZE, length_batches, padding_count, parse_batch_size,
                                     run_in_batches, starting_batch_size)
from dreamlab.evals.frontier import frontier_table
from dreamlab.evals.harness import EvalPlan, evaluate_in_memory, run_plan
from dreamlab.evals.report import results_table
from dreamlab.evals.tasks import Sample, load_task
from dreamlab.models import build_char_tokenizer, build_tiny_model
from dreamlab.store import EvalRecord, RunStore
from dreamlab.store.evals import settings_key
from tests.store_helpers import store_at_version

CPU = torch.device("cpu")
FAKE_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (a test's wrapper model)"


def samples_with_lengths(lengths: list[int]) -> tuple[list[Sample], dict[int, list[int]]]:
    samples = [Sample(idx=i, question=f"q{i}", gold="0") for i in range(len(lengths))]
    return samples, {i: [7] * n for i, n in enumerate(lengths)}


@pytest.mark.parametrize("text, parsed", [("auto", AUTO), ("8", 8), (" 32 ", 32), (1, 1)])
def test_batch_size_parses_a_whole_number_or_auto(text, parsed):
    assert parse_batch_size(text) == parsed


@pytest.mark.parametrize("text, message", [("0", "got 0"), ("-3", "got -3"), ("autox", "got 'autox'"),
                                           ("2.5", "got '2.5'"), ("", "got ''")])
def test_bad_batch_sizes_are_refused_by_name(text, message):
    with pytest.raises(ValueError, match="--batch-size must be a whole number >= 1 or auto") as error:
        parse_batch_size(text)
    assert message in str(error.value)


def test_batches_are_consecutive_runs_of_the_length_order():
    samples, prompts = samples_with_lengths([5, 2, 9, 2, 7, 3, 8])
    batches = length_batches(samples, prompts, 3)
    assert [[s.idx for s in batch] for batch in batches] == [[1, 3, 5], [0, 4, 6], [2]]
    # Widths 3, 8, 9: pads (1 + 1 + 0) + (3 + 1 + 0) + 0 over 3*3 + 3*8 + 1*9 prompt positions.
    assert padding_count(batches, prompts) == (6, 42)
    # In the given order the same batch size pads 20: [5, 2, 9] pads 4 + 7, [2, 7, 3] pads 5 + 4, [8] none.
    given = [samples[0:3], samples[3:6], samples[6:]]
    assert padding_count(given, prompts) == (20, 9 * 3 + 7 * 3 + 8)
    with pytest.raises(ValueError, match="batch_size must be >= 1; got 0"):
        length_batches(samples, prompts, 0)


def test_auto_starts_from_every_pending_sample_on_cuda_and_a_fixed_size_on_the_cpu():
    assert starting_batch_size(AUTO, torch.device("cuda"), 1319) == 1319
    assert starting_batch_size(AUTO, CPU, 1319) == CPU_AUTO_BATCH_SIZE == 32
    assert starting_batch_size(AUTO, CPU, 10) == 10
    assert starting_batch_size(8, torch.device("cuda"), 1319) == 8


def test_out_of_memory_backs_off_without_losing_or_redoing_a_sample():
    # A "memory budget" of 20 prompt tokens a batch: the 10 samples of lengths 1..10 must end up in
    # batches that fit it, each handled exactly once, however many attempts failed before.
    samples, prompts = samples_with_lengths(list(range(1, 11)))
    handled: list[list[int]] = []
    backoffs: list[tuple[int, int]] = []

    def pending():
        done = {idx for batch in handled for idx in batch}
        return [s for s in samples if s.idx not in done]

    def handle(batch):
        if sum(len(prompts[s.idx]) for s in batch) > 20:
            raise torch.OutOfMemoryError(FAKE_OOM)
        handled.append([s.idx for s in batch])

    used = run_in_batches(pending, handle, prompts, AUTO, CPU, lambda old, new: backoffs.append((old, new)))
    assert backoffs == [(10, 9), (9, 8), (8, 7), (7, 6), (6, 5), (5, 4), (4, 3), (3, 2)]
    assert handled == [[0, 1, 2, 3, 4], [5, 6], [7, 8], [9]]
    assert used == 2


def test_a_fixed_batch_size_names_itself_on_out_of_memory_and_other_errors_pass_through():
    samples, prompts = samples_with_lengths([3, 3])

    def oom(batch):
        raise torch.OutOfMemoryError(FAKE_OOM)

    def broken(batch):
        raise RuntimeError("a bug, not memory")

    with pytest.raises(ValueError, match="out of memory at --batch-size 2: use a smaller one, or auto"):
        run_in_batches(lambda: samples, oom, prompts, 2, CPU)
    with pytest.raises(RuntimeError, match="a bug"):
        run_in_batches(lambda: samples, broken, prompts, 2, CPU)
    with pytest.raises(RuntimeError, match="a bug"):
        run_in_batches(lambda: samples, broken, prompts, AUTO, CPU)
    assert run_in_batches(lambda: [], broken, prompts, AUTO, CPU) is None
    with pytest.raises(ValueError, match="--batch-size auto: out of memory even at batch size 1"):
        run_in_batches(lambda: samples, oom, prompts, AUTO, CPU)


class OutOfMemoryAbove(torch.nn.Module):
    """The tiny model, failing like CUDA does whenever a forward gets more than `rows` rows."""

    def __init__(self, model: torch.nn.Module, rows: int) -> None:
        super().__init__()
        self.inner, self.rows, self.config, self.batches = model, rows, model.config, []

    def forward(self, input_ids, **kwargs):
        if input_ids.shape[0] > self.rows:
            raise torch.OutOfMemoryError(FAKE_OOM)
        self.batches.append(input_ids.shape[0])
        return self.inner(input_ids=input_ids, **kwargs)


class Quiet:
    def start_cell(self, label, total, done): ...
    def advance(self, count): ...
    def end_cell(self, record): ...


def test_auto_batches_record_the_size_they_ran_at_and_every_sample_once(tmp_path):
    model, tokenizer = build_tiny_model(seed=0).eval(), build_char_tokenizer()
    task = load_task("arithmetic")
    samples = task.load_samples(10)
    cell = SamplerSettings(alg="entropy", steps=4, max_new_tokens=8)
    wrapped = OutOfMemoryAbove(model, rows=4)
    store = RunStore(tmp_path / "dreamlab.db")
    plan = EvalPlan(task=task, samples=samples, template="chat", shots=0, cells=[cell], model="tiny", batch_size=AUTO)
    backoffs = []
    [record] = run_plan(store, wrapped, tokenizer, plan, Quiet(), lambda old, new: backoffs.append((old, new)))
    assert backoffs == [(10, 9), (9, 8), (8, 7), (7, 6), (6, 5), (5, 4)]
    assert set(wrapped.batches) == {4, 2}  # 10 samples: batches of 4, 4 and 2 rows
    assert (record.status, record.n_done, record.batch_size, record.batch_size_used, record.dtype) == (
        "completed", 10, None, 4, "float32")
    stored = store.eval_samples(record.id)
    assert [s["idx"] for s in stored] == list(range(10))
    # Batch invariance: the same generations as one sample at a time on the same model.
    _, alone = evaluate_in_memory(model, tokenizer, task, samples, cell, batch_size=1)
    assert [s["generation"] for s in stored] == [row["generation"] for row in alone]
    # Both speeds come from the same seconds: all 8 positions per sample, or its answer tokens only.
    answers = sum(s["answer_tokens"] for s in stored)
    assert record.tokens_per_s == pytest.approx(10 * 8 / record.wall_seconds)
    assert record.answer_tokens_per_s == pytest.approx(answers / record.wall_seconds)


def test_a_fixed_batch_size_is_recorded_as_asked_and_used(tmp_path):
    model, tokenizer = build_tiny_model(seed=0).eval(), build_char_tokenizer()
    task = load_task("arithmetic")
    cell = SamplerSettings(alg="entropy", steps=2, max_new_tokens=4)
    plan = EvalPlan(task=task, samples=task.load_samples(3), template="chat", shots=0, cells=[cell], model="tiny",
                    batch_size=2)
    [record] = run_plan(RunStore(tmp_path / "dreamlab.db"), model, tokenizer, plan, Quiet())
    assert (record.batch_size, record.batch_size_used, record.n_done) == (2, 2, 3)


def test_tables_show_tokens_per_second_both_ways():
    record = EvalRecord(id=3, task="arithmetic", status="completed", settings_key="k", model="tiny", alg="entropy",
                        steps=48, max_new_tokens=48, accuracy=0.5, ci_low=0.25, ci_high=0.75, nfe_mean=47.0,
                        tokens_per_s=120.0, answer_tokens_per_s=30.5, tokens_per_forward=1.02, wall_seconds=4.0)
    console = Console(width=200, record=True)
    console.print(results_table([record]))
    assert "NFE 47 · 120.0 tok/s · answer 30.5" in console.export_text()
    console.print(frontier_table([record]))
    header, row = [line for line in console.export_text().splitlines() if "tok/s" in line or "arithmetic" in line
                   or "entropy" in line][-2:]
    assert re.search(r"tok/forward .* tok/s .* answer tok/s", header)
    assert re.search(r"1\.02\W+120\.0\W+30\.5\W", row)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_kept_on_glibc():
    assert keep_freed_memory() is True


def test_a_v9_cpu_eval_resumes_after_the_migration_and_gains_empty_columns(tmp_path):
    settings = {"task": "arithmetic", "model": "tiny", "alg": "entropy", "steps": 8, "max_new_tokens": 8,
                "batch_size": 16, "seed": 0, "device": "cpu"}
    path = store_at_version(tmp_path / "v9.db", 9, ("INSERT INTO evals (id, task, settings_key, status, batch_size) "
                                                   "VALUES (1, 'arithmetic', ?, 'interrupted', 16)", (settings_key(settings),)))
    store = RunStore(path)
    old = store.get_eval(1)
    assert (old.dtype, old.batch_size_used, old.batch_size) == (None, None, 16)
    assert store.create_or_resume_eval({**settings, "dtype": "float32"}).id == 1
    assert store.create_or_resume_eval({**settings, "dtype": "bfloat16"}).id == 2
