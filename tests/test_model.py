"""The Dream-compatible model class: names, shapes, loading, attention and checkpointing."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from dreamlab.models import DreamConfig, DreamModel, build_tiny_model

# Dream-v0-7B (docs/dream-reference.md §1): hidden 3584, intermediate 18944, 28 layers,
# 28 query heads / 4 KV heads of 128, vocab 152064, untied lm_head.
HIDDEN, INTER, LAYERS, VOCAB, KV = 3584, 18944, 28, 152064, 4 * 128
# Two model instances with the same weights give logits equal up to rounding, not bit for bit (about 4e-16
# apart in float64 on some CPUs): bitwise equality is asserted only for the very same computation.
FLOAT32_ROUNDING = {"rtol": 1e-5, "atol": 1e-5}
FLOAT64_ROUNDING = {"rtol": 0, "atol": 1e-12}


def dream_7b_expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    for n in range(LAYERS):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.q_proj.bias": (HIDDEN,),
            p + "self_attn.k_proj.weight": (KV, HIDDEN), p + "self_attn.k_proj.bias": (KV,),
            p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.v_proj.bias": (KV,),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
        })
    return shapes


def test_dream_7b_config_has_dreams_parameter_names_and_shapes():
    with torch.device("meta"):
        model = DreamModel(DreamConfig())  # the defaults are Dream-v0-7B's config
    actual = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert actual == dream_7b_expected_shapes()
    assert sum(p.numel() for p in model.parameters()) == 7_615_616_512


def test_tiny_preset_is_between_one_and_five_million_parameters():
    n = sum(p.numel() for p in build_tiny_model().parameters())
    assert 1_000_000 <= n <= 5_000_000


def test_save_and_load_round_trip_in_safetensors(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = DreamModel.from_pretrained(tmp_path).eval()
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 11))
    saved = tiny_model.state_dict()
    assert all(torch.equal(value, saved[name]) for name, value in loaded.state_dict().items())  # the weights are exact
    # Another instance: its kernels may take other paths (alignment, CPU), so logits agree to rounding only.
    torch.testing.assert_close(loaded(x).logits, tiny_model(x).logits, **FLOAT32_ROUNDING)


def test_dream_style_checkpoint_folder_loads_without_remote_code(tmp_path, tiny_model):
    """Dream's config.json names remote code in auto_map; our registered class must take over."""
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update({
        "model_type": "Dream", "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28, "rope_scaling": None,
    })
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is DreamModel
    x = torch.randint(0, tiny_model.config.vocab_size, (1, 7))
    torch.testing.assert_close(loaded.eval()(x).logits, tiny_model(x).logits, **FLOAT32_ROUNDING)


def test_attention_is_bidirectional(tiny_model):
    x = torch.randint(5, 100, (1, 10))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 100
    assert not torch.allclose(tiny_model(x).logits[0, 0], tiny_model(y).logits[0, 0])


def test_left_padding_with_positions_reproduces_the_unpadded_logits(tiny_model_f64):
    x = torch.randint(5, 100, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 9)], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    alone = tiny_model_f64(x).logits
    batched = tiny_model_f64(padded, attention_mask=mask, position_ids=positions).logits[:, 4:]
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)
    assert torch.isfinite(tiny_model_f64(padded, attention_mask=mask).logits).all()


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randint(0, 100, (2, 12))
    grads = []
    for checkpointing in (False, True):
        model = build_tiny_model(seed=3).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.layers[0].gradient_checkpointing
        model(x).logits.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        DreamConfig(num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="attention_mask"):
        build_tiny_model()(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Solve: 2x + 5 = 15"}]
    text = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSolve: 2x + 5 = 15<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    response = "<think>\n5 + 10 = 15\n</think>\nx = 5" + loaded.eos_token
    ids = loaded(response, add_special_tokens=False).input_ids
    assert ids[0] == loaded.convert_tokens_to_ids("<think>") and ids[-1] == loaded.eos_token_id
    assert loaded.decode(ids) == response
    assert (loaded.mask_token, loaded.mask_token_id) == ("<|mask|>", 1)
    assert loaded.pad_token_id == loaded.eos_token_id == 0


def test_a_bfloat16_cast_keeps_rotary_frequencies_in_float32():
    model = build_tiny_model().to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32
    torch.testing.assert_close(inv_freq, model.model.rotary_emb.inverse_frequencies(model.config), rtol=0, atol=0)


def test_generation_keywords_are_accepted_and_unsupported_outputs_refused(tiny_model):
    x = torch.randint(0, 100, (1, 6))
    assert tiny_model(x, use_cache=False, return_dict=True).logits.shape == (1, 6, 103)
    with pytest.raises(NotImplementedError, match="logits only"):
        tiny_model(x, output_hidden_states=True)


def test_unsupported_dream_config_options_are_refused_and_auto_map_is_not_saved():
    with pytest.raises(ValueError, match="rope_scaling"):
        DreamConfig(rope_scaling={"rope_type": "linear", "factor": 4.0})
    with pytest.raises(ValueError, match="use_sliding_window"):
        DreamConfig(use_sliding_window=True)
    config = DreamConfig(auto_map={"AutoModel": "modeling_dream.DreamModel"})
    assert "auto_map" not in config.to_dict()


def test_learned_absolute_positions_are_off_for_dream_and_round_trip_for_the_tiny_preset(tmp_path):
    assert not DreamConfig().absolute_position_embeddings
    assert build_tiny_model().model.embed_positions is None
    model = build_tiny_model(seed=2, absolute_position_embeddings=True).double().eval()
    assert model.model.embed_positions.weight.shape == (model.config.max_position_embeddings, model.config.hidden_size)
    # The same token at two positions gets different inputs; padding left with matching positions changes nothing.
    x = torch.randint(5, 100, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 9)], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    batched = model(padded, attention_mask=mask, position_ids=positions).logits[:, 4:]
    torch.testing.assert_close(batched, model(x).logits, rtol=0, atol=1e-12)
    shifted = model(padded, attention_mask=mask, position_ids=positions + 4).logits[:, 4:]
    assert not torch.allclose(shifted, batched)
    model.save_pretrained(tmp_path)
    loaded = DreamModel.from_pretrained(tmp_path, torch_dtype=torch.float64).eval()
    assert loaded.config.absolute_position_embeddings
    torch.testing.assert_close(loaded(x).logits, model(x).logits, **FLOAT64_ROUNDING)
    too_long = torch.zeros(1, model.config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="learned positions"):
        model(too_long)
