"""Eval throughput: batch size 1 vs 16 on the tiny model, same samples, same answers (batch invariance).

Run: python -m bench.eval_batching [--limit 32] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.evals.harness import evaluate_in_memory
from dreamlab.evals.tasks import load_task
from dreamlab.models import build_char_tokenizer, build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = build_tiny_model(seed=0).eval(), build_char_tokenizer()
    task = load_task("arithmetic")
    samples = task.load_samples(args.limit)
    cell = SamplerSettings(alg="entropy", steps=args.max_new_tokens, max_new_tokens=args.max_new_tokens)
    results = {}
    for batch_size in (1, 16):
        started = time.perf_counter()
        summary, rows = evaluate_in_memory(model, tokenizer, task, samples, cell, batch_size=batch_size)
        results[batch_size] = (time.perf_counter() - started, [row["generation"] for row in rows])
    (slow, one), (fast, batched) = results[1], results[16]
    same = sum(a == b for a, b in zip(one, batched))
    tokens = len(samples) * args.max_new_tokens
    print(f"{len(samples)} samples x {args.max_new_tokens} new tokens, entropy, steps = max_new_tokens, {torch.get_num_threads()} threads")
    print(f"  batch 1:  {slow:6.1f} s  {tokens / slow:7.1f} tokens/s")
    print(f"  batch 16: {fast:6.1f} s  {tokens / fast:7.1f} tokens/s   speed-up x{slow / fast:.1f}")
    print(f"  identical generations: {same}/{len(samples)}")


if __name__ == "__main__":
    main()
