"""Training batches: padding, loss masks, position ids and Dream's per-batch cutoff modes.

A row is prompt tokens (never masked, no loss) followed by response tokens ending in EOS.
Cutoff modes (`data.perbatch_cutoff_type`):
  none                  right-pad every row to max_length (Dream's SFT dataset).
  longest               right-pad to the longest row in the batch.
  random                draw one row; cut or pad every row to its length.
  random_with_input_pad left-pad prompts to the batch's longest prompt (attention 0, loss 0), draw
                        one row, cut or pad every response to its response length.
Dream counts a row's length as its non-pad tokens, and pad == EOS, so the drawn row (and every
longer one) loses its EOS; here lengths come from the token lists, so the drawn row keeps its EOS.
Dream draws with numpy's global RNG; here the collator owns a seeded RNG, saved with checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dreamlab.config import CUTOFF_MODES


@dataclass(frozen=True)
class Example:
    """One tokenised training row: prompt ids, then response ids (ending with EOS)."""

    prompt_ids: Sequence[int]
    response_ids: Sequence[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(frozen=True)
class CollateSettings:
    """How rows become a batch; every field is recorded with a run."""

    max_length: int
    pad_token_id: int
    perbatch_cutoff_type: str = "none"
    # Right padding is pad (= EOS) tokens: trained (attention 1, loss 1) as Dream does, so the model
    # learns to fill the tail with EOS; or, when False, invisible (attention 0, loss 0).
    train_on_padding: bool = True

    def __post_init__(self) -> None:
        if self.perbatch_cutoff_type not in CUTOFF_MODES:
            raise ValueError(
                f"perbatch_cutoff_type must be one of {', '.join(CUTOFF_MODES)}; got {self.perbatch_cutoff_type!r}"
            )
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2; got {self.max_length}")


class SFTCollator:
    """Turns a list of `Example` into input_ids / attention_mask / position_ids / loss_mask."""

    def __init__(self, settings: CollateSettings, seed: int = 0) -> None:
        self.settings = settings
        self._rng = random.Random(seed)
        self.last_cutoff: dict | None = None

    def state_dict(self) -> dict:
        """The RNG state, so a resumed run draws the same cutoffs."""
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        for index, example in enumerate(examples):
            if len(example) > self.settings.max_length:
                raise ValueError(
                    f"row {index} has {len(example)} tokens, over max_length {self.settings.max_length}: "
                    "filter or truncate it in `dreamlab data prepare`"
                )
            if not example.response_ids:
                raise ValueError(f"row {index} has an empty response (it must at least hold EOS)")
        mode = self.settings.perbatch_cutoff_type
        if mode == "random_with_input_pad":
            return self._left_padded_prompts(examples)
        drawn = self._rng.randrange(len(examples)) if mode == "random" else None
        width = {
            "none": self.settings.max_length,
            "longest": max(len(e) for e in examples),
            "random": len(examples[drawn]) if drawn is not None else 0,
        }[mode]
        self.last_cutoff = {"mode": mode, "drawn_row": drawn, "length": width}
        rows = [(list(e.prompt_ids), list(e.response_ids)[: max(0, width - len(e.prompt_ids))]) for e in examples]
        return self._assemble(rows, prompt_width=None, width=width)

    def _left_padded_prompts(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        drawn = self._rng.randrange(len(examples))
        response_width = len(examples[drawn].response_ids)
        prompt_width = max(len(e.prompt_ids) for e in examples)
        self.last_cutoff = {"mode": "random_with_input_pad", "drawn_row": drawn, "length": prompt_width + response_width}
        rows = [(list(e.prompt_ids), list(e.response_ids)[:response_width]) for e in examples]
        return self._assemble(rows, prompt_width=prompt_width, width=prompt_width + response_width)

    def _assemble(self, rows: list[tuple[list[int], list[int]]], prompt_width: int | None, width: int) -> dict[str, torch.Tensor]:
        pad = self.settings.pad_token_id
        trained_tail = int(self.settings.train_on_padding)
        batch = len(rows)
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        attention = torch.full((batch, width), trained_tail, dtype=torch.long)
        loss_mask = torch.full((batch, width), trained_tail, dtype=torch.long)
        for i, (prompt, response) in enumerate(rows):
            start = 0 if prompt_width is None else prompt_width - len(prompt)
            attention[i, :start] = 0  # left padding: invisible and never trained
            loss_mask[i, :start] = 0
            prompt = prompt[: width - start]
            end_prompt = start + len(prompt)
            input_ids[i, start:end_prompt] = torch.tensor(prompt, dtype=torch.long)
            attention[i, start:end_prompt] = 1
            loss_mask[i, start:end_prompt] = 0
            end = end_prompt + len(response)
            if response:
                input_ids[i, end_prompt:end] = torch.tensor(response, dtype=torch.long)
            attention[i, end_prompt:end] = 1
            loss_mask[i, end_prompt:end] = 1
        position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
        return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids, "loss_mask": loss_mask}
