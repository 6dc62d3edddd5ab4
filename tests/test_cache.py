"""KV caches: the cached window forward, the sampler's prefix / dual caches, their NFE and batch invariance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreamlab.diffusion.sampler import generate, reveal_schedule
from dreamlab.models import build_tiny_model
from tests.test_sampler import left_pad, prompt

RULES = [{}, {"threshold": 0.3}, {"factor": 1.0}, {"gamma": 0.5}, {"commit_gap": 2.0}]


class CountingModel(nn.Module):
    """Counts full and windowed calls; passes everything (the cache included) through."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.full = self.windows = 0

    def forward(self, **kwargs):
        if kwargs.get("cache_start") is None:
            self.full += 1
        else:
            self.windows += 1
        return self.inner(**kwargs)


@pytest.mark.parametrize("absolute_positions", [False, True])
@pytest.mark.parametrize("window", [(9, 15), (9, 24)])  # dual (a block), prefix (to the end)
def test_the_cached_window_gives_the_full_forwards_logits(absolute_positions, window):
    """float32: the window's logits equal the full forward's on the same positions to 1e-5, padded rows included."""
    model = build_tiny_model(seed=1, initializer_range=0.1, absolute_position_embeddings=absolute_positions).eval()
    x = torch.randint(5, 100, (3, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[0, :5] = 0
    mask[2, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    start, end = window
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=positions, use_cache=True)
        part = model(x[:, start:end], attention_mask=mask, position_ids=positions[:, start:end], cache=full.cache,
                     cache_start=start)
        unpadded = model(x[1:2, start:end], cache=model(x[1:2], use_cache=True).cache, cache_start=start)
    assert full.cache.length == 24 and part.cache is None
    torch.testing.assert_close(part.logits, full.logits[:, start:end], rtol=0, atol=1e-5)
    torch.testing.assert_close(unpadded.logits, full.logits[1:2, start:end], rtol=0, atol=1e-5)


def test_a_window_that_does_not_fit_or_lacks_its_cache_is_refused(tiny_model):
    x = torch.randint(5, 100, (1, 10))
    cache = tiny_model(x, use_cache=True).cache
    with pytest.raises(ValueError, match="does not fit"):
        tiny_model(x[:, :4], cache=cache, cache_start=8)
    with pytest.raises(ValueError, match="together"):
        tiny_model(x[:, :4], cache_start=2)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("alg,extra", [("entropy", {}), ("maskgit_plus", {"threshold": 0.3}), ("topk_margin", {"gamma": 0.5}),
                                       ("origin", {"temperature": 1.0})])
def test_a_cache_refreshed_before_every_call_reproduces_the_uncached_output(tiny_model_f64, cache, alg, extra):
    rows = [prompt(length, seed=length) for length in (3, 7, 5)]
    ids, mask = left_pad(rows)
    settings = dict(max_new_tokens=16, steps=16, alg=alg, block_length=4, seed=[1, 2, 3], **extra)
    plain = generate(tiny_model_f64, ids, mask, **settings)
    counting = CountingModel(tiny_model_f64)
    cached = generate(counting, ids, mask, cache=cache, refresh_cache_every_call=True, **settings)
    assert torch.equal(cached.sequences, plain.sequences)
    assert counting.windows == counting.full == cached.nfe  # every step's logits came from a window


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("rule", RULES, ids=lambda rule: next(iter(rule), "schedule"))
def test_a_rows_tokens_do_not_depend_on_its_batch_neighbours_with_every_cache_and_rule(tiny_model_f64, cache, rule):
    rows = [prompt(length, seed=length) for length in (3, 9, 5)]
    ids, mask = left_pad(rows)
    settings = dict(max_new_tokens=16, steps=16, alg="entropy", block_length=8, cache=cache, **rule)
    batched = generate(tiny_model_f64, ids, mask, seed=[4, 5, 6], **settings)
    for i, row in enumerate(rows):
        alone = generate(tiny_model_f64, row, seed=[4 + i], **settings)
        assert torch.equal(batched.sequences[i, ids.shape[1] - row.shape[1]:], alone.sequences[0]), f"row {i}"
        assert batched.row_nfe[i] == alone.nfe, f"row {i}"
    assert batched.nfe >= max(batched.row_nfe)  # rows may finish a block at different steps


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("max_new,steps,block", [(16, 16, 4), (16, 32, 8), (24, 12, 8)])
def test_nfe_with_a_cache_is_one_call_per_step_that_reveals_and_one_refresh_per_block(tiny_model, cache, max_new, steps, block):
    counting = CountingModel(tiny_model)
    out = generate(counting, prompt(5, seed=steps), max_new_tokens=max_new, steps=steps, alg="entropy",
                   block_length=block, cache=cache)
    blocks = max_new // block
    bound = blocks * sum(1 for k in reveal_schedule(block, steps // blocks) if k > 0)
    assert out.nfe == counting.full + counting.windows == bound
    assert out.full_forwards == counting.full == (blocks if cache else bound)
    assert not (out.sequences == tiny_model.config.mask_token_id).any()


@pytest.mark.parametrize("cache", [None, "dual"])
@pytest.mark.parametrize("rule", [{"threshold": 1e-9}, {"factor": 1e9}, {"gamma": 1e9}, {"commit_gap": 1e-9}])
def test_a_rule_that_accepts_everything_makes_one_call_per_block(tiny_model, cache, rule):
    out = generate(tiny_model, prompt(5, 0), max_new_tokens=16, steps=16, alg="maskgit_plus", block_length=4,
                   cache=cache, **rule)
    assert out.nfe == 4 and out.full_forwards == 4
    assert not (out.sequences == tiny_model.config.mask_token_id).any()


@pytest.mark.parametrize("rule", [{"threshold": 1.0}, {"factor": 1e-9}, {"gamma": 0.0}])
def test_a_rule_that_accepts_nothing_reveals_one_token_a_call(tiny_model, rule):
    """The top-1 is always revealed: NFE reaches its bound, blocks * min(steps per block, block_length)."""
    out = generate(tiny_model, prompt(5, 0), max_new_tokens=16, steps=32, alg="entropy", block_length=8,
                   cache="prefix", **rule)
    assert out.nfe == 2 * min(16, 8)


def test_a_logits_hook_is_refused_with_a_cache_and_the_tokens_hook_sees_none(tiny_model):
    from dreamlab.diffusion.sampler import SamplerHooks

    with pytest.raises(ValueError, match="logits hook"):
        generate(tiny_model, prompt(4, 0), max_new_tokens=8, steps=8, block_length=4, cache="dual",
                 hooks=SamplerHooks(logits=lambda step, x, logits: logits))
    seen = []
    generate(tiny_model, prompt(4, 0), max_new_tokens=8, steps=8, block_length=4, cache="dual", alg="entropy",
             hooks=SamplerHooks(tokens=lambda step, x, logits: seen.append(logits is None) or x))
    assert len(seen) == 9 and seen[0] and seen.count(False) == 2  # logits at each block's refresh only


def test_a_cache_needs_blocks(tiny_model):
    with pytest.raises(ValueError, match="needs block_length"):
        generate(tiny_model, prompt(4, 0), max_new_tokens=8, steps=8, cache="dual")
    with pytest.raises(ValueError, match="cache must be one of"):
        generate(tiny_model, prompt(4, 0), max_new_tokens=8, steps=8, block_length=4, cache="full")
