"""The tiny preset: a ~3M-parameter Dream-architecture model that trains on a CPU."""

from __future__ import annotations

import torch

from dreamlab.models.configuration import DreamConfig
from dreamlab.models.modeling import DreamModel
from dreamlab.models.tokenizer import build_char_tokenizer

TINY_NAME = "tiny"


def tiny_config(**overrides) -> DreamConfig:
    """The tiny preset's config, sized to the character tokenizer; keyword arguments override."""
    tokenizer = build_char_tokenizer()
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10_000.0,
        mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    settings.update(overrides)
    return DreamConfig(**settings)


def build_tiny_model(seed: int = 0, **overrides) -> DreamModel:
    """A freshly initialised tiny model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DreamModel(tiny_config(**overrides))
