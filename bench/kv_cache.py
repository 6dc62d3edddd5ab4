"""Equal work, raw speed: cache=None vs "prefix" vs "dual", side by side in one run.

A random Dream-architecture model (hidden 512, 8 layers, the tiny preset's tokenizer), one
768-token prompt, 128 new tokens in blocks of 32, 128 steps, greedy entropy (temperature 0).
The modes alternate within each repeat, so machine load hits them alike. Also reports how many
generated tokens each cache changes against cache=None (the caches approximate; the tests prove
that a cache refreshed before every call reproduces cache=None exactly).

Run: python -m bench.kv_cache [--threads 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dreamlab.diffusion.sampler import generate
from dreamlab.models import build_tiny_model

PROMPT, NEW, BLOCK, STEPS = 768, 128, 32, 128
MODEL = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=1024)


def main(threads: int = 1, repeats: int = 1) -> None:
    """Print one markdown table: median wall and CPU time per mode, speed-ups over None, NFE, full forwards."""
    torch.set_num_threads(threads)
    model = build_tiny_model(seed=0, **MODEL).eval()
    params = sum(p.numel() for p in model.parameters())
    prompt = torch.randint(5, 100, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=NEW, steps=STEPS, alg="entropy", block_length=BLOCK)
    modes = (None, "prefix", "dual")
    for mode in modes:  # a short warm-up per mode: a full-size one would take minutes uncached
        generate(model, prompt[:, :64], cache=mode, max_new_tokens=32, steps=4, alg="entropy", block_length=16)
    outputs, walls, cpus = {}, {str(m): [] for m in modes}, {str(m): [] for m in modes}
    for _ in range(repeats):
        for mode in modes:
            wall, cpu = time.perf_counter(), time.process_time()
            outputs[str(mode)] = generate(model, prompt, cache=mode, **settings)
            walls[str(mode)].append(time.perf_counter() - wall)
            cpus[str(mode)].append(time.process_time() - cpu)
    # On a shared machine the process's CPU time is the steadier measure of equal work; both are shown.
    times = {name: statistics.median(values) for name, values in walls.items()}
    cpu_times = {name: statistics.median(values) for name, values in cpus.items()}
    base = outputs["None"].sequences[0, PROMPT:]
    print(f"model {params / 1e6:.1f}M params, prompt {PROMPT}, {NEW} new tokens in blocks of {BLOCK}, {STEPS} steps, "
          f"entropy, temperature 0, {threads} thread(s), median of {repeats}")
    print("| cache | wall s | speed-up (wall) | CPU s | speed-up (CPU) | NFE | full forwards | tokens differing from None |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, out in outputs.items():
        differ = int((out.sequences[0, PROMPT:] != base).sum())
        print(f"| {name} | {times[name]:.1f} | {times['None'] / times[name]:.2f}x | {cpu_times[name]:.1f} | "
              f"{cpu_times['None'] / cpu_times[name]:.2f}x | {out.nfe} | {out.full_forwards} | {differ}/{NEW} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    main(args.threads, args.repeats)
