"""The sampler: token-for-token parity with Dream's loop, batch invariance, elision, extensions."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dreamlab.diffusion.sampler import SamplerHooks, generate, reveal_schedule
from tests.reference_dream import dream_generate

MASK = 1


class NeverPredictsMask(nn.Module):
    """Puts -inf on the mask token's logit: Dream may pick the mask token, dreamlab never does, so
    parity is checked on a model for which both rules coincide."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, **kwargs):
        logits = self.inner(**kwargs).logits.clone()
        logits[..., MASK] = -torch.inf
        return SimpleNamespace(logits=logits)


class CountingModel(NeverPredictsMask):
    def __init__(self, model):
        super().__init__(model)
        self.calls = 0

    def forward(self, **kwargs):
        self.calls += 1
        return super().forward(**kwargs)


def prompt(length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 103, (1, length), generator=g)


PARITY_CASES = [
    # (alg, prompt length, max_new_tokens, steps, sampler extras)
    *[(alg, p, n, s, {}) for alg, (p, n, s) in itertools.product(
        ["origin", "maskgit_plus", "topk_margin", "entropy"],
        [(1, 8, 8), (5, 16, 5), (12, 16, 32), (7, 24, 48), (3, 12, 1), (9, 20, 13)],
    )],
    ("maskgit_plus", 6, 16, 16, {"top_p": 0.9}),
    ("entropy", 6, 16, 16, {"top_k": 5}),
    ("entropy", 6, 16, 8, {"temperature": 0.7, "top_p": 0.95}),
    ("maskgit_plus", 4, 12, 12, {"temperature": 1.0}),
    ("topk_margin", 4, 12, 12, {"alg_temp": 0.5}),
    ("origin", 5, 16, 8, {"temperature": 0.8}),
]


@pytest.mark.parametrize("alg,prompt_length,max_new,steps,extra", PARITY_CASES)
def test_matches_dreams_loop_token_for_token_at_batch_size_one(tiny_model, alg, prompt_length, max_new, steps, extra):
    model = NeverPredictsMask(tiny_model)
    ids = prompt(prompt_length, seed=prompt_length * 100 + steps)
    expected, _ = dream_generate(
        model, ids, None, max_new_tokens=max_new, steps=steps, mask_token_id=MASK, alg=alg,
        generator=torch.Generator().manual_seed(7), **extra,
    )
    # Elided steps draw no random numbers, so when sampling the stream (not the law) differs.
    sampling = extra.get("temperature", 0) > 0 or extra.get("alg_temp")
    for elide in (False,) if sampling else (True, False):
        out = generate(model, ids, max_new_tokens=max_new, steps=steps, alg=alg, seed=7, elide_noop_steps=elide, **extra)
        assert torch.equal(out.sequences, expected), f"elide={elide}"
    assert not (out.sequences == MASK).any()


def test_matches_dreams_loop_with_left_padding_at_batch_size_one(tiny_model):
    model = NeverPredictsMask(tiny_model)
    ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt(6, 1)], dim=1)
    mask = torch.tensor([[0, 0, 0] + [1] * 6])
    for alg in ("origin", "entropy"):
        expected, _ = dream_generate(model, ids, mask, max_new_tokens=12, steps=12, mask_token_id=MASK, alg=alg,
                                     generator=torch.Generator().manual_seed(0))
        out = generate(model, ids, mask, max_new_tokens=12, steps=12, alg=alg, seed=0)
        assert torch.equal(out.sequences, expected)


def test_schedule_uses_dreams_float32_arithmetic():
    """492 new tokens over 984 steps floors differently in float64; Dream's float32 decides."""
    timesteps = torch.linspace(1, 1e-3, 985)
    remaining, expected = 492, []
    t64 = [1 + (1e-3 - 1) * i / 984 for i in range(985)]
    remaining64, schedule64 = 492, []
    for i in range(984):
        last = i == 983
        k = remaining if last else int(torch.tensor(remaining / 1) * (1 - timesteps[i + 1] / timesteps[i]))
        expected.append(k)
        remaining -= k
        k64 = remaining64 if last else int(remaining64 * (1 - t64[i + 1] / t64[i]))
        schedule64.append(k64)
        remaining64 -= k64
    assert reveal_schedule(492, 984) == expected
    assert sum(expected) == 492
    assert expected != schedule64


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[1] for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1]:] = r[0]
        mask[i, width - r.shape[1]:] = 1
    return ids, mask


