"""Dream's SFT loss: masking, logit shift, time reweighting (cart pinned to the doc's values)."""

from __future__ import annotations

import math

import pytest
import torch

from dreamlab.diffusion.loss import (LossSettings, cart_kernel, cart_weights, masked_diffusion_loss, sample_masks, sft_loss,
                                     shift_logits, token_weights)
from dreamlab.models import build_tiny_model


def dense_cart(context: torch.Tensor, p: float) -> torch.Tensor:
    """Dream's formulation: (context as float) @ W with W the L x L symmetric geometric Toeplitz."""
    length = context.shape[1]
    distance = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs().double()
    w = 0.5 * p * (1 - p) ** (distance - 1)
    w.fill_diagonal_(0.0)
    return context.double() @ w


def test_cart_weights_match_the_reference_values_past_a_clean_prompt():
    context = torch.zeros(1, 90, dtype=torch.bool)
    context[0, :50] = True  # 50 clean prompt tokens, then a fully masked response
    w = cart_weights(context, p=0.1)[0]
    expected = {d: 0.5 * (1 - 0.9**50) * 0.9 ** (d - 1) for d in (1, 2, 11, 31)}
    for d, value in expected.items():
        assert w[49 + d].item() == pytest.approx(value, rel=1e-6)
    assert [round(w[49 + d].item(), 3) for d in (1, 2, 11, 31)] == [0.497, 0.448, 0.173, 0.021]


def test_cart_isolated_mask_is_about_one_and_an_edge_mask_about_half():
    context = torch.ones(1, 201, dtype=torch.bool)
    context[0, 100] = False
    assert cart_weights(context, 0.1)[0, 100].item() == pytest.approx(1 - 0.9**100, rel=1e-6)
    context = torch.ones(1, 201, dtype=torch.bool)
    context[0, 0] = False
    assert cart_weights(context, 0.1)[0, 0].item() == pytest.approx(0.5 * (1 - 0.9**200), rel=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02, 1.0])
def test_cart_fft_equals_the_dense_toeplitz_product(p):
    g = torch.Generator().manual_seed(0)
    context = torch.rand(3, 257, generator=g) < 0.6
    torch.testing.assert_close(cart_weights(context, p).double(), dense_cart(context, p), rtol=1e-5, atol=1e-6)


def test_cart_kernel_is_symmetric_and_zero_at_distance_zero():
    k = cart_kernel(5, 0.1)
    assert k.tolist() == pytest.approx([0.5 * 0.1 * 0.9**3, 0.5 * 0.1 * 0.9**2, 0.5 * 0.1 * 0.9, 0.05, 0.0,
                                        0.05, 0.5 * 0.1 * 0.9, 0.5 * 0.1 * 0.9**2, 0.5 * 0.1 * 0.9**3])


def test_cart_ignores_unattended_padding_as_context():
    masked = torch.tensor([[False, False, True, False]])
    attended = torch.tensor([[0, 1, 1, 1]])
    w = token_weights("cart", masked, torch.tensor([0.5]), cart_p=0.1, attention_mask=attended)
    assert w[0, 2].item() == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)  # neighbours at 1 and 1; pad ignored


def test_original_and_linear_weights():
    masked = torch.ones(2, 3, dtype=torch.bool)
    t = torch.tensor([0.25, 0.5])
    assert token_weights("original", masked, t, cart_p=0.1).tolist() == [[4.0] * 3, [2.0] * 3]
    assert token_weights("linear", masked, t, cart_p=0.1).tolist() == [[0.75] * 3, [0.5] * 3]
    assert token_weights("none", masked, t, cart_p=0.1).tolist() == [[1.0] * 3, [1.0] * 3]


