"""Equal work, raw speed: cache=None vs "prefix" vs "dual", side by side in one run.

A random Dream-architecture model (hidden 512, 8 layers, the tiny preset's tokenizer), one
768-token prompt, 128 new tokens in blocks of 32, 128 steps, greedy entropy (temperature 0).
Also reports how many generated tokens each cache changes against cache=None (the caches
approximate), and checks that refresh_cache_every_call reproduces cache=None exactly.

Run: python -m bench.kv_cache [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from bench._common import interleaved_medians
from dreamlab.diffusion.sampler import generate
from dreamlab.models import build_tiny_model

PROMPT, NEW, BLOCK, STEPS = 768, 128, 32, 128
MODEL = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=1024)


def main(threads: int = 1, repeats: int = 3) -> None:
    """Print one markdown table: median wall time per mode, its speed-up over None, NFE, full forwards."""
    torch.set_num_threads(threads)
    model = build_tiny_model(seed=0, **MODEL).eval()
    params = sum(p.numel() for p in model.parameters())
    prompt = torch.randint(5, 100, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=NEW, steps=STEPS, alg="entropy", block_length=BLOCK)
    modes = {str(mode): (lambda mode=mode: generate(model, prompt, cache=mode, **settings)) for mode in (None, "prefix", "dual")}
    outputs = {name: run() for name, run in modes.items()}
    times = interleaved_medians(modes, repeats)
    base = outputs["None"].sequences[0, PROMPT:]
    print(f"model {params / 1e6:.1f}M params, prompt {PROMPT}, {NEW} new tokens in blocks of {BLOCK}, {STEPS} steps, "
          f"entropy, temperature 0, {threads} thread(s), median of {repeats}")
    print("| cache | wall s | speed-up vs None | NFE | full forwards | tokens differing from None |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, out in outputs.items():
        differ = int((out.sequences[0, PROMPT:] != base).sum())
        print(f"| {name} | {times[name]:.2f} | {times['None'] / times[name]:.2f}x | {out.nfe} | {out.full_forwards} | "
              f"{differ}/{NEW} |")
    for mode in ("prefix", "dual"):
        checked = generate(model, prompt, cache=mode, refresh_cache_every_call=True, **settings)
        same = torch.equal(checked.sequences, outputs["None"].sequences)
        print(f"{mode} refreshed before every call reproduces None: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.threads, args.repeats)