@pytest.mark.parametrize("alg,extra", [
    ("entropy", {}), ("maskgit_plus", {}), ("topk_margin", {}),
    ("origin", {}), ("entropy", {"temperature": 0.9, "top_p": 0.9}), ("maskgit_plus", {"alg_temp": 0.3}),
    ("entropy", {"block_length": 4}), ("maskgit_plus", {"threshold": 0.05}),
])
def test_a_rows_tokens_do_not_depend_on_its_batch_neighbours(tiny_model_f64, alg, extra):
    rows = [prompt(length, seed=length) for length in (3, 9, 5, 12)]
    seeds = [11, 22, 33, 44]
    ids, mask = left_pad(rows)
    batched = generate(tiny_model_f64, ids, mask, max_new_tokens=16, steps=24 if "block_length" not in extra else 16,
                       alg=alg, seed=seeds, **extra)
    for i, row in enumerate(rows):
        alone = generate(tiny_model_f64, row, max_new_tokens=16, steps=24 if "block_length" not in extra else 16,
                         alg=alg, seed=[seeds[i]], **extra)
        assert torch.equal(batched.sequences[i, ids.shape[1] - row.shape[1]:], alone.sequences[0]), f"row {i}"


def test_sampling_stays_batch_invariant_when_rows_have_different_schedules(tiny_model_f64):
    """A prompt holding a mask token has one more position to fill, so its k differs per step."""
    rows = [prompt(6, seed=1), prompt(6, seed=2).index_fill(1, torch.tensor([2]), MASK), prompt(4, seed=3)]
    seeds = [5, 6, 7]
    ids, mask = left_pad(rows)
    settings = dict(max_new_tokens=12, steps=20, alg="entropy", temperature=0.9)
    batched = generate(tiny_model_f64, ids, mask, seed=seeds, **settings)
    for i, row in enumerate(rows):
        alone = generate(tiny_model_f64, row, seed=[seeds[i]], **settings)
        assert torch.equal(batched.sequences[i, ids.shape[1] - row.shape[1]:], alone.sequences[0]), f"row {i}"


def test_the_tokens_hook_sees_shifted_logits(tiny_model):
    seen = []
    ids = prompt(5, 0)
    generate(tiny_model, ids, max_new_tokens=4, steps=4, alg="maskgit_plus",
             hooks=SamplerHooks(tokens=lambda step, x, logits: seen.append((x.clone(), logits)) or x))
    x_before_first_step = torch.cat([ids, torch.full((1, 4), MASK)], dim=1)
    raw = tiny_model(input_ids=x_before_first_step).logits
    first_logits = next(logits for _, logits in seen if logits is not None)  # elided steps pass None
    torch.testing.assert_close(first_logits[:, 1:], raw[:, :-1])
    torch.testing.assert_close(first_logits[:, 0], raw[:, 0])


@pytest.mark.parametrize("max_new,steps", [(16, 16), (16, 32), (24, 64), (16, 9)])
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_elision_skips_exactly_the_steps_that_reveal_nothing(tiny_model, alg, max_new, steps):
    ids = prompt(5, seed=steps)
    on, off = CountingModel(tiny_model), CountingModel(tiny_model)
    with_elision = generate(on, ids, max_new_tokens=max_new, steps=steps, alg=alg)
    without = generate(off, ids, max_new_tokens=max_new, steps=steps, alg=alg, elide_noop_steps=False)
    assert torch.equal(with_elision.sequences, without.sequences)
    bound = sum(1 for k in reveal_schedule(max_new, steps) if k > 0)
    assert with_elision.nfe == on.calls == bound
    assert without.nfe == off.calls == steps


def test_elision_keeps_the_sampling_distribution(tiny_model):
    """At temperature 1, the first revealed token's distribution is the same with and without elision."""
    rows = 3000
    ids = prompt(4, seed=0).expand(rows, -1)
    histograms = []
    for elide in (True, False):
        out = generate(tiny_model, ids, max_new_tokens=4, steps=8, alg="maskgit_plus", temperature=1.0,
                       seed=list(range(rows)) if elide else list(range(rows, 2 * rows)), elide_noop_steps=elide)
        histograms.append(torch.bincount(out.sequences[:, 4], minlength=103).double() / rows)
    total_variation = 0.5 * (histograms[0] - histograms[1]).abs().sum()
    assert total_variation < 0.08  # two independent 3000-draw samples of one distribution


