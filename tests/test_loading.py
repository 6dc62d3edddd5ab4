"""Loading by name: the tiny preset, checkpoint folders, and Dream's remote-code tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dreamlab.models import build_tiny_model
from dreamlab.models.loading import load_model_and_tokenizer, load_tokenizer

DREAM_TOKENIZER_CONFIG = {
    "tokenizer_class": "DreamTokenizer",
    "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
    "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>", "bos_token": None,
    "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
}


def write_dream_like_bpe(folder) -> None:
    """A byte-level BPE saved as vocab.json + merges.txt with Dream's remote-code tokenizer config."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"])
    bpe.train_from_iterator(["Solve: 27 + 45 is 72", "hello world"] * 10, trainer)
    bpe.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps(DREAM_TOKENIZER_CONFIG))


def test_dreams_remote_code_tokenizer_loads_as_its_bpe_without_running_code(tmp_path):
    write_dream_like_bpe(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert (tokenizer.mask_token, tokenizer.mask_token_id) == ("<|mask|>", 3)
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    assert tokenizer.decode(tokenizer("Solve: 27 + 45").input_ids) == "Solve: 27 + 45"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_remote_tokenizer_without_vocabulary_files_names_the_fix(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(DREAM_TOKENIZER_CONFIG))
    with pytest.raises(FileNotFoundError, match="--trust-remote-code"):
        load_tokenizer(str(tmp_path))


def test_a_checkpoint_folder_loads_with_its_tokenizer_in_the_asked_dtype(tmp_path, tokenizer):
    build_tiny_model(seed=4).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_model_and_tokenizer(str(tmp_path), device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert loaded.mask_token_id == model.config.mask_token_id == 1
    with pytest.raises(ValueError, match="dtype must be"):
        load_model_and_tokenizer("tiny", dtype="float8")
