"""Dream's diffusion sampler, with per-row reveal counts and no-op step elision.

The loop (for one block; without `block_length` the whole sequence is one block):
  x = prompt + max_new_tokens masks; timesteps = linspace(1, eps, steps + 1) in float32.
  Each step i: n = masks left in the block (per row), k = floor(n * (1 - s/t)) (n on the last step).
  Run the model, shift the logits, pick a token and a confidence for each masked position, and
  reveal the k most confident ones (`origin`: reveal each with probability 1 - s/t instead).

What differs from Dream (see docs/dream-reference.md): k is counted per row, so a row's output does
not depend on its batch neighbours; the mask token is never chosen as a revealed token; and a step
whose k is 0 for every row is skipped without calling the model, which cannot change the result
because k never depends on the logits for the confidence-based algorithms: identical tokens at
temperature 0; when sampling, the same distribution but not Dream's random stream (Dream also draws
tokens on steps that reveal nothing; with elision off, dreamlab draws exactly as Dream does).

`threshold` (Fast-dLLM's parallel decoding) runs inside Dream's schedule: each step reveals the
max(k, 1) most confident positions plus every position whose chosen token has p >= threshold, so
`steps` still bounds the model calls; with steps == max_new_tokens (k = 1) it is Fast-dLLM's
"top-1 plus everything above the threshold" rule. `factor` and `gamma` (see rules.py) likewise
reveal the max(k, n_rule) most confident positions, n_rule >= 1 counted per row; `commit_gap`
reveals a row's whole block once its top-2 gap says the answer has converged. With any of the
first three, a block ends as soon as it has no masks, so NFE <= blocks * min(steps per block,
block_length); the schedule alone (and commit_gap) makes exactly one call per step with k > 0.

`cache` ("prefix" / "dual", cache.py) swaps the model call for Fast-dLLM's block-wise KV cache: the
first call of each block is a full forward that refreshes the cache, later calls run a window.
NFE counts both kinds; `full_forwards` counts the refreshes (one per block that calls the model).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dreamlab.diffusion.cache import BlockCache
from dreamlab.diffusion.loss import shift_logits
from dreamlab.diffusion.rules import entropies, entropy_bound_count, factor_count, top2_gaps
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.diffusion.tokens import confidence_scores, draw_tokens, token_probabilities

TokensHook = Callable[[int | None, torch.Tensor, torch.Tensor | None], torch.Tensor]
LogitsHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerHooks:
    """Dream's two hooks: `tokens(step, x, logits)` after each step (and once with step None before
    the first), `logits(step, x, logits)` on the shifted logits before each model-backed step.

    With a cache, a step computes only a window's logits: `tokens` then gets None for them and a
    `logits` hook is refused."""

    tokens: TokensHook | None = None
    logits: LogitsHook | None = None


@dataclass
class GenerateOutput:
    """The sequences [B, prompt + new], the number of model calls, and the optional history.

    `row_nfe[r]` counts the calls in which row r had positions to fill: what the row would cost alone
    (the batch's `nfe` is at least the most over its rows: with a parallel rule, rows finish a block
    at different steps). `full_forwards` counts full-sequence calls (every call without a cache,
    the refreshes with one).
    """

    sequences: torch.Tensor
    nfe: int
    settings: SamplerSettings
    history: list[torch.Tensor] | None = field(default=None, repr=False)
    row_nfe: list[int] = field(default_factory=list)
    full_forwards: int = 0


def reveal_counts(num_masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last: bool) -> torch.Tensor:
    """k = floor(n * (1 - s/t)) per row in float32, as Dream computes it (all of n on the last step)."""
    if last:
        return num_masked.clone()
    return (num_masked.to(torch.float32) * (1 - s / t)).long()


def reveal_schedule(num_masked: int, steps: int, eps: float = 1e-3) -> list[int]:
    """The k of every step for a row starting with `num_masked` masks (confidence-based algs)."""
    timesteps = torch.linspace(1, eps, steps + 1)
    remaining = torch.tensor([num_masked])
    schedule = []
    for i in range(steps):
        k = reveal_counts(remaining, timesteps[i], timesteps[i + 1], last=i == steps - 1)
        schedule.append(int(k[0]))
        remaining = remaining - k
    return schedule


def _row_generators(seed: int | Sequence[int] | None, batch: int, device: torch.device) -> list[torch.Generator | None]:
    if seed is None:
        return [None] * batch
    seeds = [seed + row for row in range(batch)] if isinstance(seed, int) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch} rows")
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _context_length(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def _prepare_attention(
    attention_mask: torch.Tensor | None, input_ids: torch.Tensor, total_length: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Dream's left-padding handling: a [B, 1, N, N] boolean mask and positions cumsum - 1."""
    if attention_mask is None:
        return None, None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids shape {tuple(input_ids.shape)}"
        )
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None, None
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError("prompts must be left-padded: a padded position (attention 0) follows a real token")
    batch, prompt_length = mask.shape
    full = torch.cat([mask, mask.new_ones(batch, total_length - prompt_length)], dim=1)
    position_ids = full.long().cumsum(-1) - 1
    position_ids.masked_fill_(~full, 1)
    # Every query (pads included) sees the real keys only: real rows see what Dream's mask shows
    # them, and no row is fully masked, which would make SDPA return NaN.
    keys = full[:, None, None, :].expand(batch, 1, total_length, total_length)
    return keys, position_ids


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    seed: int | Sequence[int] | None = 0,
    hooks: SamplerHooks | None = None,
    return_history: bool = False,
    mask_token_id: int | None = None,
    refresh_cache_every_call: bool = False,
    **values: Any,
) -> GenerateOutput:
    """Generate `max_new_tokens` after each (left-padded) prompt with Dream's diffusion sampler.

    `values` are SamplerSettings' fields (max_new_tokens, steps, alg, temperature, ...). `seed` is
    an int (row r uses seed + r), one seed per row (a row's draws then do not depend on its position
    in the batch), or None (torch's default generator state). `refresh_cache_every_call` refreshes a
    cache before every windowed call (two forwards a step, NFE counts one): the output then equals
    cache=None's, which checks the cache machinery; it is not a speed setting.
    """
    settings = SamplerSettings(**values)
    if settings.cache is not None and hooks is not None and hooks.logits is not None:
        raise ValueError("a logits hook needs every position's logits, which a cached step does not compute: use cache=None")
    max_new_tokens = settings.max_new_tokens
    if mask_token_id is None:
        mask_token_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    if mask_token_id is None:
        raise ValueError("the model has no mask token: model.config.mask_token_id is unset; pass mask_token_id=")
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, prompt_length] with a non-empty prompt; got {tuple(input_ids.shape)}")
    prompt_lengths = input_ids.shape[1] if attention_mask is None else int(attention_mask.sum(1).max())
    context = _context_length(model)
    if context is not None and prompt_lengths + max_new_tokens > context:
        raise ValueError(
            f"prompt ({prompt_lengths} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context of {context} positions (config.max_position_embeddings)"
        )
    return _Sampler(model, settings, mask_token_id, hooks or SamplerHooks(), return_history,
                    refresh_cache_every_call).run(input_ids, attention_mask, seed)


