"""Fast-dLLM's block-wise approximate KV caches for the sampler (`cache="prefix"` or `"dual"`).

At a block's first model call, one full forward runs over the whole sequence, keeps every layer's
keys and values, and its logits serve that step. The block's later steps run only a window:
  prefix: the block and everything after it (the prompt and finished blocks come from the cache);
  dual:   the block alone (the masked suffix comes from the cache too).
The window starts one position before the block because Dream's logits are shifted: position p is
predicted by the output at p - 1. Cached entries are stale by design (the tokens they attend to
have changed since the refresh); with a refresh before every step the window's logits equal the full
forward's, which is how the tests prove the machinery exact.
"""

from __future__ import annotations

import torch

from dreamlab.diffusion.settings import CACHE_MODES


class BlockCache:
    """The sampler's model calls under a cache mode: full at a block's first call, a window after."""

    def __init__(self, model: torch.nn.Module, mode: str, attention: torch.Tensor | None,
                 position_ids: torch.Tensor | None, refresh_every_call: bool = False) -> None:
        """`attention` / `position_ids` cover the whole sequence (None: no padding)."""
        if mode not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}; got {mode!r}")
        self.model = model
        self.mode = mode
        self.attention = attention
        self.position_ids = position_ids
        self.refresh_every_call = refresh_every_call
        self.cache = None
        self.cached_block: int | None = None
        self.full_forwards = 0

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=x, attention_mask=self.attention, position_ids=self.position_ids, use_cache=True)
        if getattr(out, "cache", None) is None:
            raise ValueError(f"cache={self.mode!r} needs a model whose forward returns a KV cache (DreamModel)")
        self.cache = out.cache
        self.full_forwards += 1
        return out.logits

    def logits(self, x: torch.Tensor, block: int, block_start: int, block_end: int) -> tuple[torch.Tensor, int]:
        """Unshifted logits for columns [offset, offset + n) of x, and offset (0 for a full forward)."""
        if self.cached_block != block or self.refresh_every_call:
            logits = self._full(x)
            self.cached_block = block
            if not self.refresh_every_call:
                return logits, 0
        start = block_start - 1
        end = block_end if self.mode == "dual" else x.shape[1]
        attention = None if self.attention is None else self.attention[:, :, start:end]
        positions = None if self.position_ids is None else self.position_ids[:, start:end]
        out = self.model(input_ids=x[:, start:end], attention_mask=attention, position_ids=positions,
                         cache=self.cache, cache_start=start)
        return out.logits, start
