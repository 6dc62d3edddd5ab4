"""Token lengths as Dream's SFT counts them, and fitting rows into `max_length`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from dreamlab.data.errors import DataError
from dreamlab.data.formats import DreamRow

TRUNCATIONS = ("error", "drop", "left", "right")
BATCH_SIZE = 256


@dataclass(frozen=True)
class RowLength:
    """Tokens of one row: prompt (templated, with the generation prompt) and response (+ EOS)."""

    prompt: int
    response: int

    @property
    def total(self) -> int:
        """Prompt plus response tokens: the row's training length before padding."""
        return self.prompt + self.response


class LengthCounter:
    """Counts tokens the way Dream's SFT dataset builds its inputs."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.eos_token is None:
            raise DataError("the tokenizer has no eos_token: Dream's responses end with one")
        if not tokenizer.chat_template:
            raise DataError("the tokenizer has no chat template: Dream's prompts are templated")
        self.tokenizer = tokenizer

    def prompt_text(self, row: DreamRow) -> str:
        """The chat template over the prompt messages, ending with the assistant header."""
        return self.tokenizer.apply_chat_template(row.prompt, add_generation_prompt=True, tokenize=False)

    def response_text(self, row: DreamRow) -> str:
        """The response as trained: its text followed by the EOS token, no template around it."""
        return row.response + self.tokenizer.eos_token

    def count(self, rows: Sequence[DreamRow], advance: Callable[[int], None] | None = None) -> list[RowLength]:
        """Token lengths of every row, tokenised in batches without special tokens."""
        lengths: list[RowLength] = []
        for start in range(0, len(rows), BATCH_SIZE):
            batch = rows[start:start + BATCH_SIZE]
            prompts = self._token_counts([self.prompt_text(row) for row in batch])
            responses = self._token_counts([self.response_text(row) for row in batch])
            lengths.extend(RowLength(p, r) for p, r in zip(prompts, responses))
            if advance is not None:
                advance(len(batch))
        return lengths

    def _token_counts(self, texts: list[str]) -> list[int]:
        # verbose=False: long traces exceed the tokenizer's model_max_length, which is no error here.
        encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def truncate(self, row: DreamRow, length: RowLength, max_length: int, side: str) -> DreamRow | None:
        """Cut the response so prompt + response + EOS fits `max_length`; None if the prompt alone fills it.

        The prompt is never cut and the EOS is always kept (training appends it again to the stored
        text). `right` keeps the start of the response and cuts its end: the final answer goes first,
        then the end of the think trace (and its `</think>`). `left` keeps the end of the response and
        cuts its start: the opening `<think>` and the beginning of the trace go, the final answer stays.
        """
        if side not in ("left", "right"):
            raise ValueError(f"truncate side must be left or right, got {side!r}")
        keep = max_length - length.prompt - 1  # response tokens that fit beside the prompt and the EOS
        if keep <= 0:
            return None
        offsets = self._offsets(row.response)
        if len(offsets) <= keep:
            return row
        # Re-tokenising a cut text can merge differently at the cut (BPE): cut one token more if so.
        for budget in range(keep, 0, -1):
            if side == "right":
                text = row.response[:offsets[budget - 1][1]]
            else:
                text = row.response[offsets[len(offsets) - budget][0]:]
            if len(self._offsets(text)) <= keep:
                return replace(row, response=text)
        return None

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return encoded["offset_mapping"]