def test_masks_fall_only_on_response_positions_and_are_seeded():
    loss_mask = torch.zeros(4, 50, dtype=torch.bool)
    loss_mask[:, 20:] = True
    a, t_a = sample_masks(loss_mask, eps=1e-3, generator=torch.Generator().manual_seed(5))
    b, t_b = sample_masks(loss_mask, eps=1e-3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(t_a, t_b)
    assert not a[:, :20].any()
    assert ((t_a >= 1e-3) & (t_a <= 1)).all()


def test_shift_moves_logits_one_position_right():
    logits = torch.arange(4.0).view(1, 4, 1)
    assert shift_logits(logits).flatten().tolist() == [0.0, 0.0, 1.0, 2.0]


def one_hot_logits(targets: torch.Tensor, vocab: int, scale: float = 20.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(targets, vocab).float() * scale


def test_loss_value_is_weighted_ce_over_the_masked_count():
    """Hand-computed: uniform logits give CE = ln V at every masked token; original weight 1/t."""
    vocab = 8
    clean = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    masked = torch.tensor([[False, True, True, False], [False, False, True, False]])
    t = torch.tensor([0.5, 0.25])
    logits = torch.zeros(2, 4, vocab)
    out = masked_diffusion_loss(logits, clean, masked, t, LossSettings(time_reweighting="original"))
    expected = (2 * math.log(vocab) * 2 + 4 * math.log(vocab)) / 3  # weights 2, 2, 4 over 3 tokens
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.num_masked == 3


def test_logit_shift_decides_which_position_predicts_a_token():
    vocab = 6
    clean = torch.tensor([[1, 2, 3, 4, 5]])
    masked = torch.tensor([[False, True, True, True, True]])
    # Position i's raw logits predict token i + 1 (an autoregressive model's habit).
    logits = one_hot_logits(torch.tensor([[2, 3, 4, 5, 0]]), vocab)
    shifted = masked_diffusion_loss(logits, clean, masked, torch.tensor([1.0]), LossSettings(time_reweighting="none"))
    unshifted = masked_diffusion_loss(logits, clean, masked, torch.tensor([1.0]),
                                      LossSettings(time_reweighting="none", shift_logits=False))
    assert shifted.loss.item() < 1e-6 < 10 < unshifted.loss.item()


def test_focal_reweighting_value():
    vocab = 4
    clean = torch.tensor([[0, 1]])
    masked = torch.tensor([[False, True]])
    logits = torch.zeros(1, 2, vocab)  # CE = ln 4 at the masked token
    settings = LossSettings(time_reweighting="none", focal=True, shift_logits=False)
    ce = math.log(4)
    expected = 0.25 * (1 - math.exp(-ce)) ** 2 * ce
    assert masked_diffusion_loss(logits, clean, masked, torch.tensor([0.5]), settings).loss.item() == pytest.approx(expected)


def test_zero_masked_tokens_give_zero_loss_not_nan_and_backward_still_runs():
    model = build_tiny_model(seed=1)
    ids = torch.randint(5, 100, (2, 10))
    out = sft_loss(model, ids, torch.zeros(2, 10, dtype=torch.bool), mask_token_id=1)
    assert out.loss.item() == 0.0 and out.num_masked == 0
    out.loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_sft_loss_is_reproducible_with_a_seeded_generator_and_learns():
    torch.manual_seed(0)
    model = build_tiny_model(seed=2)
    ids = torch.randint(5, 100, (4, 24))
    loss_mask = torch.zeros(4, 24, dtype=torch.bool)
    loss_mask[:, 8:] = True
    settings = LossSettings(time_reweighting="cart")
    first = sft_loss(model, ids, loss_mask, mask_token_id=1, settings=settings, generator=torch.Generator().manual_seed(3))
    again = sft_loss(model, ids, loss_mask, mask_token_id=1, settings=settings, generator=torch.Generator().manual_seed(3))
    assert first.loss.item() == again.loss.item()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        out = sft_loss(model, ids, loss_mask, mask_token_id=1, settings=LossSettings(time_reweighting="none"), generator=g)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.token_ce_mean)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_bad_loss_settings_are_refused():
    with pytest.raises(ValueError, match="time_reweighting must be one of"):
        LossSettings(time_reweighting="cosine")
    with pytest.raises(ValueError, match="cart_p"):
        LossSettings(cart_p=0.0)
