"""Dream's masked-diffusion SFT loss: response-only masking, logit shift, time reweighting.

Tensors in, tensors out: nothing here knows about runs, files or recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dreamlab.diffusion.settings import LossSettings


@dataclass
class LossOutput:
    """The loss to backpropagate plus what a trainer logs about it."""

    loss: torch.Tensor
    num_masked: int
    t: torch.Tensor
    token_ce_mean: float


def sample_masks(
    loss_mask: torch.Tensor, *, eps: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw t ~ U(eps, 1) per row and mask each loss position with probability t.

    Returns (masked [B, L] bool, t [B] float32). Positions outside `loss_mask` are never masked.
    """
    batch, length = loss_mask.shape
    device = loss_mask.device
    t = eps + (1.0 - eps) * torch.rand(batch, generator=generator, device=device)
    draws = torch.rand(batch, length, generator=generator, device=device)
    return (draws < t[:, None]) & loss_mask.bool(), t


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Dream's shift: position i takes position i-1's logits (position 0 keeps its own)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def cart_kernel(length: int, p: float, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Half a symmetric geometric kernel, k[d] = 0.5 * p * (1-p)^(|d|-1), k[0] = 0, for |d| < length."""
    distance = torch.arange(1, length, dtype=dtype, device=device)
    one_side = 0.5 * p * (1.0 - p) ** (distance - 1)
    zero = torch.zeros(1, dtype=dtype, device=device)
    return torch.cat([one_side.flip(0), zero, one_side])


def cart_weights(context: torch.Tensor, p: float) -> torch.Tensor:
    """Context-adaptive weights w_n = 0.5 * sum_{i != n, context i} p (1-p)^(|n-i|-1), for every n.

    `context` [B, L] marks clean positions. Dream counts every unmasked position; dreamlab leaves
    out left padding that the model cannot see (attention 0). Computed as a convolution through
    the FFT in float64, O(L log L) per row, instead of Dream's L x L Toeplitz matrix product.
    """
    batch, length = context.shape
    size = 2 * length  # >= 2L - 1: the circular convolution equals the linear one
    kernel = cart_kernel(length, p, device=context.device)  # index j holds distance j - (L - 1)
    circular = torch.zeros(size, dtype=torch.float64, device=context.device)
    circular[:length] = kernel[length - 1 :]  # distances 0 .. L-1
    circular[size - (length - 1) :] = kernel[: length - 1]  # distances -(L-1) .. -1
    spectrum = torch.fft.rfft(context.to(torch.float64), n=size) * torch.fft.rfft(circular)
    weights = torch.fft.irfft(spectrum, n=size)[:, :length]
    return weights.clamp_min(0.0).to(torch.float32)


def token_weights(
    scheme: str, masked: torch.Tensor, t: torch.Tensor, *, cart_p: float, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The per-position loss weight [B, L] for a time-reweighting scheme."""
    if scheme == "original":
        return (1.0 / t)[:, None].expand_as(masked)
    if scheme == "linear":
        return (1.0 - t)[:, None].expand_as(masked)
    if scheme == "cart":
        context = ~masked
        if attention_mask is not None:
            context = context & attention_mask.bool()
        return cart_weights(context, cart_p)
    return torch.ones_like(masked, dtype=torch.float32)


def masked_diffusion_loss(
    logits: torch.Tensor,
    clean_ids: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    settings: LossSettings,
    attention_mask: torch.Tensor | None = None,
    denominator: float | None = None,
) -> LossOutput:
    """Weighted cross-entropy on masked positions, divided by their count (0 when there are none).

    `denominator` replaces the count: under gradient accumulation, the masked tokens of the whole
    step, so that the step's gradient is the one of a single batch of all its rows.
    """
    num_masked = int(masked.sum())
    if num_masked == 0:
        # Dream divides 0 by 0 here; keep the graph so every rank still runs backward.
        return LossOutput(loss=logits.sum() * 0.0, num_masked=0, t=t, token_ce_mean=0.0)
    rows, cols = masked.nonzero(as_tuple=True)
    if settings.shift_logits:
        # shift_logits() on the gathered rows only: a full [B, L, V] copy costs GBs at Dream's vocab.
        cols = (cols - 1).clamp_min(0)
    ce = F.cross_entropy(logits[rows, cols].float(), clean_ids[masked], reduction="none")
    weights = token_weights(settings.time_reweighting, masked, t, cart_p=settings.cart_p, attention_mask=attention_mask)
    per_token = ce
    if settings.focal:
        per_token = settings.focal_alpha * (1.0 - torch.exp(-ce)) ** settings.focal_gamma * ce
    loss = (weights[masked] * per_token).sum() / (denominator or num_masked)
    return LossOutput(loss=loss, num_masked=num_masked, t=t, token_ce_mean=float(ce.detach().mean()))


def sft_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    mask_token_id: int,
    settings: LossSettings = LossSettings(),
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Noise the response positions, run the model, and score the masked tokens."""
    masked, t = sample_masks(loss_mask, eps=settings.eps, generator=generator)
    return noised_loss(model, input_ids, masked, t, mask_token_id=mask_token_id, settings=settings,
                       attention_mask=attention_mask, position_ids=position_ids)


def noised_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    *,
    mask_token_id: int,
    settings: LossSettings = LossSettings(),
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    denominator: float | None = None,
) -> LossOutput:
    """The loss for masks already drawn (`sample_masks`): replace them with the mask token, run the model, score."""
    noisy = input_ids.masked_fill(masked, mask_token_id)
    logits = model(input_ids=noisy, attention_mask=attention_mask, position_ids=position_ids).logits
    return masked_diffusion_loss(logits, input_ids, masked, t, settings, attention_mask, denominator)