def test_history_hooks_and_nfe(tiny_model):
    seen_tokens, seen_logits = [], []

    def on_tokens(step, x, logits):
        seen_tokens.append(step)
        return x

    def on_logits(step, x, logits):
        seen_logits.append(step)
        assert logits.shape == (1, 21, 103)
        return logits

    out = generate(tiny_model, prompt(5, 0), max_new_tokens=16, steps=32, alg="entropy", return_history=True,
                   hooks=SamplerHooks(tokens=on_tokens, logits=on_logits))
    assert len(out.history) == 32
    assert seen_tokens == [None] + list(range(32))
    nonzero_steps = [i for i, k in enumerate(reveal_schedule(16, 32)) if k > 0]
    assert seen_logits == nonzero_steps and out.nfe == len(nonzero_steps)
    masks_left = [int((h == MASK).sum()) for h in out.history]
    assert masks_left == sorted(masks_left, reverse=True) and masks_left[-1] == 0


def test_a_tokens_hook_can_force_tokens(tiny_model):
    def force_first(step, x, logits):
        x = x.clone()
        x[:, 5] = 42
        return x

    out = generate(tiny_model, prompt(5, 0), max_new_tokens=8, steps=8, alg="maskgit_plus",
                   hooks=SamplerHooks(tokens=force_first))
    assert out.sequences[0, 5] == 42


class LovesMask(nn.Module):
    """A model that prefers the mask token above every other: the sampler must still never reveal it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, **kwargs):
        logits = self.model(**kwargs).logits.clone()
        logits[..., MASK] = 100.0
        return SimpleNamespace(logits=logits)


def test_the_mask_token_is_never_revealed_even_when_the_model_prefers_it(tiny_model):
    for alg in ("origin", "maskgit_plus", "entropy"):
        out = generate(LovesMask(tiny_model), prompt(4, 0), max_new_tokens=8, steps=8, alg=alg)
        assert not (out.sequences == MASK).any()
    stuck, _ = dream_generate(LovesMask(tiny_model), prompt(4, 0), None, max_new_tokens=8, steps=8, mask_token_id=MASK, alg="maskgit_plus")
    assert (stuck == MASK).all(dim=0)[4:].all()  # Dream's loop leaves every position masked


def test_blocks_are_revealed_left_to_right(tiny_model):
    out = generate(tiny_model, prompt(4, 0), max_new_tokens=16, steps=16, alg="entropy", block_length=4,
                   return_history=True)
    for step, x in enumerate(out.history):
        block = step // 4
        generated = x[0, 4:]
        assert not (generated[: 4 * block] == MASK).any(), f"step {step}: an earlier block is unfinished"
        assert (generated[4 * (block + 1):] == MASK).all(), f"step {step}: a later block was touched"
    assert not (out.sequences == MASK).any()


def test_threshold_reveals_top1_plus_every_confident_position(tiny_model):
    ids = prompt(4, 0)
    # threshold 1.0 reveals nothing beyond the schedule's max(k, 1): with steps == max_new_tokens
    # that is one token per step, exactly Fast-dLLM's top-1 rule.
    strict = generate(tiny_model, ids, max_new_tokens=12, steps=12, alg="maskgit_plus", threshold=1.0, return_history=True)
    assert [int((h == MASK).sum()) for h in strict.history] == list(range(11, -1, -1))
    # A threshold below every confidence reveals everything in the first call.
    eager = generate(tiny_model, ids, max_new_tokens=12, steps=12, alg="maskgit_plus", threshold=1e-9)
    assert eager.nfe == 1 and not (eager.sequences == MASK).any()
    blocks = generate(tiny_model, ids, max_new_tokens=12, steps=12, alg="entropy", threshold=1e-9, block_length=4)
    assert blocks.nfe == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"alg": "greedy"}, "alg must be one of"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"block_length": 5}, "block_length"),
    ({"block_length": 4, "steps": 6}, "multiple of the number of blocks"),
    ({"threshold": 0.9, "alg": "origin"}, "threshold needs a confidence-based alg"),
    ({"max_new_tokens": 1020}, "exceeds the model's context of 1024"),
])
def test_bad_settings_are_refused_with_a_clear_message(tiny_model, kwargs, message):
    settings = {"max_new_tokens": 16, "steps": 16, "alg": "entropy", **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(tiny_model, prompt(5, 0), **settings)


def test_a_model_without_a_mask_token_is_refused(tiny_model):
    class NoMask(nn.Module):
        config = SimpleNamespace(max_position_embeddings=64)

    with pytest.raises(ValueError, match="no mask token"):
        generate(NoMask(), prompt(3, 0), max_new_tokens=4, steps=4)


def test_right_padding_is_refused(tiny_model):
    with pytest.raises(ValueError, match="left-padded"):
        generate(tiny_model, prompt(4, 0), torch.tensor([[1, 1, 1, 0]]), max_new_tokens=4, steps=4)
