"""The diffusion settings as plain data (no torch): what the loss and the sampler accept.

`SamplerSettings` is the one definition of a sampler setting: eval grid cells, task defaults, the
`evals` table's columns, eval records and `dreamlab eval`'s options derive from its fields.
`LossSettings` is the recipe's `diffusion` section (config.DiffusionConfig derives from it).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
TIME_REWEIGHTINGS = ("original", "linear", "cart", "none")


@dataclass(frozen=True)
class SamplerSettings:
    """Every sampler setting that can change an answer; recorded with each result."""

    max_new_tokens: int
    steps: int
    alg: str = "origin"
    alg_temp: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eps: float = 1e-3
    block_length: int | None = None
    threshold: float | None = None
    elide_noop_steps: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.alg not in ALGORITHMS:
            problems.append(f"alg must be one of {', '.join(ALGORITHMS)}; got {self.alg!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps must be an integer >= 1; got {self.steps!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1; got {self.max_new_tokens!r}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0; got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k must be >= 1; got {self.top_k}")
        if self.alg_temp is not None and self.alg_temp < 0:
            problems.append(f"alg_temp must be >= 0; got {self.alg_temp}")
        if not 0 <= self.eps < 1:
            problems.append(f"eps must be in [0, 1); got {self.eps}")
        if self.threshold is not None:
            if not 0 < self.threshold <= 1:
                problems.append(f"threshold must be in (0, 1]; got {self.threshold}")
            if self.alg == "origin":
                problems.append("threshold needs a confidence-based alg (maskgit_plus, topk_margin or entropy), not origin")
        if self.block_length is not None and not problems:
            if self.block_length < 1 or self.max_new_tokens % self.block_length:
                problems.append(
                    f"block_length ({self.block_length}) must be >= 1 and divide max_new_tokens ({self.max_new_tokens})"
                )
            elif self.steps % (self.max_new_tokens // self.block_length):
                blocks = self.max_new_tokens // self.block_length
                problems.append(f"steps ({self.steps}) must be a multiple of the number of blocks ({blocks})")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def num_blocks(self) -> int:
        """How many semi-autoregressive blocks the generated span is split into (1 without blocks)."""
        return 1 if self.block_length is None else self.max_new_tokens // self.block_length


def field_types(settings: type) -> dict[str, type]:
    """Each field of a settings dataclass and its value type, None left out (`int | None` -> int), in field order."""
    hints = typing.get_type_hints(settings)
    return {f.name: next(a for a in typing.get_args(hints[f.name]) or (hints[f.name],) if a is not type(None))
            for f in fields(settings)}


@dataclass
class LossSettings:
    """Every setting that changes the loss value; recorded with a run."""

    time_reweighting: str = "original"
    cart_p: float = 0.1
    eps: float = 1e-3
    shift_logits: bool = True
    focal: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.time_reweighting not in TIME_REWEIGHTINGS:
            raise ValueError(
                f"time_reweighting must be one of {', '.join(TIME_REWEIGHTINGS)}; got {self.time_reweighting!r}"
            )
        if not 0.0 < self.cart_p <= 1.0:
            raise ValueError(f"cart_p must be in (0, 1]; got {self.cart_p}")
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"eps must be in [0, 1); got {self.eps}")
