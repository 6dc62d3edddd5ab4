"""`cart` weights: dreamlab's FFT convolution vs Dream's dense L x L Toeplitz product, L = 2048.

Run: python bench/cart_weights.py
"""

from __future__ import annotations

import torch

from bench._common import interleaved_medians
from dreamlab.diffusion.loss import cart_weights


def toeplitz(length: int, p: float) -> torch.Tensor:
    distance = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs().float()
    w = 0.5 * p * (1 - p) ** (distance - 1)
    return w.fill_diagonal_(0.0)


def dense(context: torch.Tensor, p: float) -> torch.Tensor:
    return context.float() @ toeplitz(context.shape[1], p)


def main(batch: int = 8, length: int = 2048, repeats: int = 20) -> None:
    torch.set_num_threads(2)
    context = torch.rand(batch, length, generator=torch.Generator().manual_seed(0)) < 0.5
    error = (cart_weights(context, 0.1) - dense(context, 0.1)).abs().max().item()
    cached = toeplitz(length, 0.1)
    times = interleaved_medians({
        "fft": lambda: cart_weights(context, 0.1),
        "dense": lambda: dense(context, 0.1),
        "cached": lambda: context.float() @ cached,
    }, repeats)
    print(f"batch {batch}, L {length}: fft {times['fft'] * 1e3:.2f} ms; dense, matrix built per call "
          f"{times['dense'] * 1e3:.2f} ms ({times['dense'] / times['fft']:.1f}x the fft); dense, matrix cached "
          f"(16 MiB) {times['cached'] * 1e3:.2f} ms ({times['cached'] / times['fft']:.1f}x); max |diff| = {error:.1e}")


if __name__ == "__main__":
    main()
