"""Parallel-decoding rules: how many of a row's masked positions to reveal at once, from its own values.

Each function sees one row's masked positions in the order the sampler would reveal them (most
confident first) and returns a count, so a row's choice never depends on its batch neighbours.
  factor (Fast-dLLM): reveal the i most confident while (i + 1) * (1 - p_i) < factor, p_i the
      probability of the i-th chosen token (at least one; with maskgit_plus's order, where p falls
      along the prefix, this is Fast-dLLM's rule exactly).
  gamma (EB-sampler, entropy bound): reveal the longest prefix whose summed entropy minus its
      largest entropy stays <= gamma (at least one).
  commit_gap (Prophet, early commit): once the mean top-2 log-probability gap over the row's masked
      positions reaches commit_gap, the answer has converged: reveal every remaining position.
"""

from __future__ import annotations

import torch


def factor_count(probabilities: torch.Tensor, factor: float) -> int:
    """The longest prefix of these chosen-token probabilities (reveal order) with (i + 1)(1 - p_i) < factor (>= 1)."""
    ranks = torch.arange(2, probabilities.shape[0] + 2, dtype=probabilities.dtype, device=probabilities.device)
    return _prefix_length((ranks * (1 - probabilities)) < factor)


def entropy_bound_count(entropies: torch.Tensor, gamma: float) -> int:
    """The longest prefix of these entropies (reveal order) with sum - max <= gamma (>= 1)."""
    running_sum = torch.cumsum(entropies, 0)
    running_max = torch.cummax(entropies, 0).values
    return _prefix_length((running_sum - running_max) <= gamma)


def _prefix_length(passing: torch.Tensor) -> int:
    """Leading True values, at least 1 (the most confident position is always revealed)."""
    failures = (~passing).nonzero()
    return max(1, int(failures[0, 0]) if failures.numel() else passing.shape[0])


def entropies(probs: torch.Tensor) -> torch.Tensor:
    """-sum p log p per row of [M, V] probabilities (0 log 0 = 0)."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def top2_gaps(logits: torch.Tensor) -> torch.Tensor:
    """log p1 - log p2 per row of [M, V] logits (the same as the top-2 logit gap)."""
    top2 = torch.topk(logits, 2, dim=-1).values
    return top2[:, 0] - top2[:, 1]
