"""Eval throughput on the CPU: batch sizes side by side on one model, same samples, same answers (batch invariance).

Each batch size evaluates the same problems with `evaluate_in_memory` (bucketed by prompt length, scored).
Printed per batch size: generation tokens/s of every position and of answer tokens (what the store records:
generation time only), the wall time with scoring, the CPU time of this process (steadier than wall
time on a shared machine), and the ratios to the first batch size. `--allocator-ab` first runs the
first and last batch sizes with glibc's default malloc settings, then everything with
`dreamlab.cpu_memory.keep_freed_memory()` (what `dreamlab eval` does on the CPU).

Run: python -m bench.eval_batching --model runs/demo/checkpoints/final/model --batch-sizes 1,8,32 --threads 1
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from dreamlab.cpu_memory import keep_freed_memory
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.evals.batching import length_batches, padding_count, parse_batch_size
from dreamlab.evals.harness import evaluate_in_memory, tokenize_prompts
from dreamlab.evals.tasks import load_task
from dreamlab.models.loading import load_model_and_tokenizer


def measure(model, tokenizer, task, samples, cell, batch_size) -> dict:
    """One batch size: its summary, generations, wall and CPU seconds, minor page faults."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    summary, rows = evaluate_in_memory(model, tokenizer, task, samples, cell, batch_size=batch_size)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"summary": summary, "generations": [row["generation"] for row in rows],
            "wall": time.perf_counter() - started,
            "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt}


def report(label: str, results: dict, tokens: int) -> None:
    """A table of the batch sizes measured, ratios to the first."""
    first = next(iter(results.values()))
    print(f"{label}")
    print("  batch | gen tok/s (all) | gen answer tok/s | wall s (with scoring) | CPU s | CPU tok/s | ratio gen / CPU | minor faults")
    for size, r in results.items():
        s = r["summary"]
        print(f"  {size!s:>5} | {s['tokens_per_s']:15.1f} | {s['answer_tokens_per_s'] or 0:16.1f} | {r['wall']:21.1f} | "
              f"{r['cpu']:5.1f} | {tokens / r['cpu']:9.1f} | x{s['tokens_per_s'] / first['summary']['tokens_per_s']:.2f} / "
              f"x{first['cpu'] / r['cpu']:.2f} | {r['faults']}")
    reference = first["generations"]
    for size, r in results.items():
        same = sum(a == b for a, b in zip(reference, r["generations"]))
        print(f"  identical generations, batch {size} vs {next(iter(results))}: {same}/{len(reference)}")


def print_padding(samples, prompts, sizes) -> None:
    """Pad positions of the length buckets against batches cut in task order."""
    for size in sizes:
        padded, total = padding_count(length_batches(samples, prompts, size), prompts)
        unsorted = [samples[i:i + size] for i in range(0, len(samples), size)]
        padded_given, total_given = padding_count(unsorted, prompts)
        print(f"  batch {size}: prompt padding {padded}/{total} positions bucketed by length "
              f"({100 * padded / total:.1f}%), {padded_given}/{total_given} in task order ({100 * padded_given / total_given:.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", help="`tiny` or a checkpoint's model folder")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--allocator-ab", action="store_true", help="first measure glibc's default malloc settings")
    parser.add_argument("--padding-only", metavar="TASK:DATA", help="only print the prompt padding of a task's data "
                        "(e.g. gsm8k_cot:../shared/data/gsm8k/test.jsonl) at each batch size, with --model's tokenizer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [parse_batch_size(size) for size in args.batch_sizes.split(",")]
    model, tokenizer = load_model_and_tokenizer(args.model, device="cpu")
    if args.padding_only:
        name, data = args.padding_only.split(":", 1)
        task = load_task(name)
        template, shots = task.prompt_shape(None, None)
        samples = task.load_samples(None, data)
        prompts = tokenize_prompts(task, tokenizer, samples, template, shots)  # no BOS: the char tokenizer has none
        print(f"{name}: {len(samples)} prompts, {template} template, {shots} shots")
        print_padding(samples, prompts, [size for size in sizes if isinstance(size, int)])
        return
    task = load_task("arithmetic")
    samples = task.load_samples(args.limit)
    cell = SamplerSettings(alg="entropy", steps=args.max_new_tokens, max_new_tokens=args.max_new_tokens)
    prompts = tokenize_prompts(task, tokenizer, samples, "chat", 0)
    tokens = len(samples) * args.max_new_tokens
    print(f"{args.model}: {len(samples)} arithmetic problems x {args.max_new_tokens} new tokens, entropy, "
          f"steps = max_new_tokens, {torch.get_num_threads()} thread(s)")
    print_padding(samples, prompts, [size for size in sizes if isinstance(size, int)])
    if args.allocator_ab:
        ends = list(dict.fromkeys([sizes[0], sizes[-1]]))
        report("glibc default malloc:", {size: measure(model, tokenizer, task, samples, cell, size) for size in ends}, tokens)
    kept = keep_freed_memory()
    report(f"keep_freed_memory() = {kept}:",
           {size: measure(model, tokenizer, task, samples, cell, size) for size in sizes}, tokens)


if __name__ == "__main__":
    main()
