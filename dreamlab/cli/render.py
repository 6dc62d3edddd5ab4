"""Turning token ids into text people read: masks shown as blocks, output cut at the first EOS."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from dreamlab.evals.harness import cut_at_eos  # noqa: F401  (re-exported for the CLI)

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
