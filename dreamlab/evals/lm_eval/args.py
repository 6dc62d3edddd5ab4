"""`--model_args` for the lm-eval bridge: the model to load, SamplerSettings' fields and a few bridge options."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from dreamlab.diffusion.settings import SamplerSettings, field_types

DEFAULT_MAX_NEW_TOKENS = 256  # lm-eval's own default max_gen_toks
_SAMPLER_TYPES = field_types(SamplerSettings)
_BRIDGE_KEYS = ("pretrained", "dtype", "seed", "add_bos_token", "trust_remote_code")


@dataclass(frozen=True)
class BridgeArgs:
    """What `--model_args` asks for: the model, the sampler's settings (a request's max_gen_toks overrides
    max_new_tokens) and how prompts are encoded."""

    pretrained: str
    sampler: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    seed: int = 0
    add_bos_token: bool = False
    trust_remote_code: bool = False

    def settings(self, max_new_tokens: int | None = None) -> SamplerSettings:
        """The sampler settings for a request that asks for `max_new_tokens` (None: the model_args' own)."""
        values = dict(self.sampler)
        if max_new_tokens is not None:
            values["max_new_tokens"] = max_new_tokens
        return SamplerSettings(**values)


def parse_model_args(values: dict[str, Any]) -> BridgeArgs:
    """Check and convert lm-eval's parsed `--model_args`; a bad key or value is a ValueError naming it."""
    known = (*_BRIDGE_KEYS, *_SAMPLER_TYPES)
    for key in values:
        if key not in known:
            raise ValueError(f"model_args: unknown key {key!r}; expected one of {', '.join(known)}")
    if not values.get("pretrained"):
        raise ValueError("model_args: pretrained= is required (a checkpoint folder, a hub id or tiny)")
    if "steps" not in values:
        raise ValueError("model_args: steps= is required (the sampler's number of denoising steps)")
    sampler = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    sampler.update({key: _convert(key, value, _SAMPLER_TYPES[key]) for key, value in values.items() if key in _SAMPLER_TYPES})
    try:
        SamplerSettings(**sampler)
    except ValueError as error:
        raise ValueError(f"model_args: {error}") from None
    bridge = {f.name: f.type for f in fields(BridgeArgs)}
    options = {key: _convert(key, values[key], {"str": str, "int": int, "bool": bool}[bridge[key]])
               for key in _BRIDGE_KEYS if key in values and key != "pretrained"}
    return BridgeArgs(pretrained=str(values["pretrained"]), sampler=sampler, **options)


def _convert(key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    elif kind is str:
        return str(value)
    elif kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"model_args: {key} must be {kind.__name__}; got {value!r}")
