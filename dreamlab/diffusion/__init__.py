"""Masked diffusion: the SFT loss and the sampler (tensors in, tensors out)."""

from dreamlab.diffusion.loss import LossOutput, LossSettings, cart_weights, masked_diffusion_loss, sft_loss
from dreamlab.diffusion.sampler import (
    ALGORITHMS,
    GenerateOutput,
    SamplerHooks,
    SamplerSettings,
    generate,
    reveal_schedule,
)

__all__ = [
    "ALGORITHMS",
    "GenerateOutput",
    "LossOutput",
    "LossSettings",
    "SamplerHooks",
    "SamplerSettings",
    "cart_weights",
    "generate",
    "masked_diffusion_loss",
    "reveal_schedule",
    "sft_loss",
]
