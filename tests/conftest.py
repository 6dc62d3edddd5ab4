"""Shared fixtures: the tiny model and tokenizer, built in-process (no downloads)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dreamlab.models import build_char_tokenizer, build_tiny_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model():
    """A random tiny model with a wider init than training uses, so its distributions are peaky."""
    return build_tiny_model(seed=0, initializer_range=0.1).eval()


@pytest.fixture(scope="session")
def tiny_model_f64(tiny_model):
    """The same weights in float64: batch-invariance checks then never meet float ties."""
    return build_tiny_model(seed=0, initializer_range=0.1).to(torch.float64).eval()


@pytest.fixture
def one_process(tmp_path):
    """A 1-process gloo group, as torchrun gives a worker; the trainer's signal handlers are undone after."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