class _Sampler:
    """One generation call's state; `run` is the loop described in the module docstring."""

    def __init__(self, model, settings: SamplerSettings, mask_token_id: int, hooks: SamplerHooks, keep_history: bool,
                 refresh_cache_every_call: bool = False):
        self.model = model
        self.settings = settings
        self.mask_id = mask_token_id
        self.hooks = hooks
        self.history: list[torch.Tensor] | None = [] if keep_history else None
        self.nfe = 0
        self.refresh_cache_every_call = refresh_cache_every_call

    def run(self, input_ids, attention_mask, seed) -> GenerateOutput:
        s = self.settings
        batch, prompt_length = input_ids.shape
        total = prompt_length + s.max_new_tokens
        device = input_ids.device
        x = torch.cat([input_ids, input_ids.new_full((batch, s.max_new_tokens), self.mask_id)], dim=1)
        self.attention, self.position_ids = _prepare_attention(attention_mask, input_ids, total)
        self.cache = None if s.cache is None else BlockCache(self.model, s.cache, self.attention, self.position_ids,
                                                             self.refresh_cache_every_call)
        self.row_nfe = [0] * batch
        self.keep = self._logits_to_keep(input_ids, s.max_new_tokens)
        self.generators = _row_generators(seed, batch, device)
        # Per-row choices look at the row from its first real token on, so a padded row picks
        # (ties and random draws included) exactly as it would alone.
        self.row_starts = [0] * batch if attention_mask is None else (attention_mask.shape[1] - attention_mask.sum(1)).tolist()
        steps_per_block = s.steps // s.num_blocks
        # Dream builds the schedule on the model's device; its float32 values decide every k.
        timesteps = torch.linspace(1, s.eps, steps_per_block + 1, device=device).cpu()
        if self.hooks.tokens is not None:
            x = self.hooks.tokens(None, x, None)
        for block in range(s.num_blocks):
            if s.block_length is None:
                region = slice(0, total)  # Dream: every mask in the sequence, prompt included
            else:
                start = prompt_length + block * s.block_length
                region = slice(start, start + s.block_length)
            for i in range(steps_per_block):
                step = block * steps_per_block + i
                x = self.step(x, step, block, region, timesteps[i], timesteps[i + 1], last=i == steps_per_block - 1)
                if self.history is not None:
                    self.history.append(x.clone())
        full = self.nfe if self.cache is None else self.cache.full_forwards
        return GenerateOutput(sequences=x, nfe=self.nfe, settings=s, history=self.history, row_nfe=self.row_nfe,
                              full_forwards=full)

    def _logits_to_keep(self, input_ids, max_new_tokens: int) -> int:
        """How many trailing positions need logits (0: all): the new tokens and the last prompt position, whose
        shifted logits predict the first new token. Only for a model that takes `logits_to_keep`, without a
        cache or hooks (they see every position's logits) and when the prompt holds no mask to fill."""
        hooked = self.hooks.tokens is not None or self.hooks.logits is not None
        if self.settings.cache is not None or hooked or bool((input_ids == self.mask_id).any()):
            return 0
        try:
            accepts = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            accepts = False
        return max_new_tokens + 1 if accepts else 0

    def forward(self, x, block: int, region: slice) -> tuple[torch.Tensor, int]:
        """Unshifted logits for columns [offset, offset + n) of x, and offset: the model, or the cache."""
        self.nfe += 1
        if self.cache is not None:
            return self.cache.logits(x, block, region.start, region.stop)
        if self.keep:  # the prompt's logits are never read: an lm_head over 152k tokens skips them
            logits = self.model(input_ids=x, attention_mask=self.attention, position_ids=self.position_ids,
                                logits_to_keep=self.keep).logits
            return logits, x.shape[1] - self.keep
        return self.model(input_ids=x, attention_mask=self.attention, position_ids=self.position_ids).logits, 0

    def step(self, x, step: int, block: int, region: slice, t, s_next, last: bool) -> torch.Tensor:
        cfg = self.settings
        active = torch.zeros_like(x, dtype=torch.bool)
        active[:, region] = x[:, region] == self.mask_id
        remaining = active.sum(1).cpu()
        k = reveal_counts(remaining, t, s_next, last)
        # Rules that reveal at least one token a step run whenever a mask is left.
        eager = cfg.alg == "origin" or cfg.parallel_rule is not None
        needs_model = bool((remaining > 0).any()) if eager else bool((k > 0).any())
        if cfg.elide_noop_steps and not needs_model:
            return self.hooks.tokens(step, x, None) if self.hooks.tokens is not None else x
        if cfg.elide_noop_steps and not eager:
            # Rows that reveal nothing this step draw nothing either, exactly as when they run
            # alone and the step is skipped: batched sampling then stays batch-invariant.
            idle = k == 0
            if bool(idle.any()):
                active[idle.to(x.device)] = False
                remaining = torch.where(idle, 0, remaining)
        logits, offset = self.forward(x, block, region)
        for row, busy in enumerate(active.any(1).tolist()):
            self.row_nfe[row] += busy
        shifted = None
        if offset == 0 and (self.hooks.logits is not None or self.hooks.tokens is not None):
            shifted = shift_logits(logits)
            if self.hooks.logits is not None:
                shifted = self.hooks.logits(step, x, shifted)
            masked_logits = shifted[active]
        else:
            # Shift only the rows we need: position p reads the logits of p - 1 (position 0 its own).
            rows, cols = active.nonzero(as_tuple=True)
            masked_logits = logits[rows, (cols - 1).clamp_min(0) - offset]
        # A revealed position must hold a real token: Dream can pick the mask token itself.
        masked_logits[:, self.mask_id] = -torch.inf
        probs = token_probabilities(masked_logits, cfg.temperature, cfg.top_p, cfg.top_k)
        counts = remaining.tolist()
        if cfg.alg == "origin":
            x = self._reveal_at_random(x, active, probs, counts, t, s_next, last)
        else:
            x = self._reveal_most_confident(x, active, probs, counts, k.tolist(), masked_logits)
        if self.hooks.tokens is not None:
            x = self.hooks.tokens(step, x, shifted)
        return x

    def _reveal_at_random(self, x, active, probs, counts, t, s_next, last) -> torch.Tensor:
        """`origin`: each masked position is revealed with probability 1 - s/t (1 on the last step)."""
        cfg = self.settings
        p_transfer = 1.0 if last else (1 - s_next / t).to(x.device)
        chunks = torch.split(probs, counts)
        values = x[active]
        offset = 0
        for row, (chunk, generator) in enumerate(zip(chunks, self.generators)):
            n = chunk.shape[0]
            if n:
                transfer = torch.rand(n, device=x.device, generator=generator) < p_transfer
                if bool(transfer.any()):
                    _, tokens = draw_tokens(chunk[transfer], cfg.temperature, [int(transfer.sum())], [generator])
                    piece = values[offset : offset + n]
                    piece[transfer] = tokens
            offset += n
        x = x.clone()
        x[active] = values
        return x

    def _per_position(self, x, active, values: torch.Tensor) -> torch.Tensor:
        """Values of the masked positions laid out over x's shape (0 elsewhere)."""
        full = torch.zeros(x.shape, dtype=values.dtype, device=x.device)
        full[active] = values
        return full

    def _reveal_most_confident(self, x, active, probs, counts, k, masked_logits) -> torch.Tensor:
        """Confidence algs: reveal the k_r most confident masked positions of each row r (k_r raised by a rule)."""
        cfg = self.settings
        chosen_probability, x0 = draw_tokens(probs, cfg.temperature, counts, self.generators)
        confidence = confidence_scores(probs, chosen_probability, cfg.alg)
        full_confidence = torch.full(x.shape, -torch.inf, dtype=confidence.dtype, device=x.device)
        full_confidence[active] = confidence
        candidates = torch.full_like(x, self.mask_id)
        candidates[active] = x0
        if cfg.threshold is not None:
            sure = torch.zeros_like(active)
            sure[active] = chosen_probability >= cfg.threshold
        rule_values = None
        if cfg.factor is not None:
            rule_values = self._per_position(x, active, chosen_probability)
        elif cfg.gamma is not None:
            rule_values = self._per_position(x, active, entropies(probs))
        gaps = None if cfg.commit_gap is None else self._per_position(x, active, top2_gaps(masked_logits))
        x = x.clone()
        for row, (n, k_row) in enumerate(zip(counts, k)):
            if n == 0:
                continue
            if gaps is not None and k_row > 0 and float(gaps[row][active[row]].mean()) >= cfg.commit_gap:
                k_row = n  # the answer has converged: commit the row's whole block now
            if cfg.parallel_rule is not None:
                k_row = max(k_row, 1)
            if k_row == 0:
                continue
            start = self.row_starts[row]
            scores = full_confidence[row : row + 1, start:]
            if rule_values is not None:
                order = torch.topk(scores, n).indices[0] + start
                ruled = rule_values[row, order]
                n_rule = factor_count(ruled, cfg.factor) if cfg.factor is not None else entropy_bound_count(ruled, cfg.gamma)
                picked = order[: max(k_row, n_rule)]
            elif cfg.alg_temp:
                weights = torch.softmax(scores / cfg.alg_temp, dim=-1)
                picked = torch.multinomial(weights, k_row, generator=self.generators[row])[0] + start
            else:
                picked = torch.topk(scores, k_row).indices[0] + start
            if cfg.threshold is not None:
                extra = sure[row].nonzero(as_tuple=True)[0]
                picked = torch.cat([picked, extra]).unique()
            x[row, picked] = candidates[row, picked]
        return x
