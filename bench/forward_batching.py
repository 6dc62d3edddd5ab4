"""The model's forward alone: CPU time per token at batch 1 and batch 32, eager and torch.compile'd.

What bounds `bench.eval_batching`'s batch-32 gain: if a forward costs nearly as much per token at
batch 32 as at batch 1, batching can only save the sampler's per-step overhead.

Run: python -m bench.forward_batching --model runs/demo/checkpoints/final/model [--length 81] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import torch

from dreamlab.cpu_memory import keep_freed_memory
from dreamlab.models.loading import load_model_and_tokenizer


def cpu_microseconds_per_token(forward, batch: int, length: int, repeats: int) -> float:
    """Process CPU time of `repeats` forwards of a [batch, length] input, per token, after two warm-up calls."""
    x = torch.randint(0, 50, (batch, length))
    with torch.no_grad():
        forward(input_ids=x)
        forward(input_ids=x)
        started = time.process_time()
        for _ in range(repeats):
            forward(input_ids=x)
    return (time.process_time() - started) / (repeats * batch * length) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--length", type=int, default=81, help="prompt + new tokens (the demo task: 33 + 48)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    model, _ = load_model_and_tokenizer(args.model, device="cpu")
    kinds = {"eager": model} if args.no_compile else {"eager": model, "compiled": torch.compile(model, dynamic=False)}
    print(f"{args.model}: forward of {args.length} positions, {torch.get_num_threads()} thread(s), CPU microseconds per token")
    for name, forward in kinds.items():
        one = cpu_microseconds_per_token(forward, 1, args.length, 200)
        many = cpu_microseconds_per_token(forward, 32, args.length, 10)
        print(f"  {name:8}  batch 1: {one:6.1f}   batch 32: {many:6.1f}   batch 1 / batch 32: x{one / many:.2f}")


if __name__ == "__main__":
    main()
