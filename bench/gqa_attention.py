"""Grouped-query attention inside the kernel (`enable_gqa`) against repeated KV heads, side by side.

The sampler's CPU time per cell on a trained 8-shot checkpoint (16 test problems of
`--task arithmetic --shots 8`, 48 new tokens, 48 steps, entropy, 1 thread), with
`scaled_dot_product_attention` called as DreamAttention calls it now (`enable_gqa`) and as it did
before (each KV head copied to its query heads with repeat_interleave, emulated by a wrapper); the
two alternate, median of 2. CPU time, not wall time: the machine is shared with other jobs.

Run: python -m bench.gqa_attention CHECKPOINT_MODEL_FOLDER
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from dreamlab.diffusion.sampler import generate
from dreamlab.evals.tasks import load_task
from dreamlab.models import modeling
from dreamlab.models.loading import load_model_and_tokenizer

CELLS = {"none (baseline)": {}, "dual, block 16": {"block_length": 16, "cache": "dual"},
         "dual, block 16, threshold 0.9": {"block_length": 16, "cache": "dual", "threshold": 0.9}}
SDPA = F.scaled_dot_product_attention


def repeated_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool = False, **options) -> torch.Tensor:
    """The previous code path: each KV head copied to its query heads before the kernel."""
    if enable_gqa:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return SDPA(q, k, v, **options)


def main(folder: str) -> None:
    """Print one markdown row per cell: CPU seconds each way, their ratio, the ratio to the baseline, same tokens."""
    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(folder)
    model.eval()
    task = load_task("arithmetic")
    prompts = [tokenizer(task.render(s.question, tokenizer, "chat", 8), add_special_tokens=False)["input_ids"]
               for s in task.load_samples(limit=16)]
    x = torch.tensor(prompts)
    print("| cell | CPU s, repeated KV heads | CPU s, enable_gqa | ratio | vs baseline (enable_gqa) | same tokens |")
    print("|---|---:|---:|---:|---:|:---:|")
    baseline = None
    for name, extra in CELLS.items():
        times, outputs = {"repeat": [], "gqa": []}, {}
        for _ in range(2):
            for mode in ("repeat", "gqa"):
                modeling.F.scaled_dot_product_attention = repeated_heads if mode == "repeat" else SDPA
                with torch.no_grad():
                    started = time.process_time()
                    outputs[mode] = generate(model, x, max_new_tokens=48, steps=48, alg="entropy", **extra).sequences
                    times[mode].append(time.process_time() - started)
        modeling.F.scaled_dot_product_attention = SDPA
        before, after = statistics.median(times["repeat"]), statistics.median(times["gqa"])
        baseline = baseline or after
        same = bool((outputs["repeat"] == outputs["gqa"]).all())
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}x | {baseline / after:.1f}x | {same} |")


if __name__ == "__main__":
    main(sys.argv[1])
