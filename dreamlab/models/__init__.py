"""Dream-compatible models, the tiny preset and its tokenizer."""

from transformers import AutoConfig, AutoModel

from dreamlab.models.configuration import DREAM_MODEL_TYPE, DreamConfig
from dreamlab.models.modeling import DreamModel
from dreamlab.models.tiny import TINY_NAME, build_tiny_model, tiny_config
from dreamlab.models.tokenizer import build_char_tokenizer

AutoConfig.register(DREAM_MODEL_TYPE, DreamConfig, exist_ok=True)
AutoModel.register(DreamConfig, DreamModel, exist_ok=True)

__all__ = [
    "DreamConfig",
    "DreamModel",
    "TINY_NAME",
    "build_char_tokenizer",
    "build_tiny_model",
    "tiny_config",
]
