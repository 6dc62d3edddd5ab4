"""Token choice for the sampler: temperature, top-p / top-k filtering, and confidence scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (always the top-1)."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep tokens whose logit is at least the k-th largest."""
    top_k = min(top_k, logits.size(-1))
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def token_probabilities(
    logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None
) -> torch.Tensor:
    """Softmax after temperature scaling and top-p then top-k filtering, in Dream's order."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return torch.softmax(logits, dim=-1)


def draw_tokens(
    probs: torch.Tensor,
    temperature: float,
    row_counts: Sequence[int],
    generators: Sequence[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick x0 and its probability for each row of `probs` ([M, V], rows grouped by batch row).

    Greedy at temperature 0; otherwise each batch row samples with its own generator, so a row's
    draws never depend on its batch neighbours.
    """
    if temperature <= 0:
        confidence, x0 = probs.max(dim=-1)
        return confidence, x0
    pieces = []
    for chunk, generator in zip(torch.split(probs, list(row_counts)), generators):
        if chunk.shape[0]:
            pieces.append(torch.multinomial(chunk, 1, generator=generator).squeeze(-1))
    x0 = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long, device=probs.device)
    return torch.gather(probs, -1, x0[:, None]).squeeze(-1), x0


def confidence_scores(probs: torch.Tensor, chosen_probability: torch.Tensor, alg: str) -> torch.Tensor:
    """Dream's confidence: p(x0) (maskgit_plus), p1 - p2 (topk_margin), or sum p log p (entropy)."""
    if alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if alg == "entropy":
        return torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return chosen_probability
