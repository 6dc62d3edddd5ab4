"""Turning token ids into text people read: masks shown as blocks, output cut at the first EOS."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

MASK_GLYPH = "░"


def render_with_masks(tokenizer: PreTrainedTokenizerBase, ids: list[int], mask_token_id: int) -> str:
    """Decode ids, drawing each still-masked position as a block."""
    pieces, run = [], []
    for token in ids:
        if token == mask_token_id:
            if run:
                pieces.append(tokenizer.decode(run))
                run = []
            pieces.append(MASK_GLYPH)
        else:
            run.append(token)
    if run:
        pieces.append(tokenizer.decode(run))
    return "".join(pieces)


def cut_at_eos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """The ids before the first EOS (the sampler fills the tail with EOS)."""
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids
