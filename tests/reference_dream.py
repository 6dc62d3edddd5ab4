"""A straightforward transcription of Dream's `diffusion_generate` loop (docs/dream-reference.md §5).

Kept in the test suite as the oracle for parity: it follows Dream step by step, flaws included
(batch-averaged reveal counts, the mask token may be chosen, every step calls the model). The one
liberty: random draws come from an explicit generator instead of torch's global state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _top_p(logits, top_p):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k(logits, top_k):
    top_k = min(top_k, logits.size(-1))
    remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def _sample_tokens(logits, temperature, top_p, top_k, generator, margin=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


@torch.no_grad()
def dream_generate(model, input_ids, attention_mask, *, max_new_tokens, steps, mask_token_id,
                   alg="origin", alg_temp=None, temperature=0.0, top_p=None, top_k=None, eps=1e-3,
                   generator=None):
    """Dream's loop; returns (sequences, number of model calls)."""
    max_length = input_ids.shape[1] + max_new_tokens
    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_token_id)
    if attention_mask is not None and torch.any(attention_mask == 0.0):
        attention_mask = F.pad(attention_mask, (0, max_length - attention_mask.shape[1]), value=1.0)
        tok_idx = attention_mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(attention_mask == 0, 1)
        attention_mask = torch.logical_and(
            attention_mask.unsqueeze(1).unsqueeze(-2), attention_mask.unsqueeze(1).unsqueeze(-1)
        )
    else:
        tok_idx = None
        attention_mask = None
    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    calls = 0
    for i in range(steps):
        mask_index = x == mask_token_id
        logits = model(input_ids=x, attention_mask=attention_mask, position_ids=tok_idx).logits
        calls += 1
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + mask_token_id
            transfer = torch.rand(*x0.shape, generator=generator) < p_transfer
            _, x0[transfer] = _sample_tokens(mask_logits[transfer], temperature, top_p, top_k, generator)
            x[mask_index] = x0.clone()
        else:
            confidence, x0 = _sample_tokens(
                mask_logits, temperature, top_p, top_k, generator,
                margin=alg == "topk_margin", neg_entropy=alg == "entropy",
            )
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            k = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if k > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, k)
                else:
                    weights = F.softmax(full_confidence / alg_temp, dim=-1)
                    transfer_index = torch.multinomial(weights, num_samples=k, generator=generator)
                x_ = torch.zeros_like(x, dtype=torch.long) + mask_token_id
                x_[mask_index] = x0.clone()
                rows = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                x[rows, transfer_index] = x_[rows, transfer_index]
    return x, calls
