"""The tiny preset's tokenizer: characters, Dream's special tokens and a Qwen-style chat template.

Built with the `tokenizers` library at run time (deterministically), so no file needs shipping;
it saves and reloads through `AutoTokenizer` like any Hugging Face tokenizer.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
UNK_TOKEN = "<|unk|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

SPECIAL_TOKENS = [EOS_TOKEN, MASK_TOKEN, IM_START, IM_END, UNK_TOKEN]
# Think tags are ordinary (non-special) added tokens: one id each, and kept by skip_special_tokens.
WORD_TOKENS = [THINK_OPEN, THINK_CLOSE]
CHARACTERS = ["\n"] + [chr(c) for c in range(32, 127)]

# Qwen's template without its default system message: a system turn appears only when given.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer: ids 0-4 special, 5-6 think tags, then characters."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORD_TOKENS + CHARACTERS)}
    assert set(string.printable) - set(vocab) <= {"\t", "\r", "\x0b", "\x0c"}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in WORD_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        bos_token=None,
        mask_token=MASK_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        padding_side="left",
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
