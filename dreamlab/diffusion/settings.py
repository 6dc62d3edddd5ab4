"""The diffusion settings as plain data (no torch): what the loss and the sampler accept.

`SamplerSettings` is the one definition of a sampler setting: eval grid cells, task defaults, the
`evals` table's columns, eval records and `dreamlab eval`'s options derive from its fields.
`LossSettings` is the recipe's `diffusion` section (config.DiffusionConfig derives from it).
"""

from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass, fields

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
CACHE_MODES = ("prefix", "dual")
# Rules that reveal at least one token a step beyond the schedule (at most one of them per cell).
PARALLEL_RULES = ("threshold", "factor", "gamma")
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
    cache: str | None = None
    factor: float | None = None
    gamma: float | None = None
    commit_gap: float | None = None

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
        if self.threshold is not None and not 0 < self.threshold <= 1:
            problems.append(f"threshold must be in (0, 1]; got {self.threshold}")
        if self.factor is not None and not self.factor > 0:
            problems.append(f"factor must be > 0; got {self.factor}")
        if self.gamma is not None and not self.gamma >= 0:
            problems.append(f"gamma must be >= 0; got {self.gamma}")
        if self.commit_gap is not None and not self.commit_gap > 0:
            problems.append(f"commit_gap must be > 0; got {self.commit_gap}")
        rules = [name for name in (*PARALLEL_RULES, "commit_gap") if getattr(self, name) is not None]
        if len([name for name in rules if name in PARALLEL_RULES]) > 1:
            problems.append(f"use one parallel-decoding rule at a time; got {' and '.join(r for r in rules if r in PARALLEL_RULES)}")
        for name in rules:
            if self.alg == "origin":
                problems.append(f"{name} needs a confidence-based alg (maskgit_plus, topk_margin or entropy), not origin")
        if (self.factor is not None or self.gamma is not None) and self.alg_temp:
            problems.append("factor and gamma reveal in confidence order: leave alg_temp unset")
        if self.parallel_rule is not None and self.temperature > 0:
            # Fast-dLLM's issues: threshold decoding while sampling took HumanEval from 55 to 1.
            problems.append(f"{self.parallel_rule} with temperature > 0 is a known trap (confidences of sampled "
                            "tokens collapse parallel decoding): use temperature 0")
        if self.cache is not None:
            if self.cache not in CACHE_MODES:
                problems.append(f"cache must be one of {', '.join(CACHE_MODES)} (or none); got {self.cache!r}")
            elif self.block_length is None:
                problems.append(f"cache={self.cache} needs block_length (the cache is refreshed at each block's start)")
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
        if self.parallel_rule is not None and self.block_length is None:
            warnings.warn(f"{self.parallel_rule} without block_length decodes the whole answer as one block: parallel "
                          "decoding alone took Dream-Instruct's HumanEval from 55.5 to 5.5 (early EOS); set block_length",
                          UserWarning, stacklevel=3)

    @property
    def parallel_rule(self) -> str | None:
        """The parallel-decoding rule in use (threshold, factor or gamma), or None for the plain schedule."""
        return next((name for name in PARALLEL_RULES if getattr(self, name) is not None), None)

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
