"""The sampler asks the model for the logits it reads only: the new positions and the last prompt position."""

from __future__ import annotations

import torch
from torch import nn

from dreamlab.diffusion.sampler import SamplerHooks, generate


class FullLogitsOnly(nn.Module):
    """The same model behind a forward that has no `logits_to_keep` (as a remote-code model may not)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


class Spy(nn.Module):
    """Records the logits_to_keep of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.kept = model, model.config, []

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep: int = 0):
        self.kept.append(logits_to_keep)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          logits_to_keep=logits_to_keep)


def test_the_model_keeps_the_last_positions_logits(tiny_model_f64):
    x = torch.randint(0, 50, (2, 12))
    full = tiny_model_f64(input_ids=x).logits
    kept = tiny_model_f64(input_ids=x, logits_to_keep=5).logits
    assert kept.shape == (2, 5, full.shape[-1])
    torch.testing.assert_close(kept, full[:, -5:])


def test_kept_logits_give_the_same_tokens_as_full_ones(tiny_model_f64):
    prompts = torch.randint(2, 50, (3, 7), generator=torch.Generator().manual_seed(0))  # no mask (id 1) in the prompt
    attention = torch.ones_like(prompts)
    attention[0, :2] = 0  # a left-padded row
    settings = dict(max_new_tokens=10, steps=6, alg="entropy", seed=[3, 4, 5])
    spy = Spy(tiny_model_f64)
    kept = generate(spy, prompts, attention, **settings)
    full = generate(FullLogitsOnly(tiny_model_f64), prompts, attention, **settings)
    assert torch.equal(kept.sequences, full.sequences) and kept.nfe == full.nfe
    assert set(spy.kept) == {11} and len(spy.kept) == kept.nfe


def test_hooks_a_cache_or_a_mask_in_the_prompt_get_every_position(tiny_model_f64):
    spy = Spy(tiny_model_f64)
    prompts = torch.randint(0, 50, (1, 6))
    generate(spy, prompts, max_new_tokens=4, steps=2, alg="entropy", hooks=SamplerHooks(tokens=lambda step, x, logits: x))
    prompts[0, 2] = tiny_model_f64.config.mask_token_id
    generate(spy, prompts, max_new_tokens=4, steps=2, alg="entropy")
    assert set(spy.kept) == {0}
