"""Load a model and its tokenizer by name: the tiny preset, a local folder, or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Tokenizer

# Importing dreamlab.models.tiny runs dreamlab/models/__init__.py first: that registers the Dream classes with the Auto factories.
from dreamlab.models.tiny import TINY_NAME, build_tiny_model
from dreamlab.models.tokenizer import build_char_tokenizer
from dreamlab.textfiles import read_json_object


def pick_device(device: str = "auto") -> torch.device:
    """`auto` means the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` means bfloat16 on a GPU and float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16; got {dtype!r}") from None


def load_model_and_tokenizer(
    spec: str = TINY_NAME,
    *,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """`tiny` builds the preset (weights from `seed`); anything else goes to `from_pretrained`.

    A folder holding a Dream-v0 checkpoint loads into dreamlab's own class; remote code runs only
    when `trust_remote_code` is passed.
    """
    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    if spec == TINY_NAME:
        model, tokenizer = build_tiny_model(seed=seed), build_char_tokenizer()
    else:
        path = Path(spec).expanduser()
        looks_local = path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1
        if looks_local and not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model at {spec}: expected a folder with config.json and safetensors weights")
        source = str(path) if looks_local else spec
        model = AutoModel.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    return model.to(device=target, dtype=torch_dtype).eval(), tokenizer


def _names_remote_tokenizer(folder: Path) -> bool:
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return False
    return "AutoTokenizer" in read_json_object(config_file, ValueError).get("auto_map", {})


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer, except for a local folder whose tokenizer is remote code that is not trusted.

    Dream-v0 ships `DreamTokenizer` as remote code over a plain Qwen2 byte-level BPE; without
    trust_remote_code we load that BPE (tokenizer.json, else vocab.json + merges.txt) directly, with
    the special tokens and chat template from tokenizer_config.json, instead of asking at a prompt.
    """
    folder = Path(source)
    if trust_remote_code or not _names_remote_tokenizer(folder):
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(source)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return Qwen2Tokenizer.from_pretrained(source)
    raise FileNotFoundError(
        f"{source}: the tokenizer is remote code and there is no tokenizer.json or vocab.json + merges.txt to load "
        "without it; pass --trust-remote-code to run the folder's own tokenizer code"
    )
