"""Exact-match accuracy of generated final answers (the text after `</think>`, up to EOS)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from dreamlab.diffusion import generate

THINK_CLOSE = "</think>"


@dataclass
class ExactMatchResult:
    """Accuracy over the rows plus each row's generation and extracted answer."""

    accuracy: float
    correct: int
    total: int
    nfe: int
    generations: list[str]
    answers: list[str]


def cut_at_eos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """The ids before the first EOS (the sampler fills the tail with EOS)."""
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def final_answer(generation: str) -> str:
    """The text after the last `</think>` (or all of it), stripped."""
    return generation.rsplit(THINK_CLOSE, 1)[-1].strip()


@torch.no_grad()
def exact_match(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    golds: Sequence[str],
    *,
    max_new_tokens: int,
    steps: int,
    alg: str = "entropy",
    batch_size: int = 128,
    system_prompt: str | None = None,
    block_length: int | None = None,
) -> ExactMatchResult:
    """Greedy generation for each question (chat template), answers compared as strings."""
    device = next(model.parameters()).device
    generations: list[str] = []
    nfe = 0
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        texts = [
            tokenizer.apply_chat_template(
                ([{"role": "system", "content": system_prompt}] if system_prompt else [])
                + [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in chunk
        ]
        encoded = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
        out = generate(model, encoded.input_ids.to(device), encoded.attention_mask.to(device),
                       max_new_tokens=max_new_tokens, steps=steps, alg=alg, temperature=0.0, block_length=block_length,
                       seed=list(range(start, start + len(chunk))))
        nfe += out.nfe
        width = encoded.input_ids.shape[1]
        generations.extend(tokenizer.decode(cut_at_eos(tokenizer, row[width:].tolist())) for row in out.sequences)
    answers = [final_answer(g) for g in generations]
    correct = sum(a == str(g).strip() for a, g in zip(answers, golds))
    return ExactMatchResult(correct / max(1, len(golds)), correct, len(golds), nfe, generations, answers)
