"""Parallel-decoding rules: the counts on known values, their settings and their traps, the mask token."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from dreamlab.diffusion.rules import entropies, entropy_bound_count, factor_count, top2_gaps
from dreamlab.diffusion.sampler import generate
from dreamlab.diffusion.settings import SamplerSettings
from tests.test_sampler import MASK, LovesMask, prompt


def test_the_factor_rule_reveals_while_rank_plus_one_times_the_error_stays_below_the_factor():
    p = torch.tensor([0.99, 0.8, 0.75, 0.5], dtype=torch.float64)
    # (i + 1)(1 - p_i): 0.02, 0.6, 1.0, 2.5
    assert factor_count(p, 1.0) == 2
    assert factor_count(p, 1.01) == 3
    assert factor_count(p, 0.01) == 1  # the top-1 always
    assert factor_count(p, 3.0) == 4


def test_the_entropy_bound_reveals_the_longest_prefix_with_sum_minus_max_within_gamma():
    h = torch.tensor([0.125, 0.25, 0.5, 0.0625], dtype=torch.float64)
    # sum - max along the prefix (exact in binary): 0, 0.125, 0.375, 0.4375
    assert entropy_bound_count(h, 0.0) == 1
    assert entropy_bound_count(h, 0.125) == 2
    assert entropy_bound_count(h, 0.4) == 3
    assert entropy_bound_count(h, 1.0) == 4


def test_entropies_and_gaps():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(entropies(probs), torch.tensor([math.log(2), 0.0], dtype=torch.float64))
    assert top2_gaps(torch.tensor([[3.0, 1.0, -2.0]])).tolist() == [2.0]


@pytest.mark.parametrize("kwargs,message", [
    ({"threshold": 0.9, "temperature": 0.7}, "known trap"),
    ({"gamma": 0.1, "temperature": 0.2}, "known trap"),
    ({"threshold": 0.9, "factor": 1.0}, "one parallel-decoding rule"),
    ({"factor": 0.0}, "factor must be > 0"),
    ({"gamma": -1.0}, "gamma must be >= 0"),
    ({"commit_gap": 0.0}, "commit_gap must be > 0"),
    ({"commit_gap": 2.0, "alg": "origin"}, "commit_gap needs a confidence-based alg"),
    ({"factor": 1.0, "alg_temp": 0.5}, "leave alg_temp unset"),
    ({"cache": "dual"}, "needs block_length"),
])
def test_bad_rule_and_cache_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**{"max_new_tokens": 16, "steps": 16, "alg": "entropy", **kwargs})


def test_a_parallel_rule_without_blocks_warns_loudly_and_with_blocks_does_not():
    with pytest.warns(UserWarning, match="55.5 to 5.5"):
        SamplerSettings(max_new_tokens=16, steps=16, alg="entropy", gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SamplerSettings(max_new_tokens=16, steps=16, alg="entropy", gamma=0.5, block_length=8)
        SamplerSettings(max_new_tokens=16, steps=16, alg="entropy", commit_gap=3.0)


@pytest.mark.parametrize("rule", [{"factor": 1e9}, {"gamma": 1e9}, {"commit_gap": 1e-9}, {"threshold": 1e-9}])
def test_no_rule_reveals_the_mask_token_even_when_the_model_prefers_it(tiny_model, rule):
    out = generate(LovesMask(tiny_model), prompt(4, 0), max_new_tokens=8, steps=8, alg="maskgit_plus", block_length=4, **rule)
    assert not (out.sequences == MASK).any() and out.nfe == 2


def test_commit_gap_commits_a_block_only_once_its_mean_gap_is_reached(tiny_model):
    ids = prompt(4, 0)
    settings = dict(max_new_tokens=16, steps=16, alg="entropy", block_length=8)
    plain = generate(tiny_model, ids, **settings)
    never = generate(tiny_model, ids, commit_gap=1e9, **settings)
    assert torch.equal(never.sequences, plain.sequences) and never.nfe == plain.nfe
    always = generate(tiny_model, ids, commit_gap=1e-9, **settings)
    assert always.nfe == 2
