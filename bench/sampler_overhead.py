"""Sampler overhead: time per step outside the model's forward, as a fraction of the forward.

Measured by timing every forward call inside a real `generate` run (CPU, synchronous), at the
tiny preset and at a ~100M-parameter random Dream-architecture config.
Run: python bench/sampler_overhead.py
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from torch import nn

from dreamlab.diffusion.sampler import generate
from dreamlab.models import DreamModel, tiny_config

CONFIGS = {
    "tiny (3.2M)": tiny_config(),
    "100M": tiny_config(vocab_size=16384, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=12, num_key_value_heads=4, mask_token_id=1),
}


class TimedModel(nn.Module):
    """Wraps a model and adds up the wall time spent inside its forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.seconds = 0.0

    def forward(self, **kwargs):
        start = time.perf_counter()
        logits = self.inner(**kwargs).logits
        self.seconds += time.perf_counter() - start
        return SimpleNamespace(logits=logits)


def main(prompt_length: int = 64, max_new_tokens: int = 64, steps: int = 64, repeats: int = 3) -> None:
    torch.set_num_threads(2)
    print("| model | params | alg | forward s/step | sampler s/step | overhead |")
    print("|---|---:|---|---:|---:|---:|")
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        model = TimedModel(DreamModel(config).eval())
        params = sum(p.numel() for p in model.parameters())
        prompt = torch.randint(5, 100, (1, prompt_length))
        for alg in ("entropy", "origin"):
            generate(model, prompt, max_new_tokens=max_new_tokens, steps=steps, alg=alg)  # warm-up
            best = None
            for _ in range(repeats):
                model.seconds = 0.0
                start = time.perf_counter()
                out = generate(model, prompt, max_new_tokens=max_new_tokens, steps=steps, alg=alg)
                total = time.perf_counter() - start
                forward = model.seconds
                overhead = (total - forward) / forward
                if best is None or overhead < best[0]:
                    best = (overhead, forward / out.nfe, (total - forward) / out.nfe)
            overhead, forward_per_step, sampler_per_step = best
            print(f"| {name} | {params / 1e6:.1f}M | {alg} | {forward_per_step * 1e3:.2f} ms | "
                  f"{sampler_per_step * 1e3:.2f} ms | {overhead * 100:.1f}% |")


if __name__ == "__main__":
    main()
