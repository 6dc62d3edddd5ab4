"""Sampler NFE and wall time with no-op step elision on vs off (same tokens), tiny preset, CPU.

Run: python bench/sampler_elision.py
"""

from __future__ import annotations

import torch

from bench._common import interleaved_medians
from dreamlab.diffusion.sampler import generate, reveal_schedule
from dreamlab.models import build_tiny_model

SETTINGS = [(64, 64), (64, 128), (128, 256), (128, 64)]
PROMPT_LENGTH = 24


def main(repeats: int = 5) -> None:
    torch.set_num_threads(2)
    model = build_tiny_model(seed=0).eval()
    prompt = torch.randint(5, 100, (1, PROMPT_LENGTH), generator=torch.Generator().manual_seed(0))
    print("| max_new_tokens | steps | NFE off | NFE on | bound (steps with k>0) | same tokens | time off / on |")
    print("|---:|---:|---:|---:|---:|:---:|---:|")
    for max_new, steps in SETTINGS:
        runs = {
            elide: (lambda elide=elide: generate(model, prompt, max_new_tokens=max_new, steps=steps, alg="entropy",
                                                 elide_noop_steps=elide))
            for elide in (False, True)
        }
        off, on = runs[False](), runs[True]()
        bound = sum(1 for k in reveal_schedule(max_new, steps) if k > 0)
        times = interleaved_medians({"off": runs[False], "on": runs[True]}, repeats)
        same = "yes" if torch.equal(off.sequences, on.sequences) else "NO"
        print(f"| {max_new} | {steps} | {off.nfe} | {on.nfe} | {bound} | {same} | {times['off'] / times['on']:.2f}x "
              f"(NFE ratio {off.nfe / on.nfe:.2f}x) |")


if __name__ == "__main__":
    main()
