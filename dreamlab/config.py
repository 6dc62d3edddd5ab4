"""The typed training recipe (data / model / optim / diffusion / trainer) and Dream's dotted overrides.

A recipe is YAML (`dreamlab/recipes/*.yaml`, found by name, or any path); `section.key=value`
arguments override it. Unknown keys and bad values stop before anything starts, naming the key and
the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreamlab.diffusion.settings import TIME_REWEIGHTINGS, LossSettings
from dreamlab.store.health import HEARTBEAT_S, LOST_AFTER_S, STALL_AFTER_S, STALL_FACTOR
from dreamlab.store.params import flatten
from dreamlab.textfiles import read_utf8

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "tiny-arithmetic"
CUTOFF_MODES = ("none", "longest", "random", "random_with_input_pad")


class RecipeError(ValueError):
    """A recipe or override that cannot run; the message names the key and what to write instead."""


@dataclass
class DataConfig:
    """Where rows come from and how they become batches."""

    train_files: list[str] = field(default_factory=lambda: ["builtin:arithmetic"])
    val_files: list[str] = field(default_factory=lambda: ["builtin:arithmetic"])
    max_length: int = 2048
    truncation: str = "error"
    micro_batch_size_per_gpu: int = 4
    gradient_accumulation_steps: int = 1
    perbatch_cutoff_type: str = "random_with_input_pad"
    train_on_padding: bool = True
    system_prompt: str | None = None
    val_size: int | None = 256
    val_fraction: float | None = None


@dataclass
class ModelConfig:
    """Which model to start from and how to run it."""

    partial_pretrain: str = "tiny"
    trust_remote_code: bool = False
    enable_gradient_checkpointing: bool = True
    compile: bool = False
    tiny_hidden_size: int = 256
    tiny_num_layers: int = 4
    tiny_num_heads: int = 4
    tiny_intermediate_size: int = 768
    tiny_absolute_positions: bool = False

    def tiny_sizes(self) -> dict[str, int | bool]:
        """The tiny preset's size overrides (keyword arguments of `tiny_config`); KV heads are half."""
        return {"hidden_size": self.tiny_hidden_size, "num_hidden_layers": self.tiny_num_layers,
                "num_attention_heads": self.tiny_num_heads, "num_key_value_heads": max(1, self.tiny_num_heads // 2),
                "intermediate_size": self.tiny_intermediate_size,
                "absolute_position_embeddings": self.tiny_absolute_positions}


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay."""

    lr: float = 2e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_steps_ratio: float = 0.1
    clip_grad: float = 1.0
    lr_scheduler: str = "cosine"
    min_lr_ratio: float = 0.0


@dataclass
class DiffusionConfig(LossSettings):
    """The masked-diffusion loss settings: LossSettings, with CART time reweighting by default."""

    time_reweighting: str = "cart"


@dataclass
class TrainerConfig:
    """Length, checkpoints, validation and launch of a run."""

    total_epochs: int = 3
    total_training_steps: int | None = None
    save_checkpoint_steps: int | None = None
    val_check_interval: int | None = None
    checks_per_epoch: int | None = None
    log_every: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    nproc_per_node: int = 1
    # CPU threads per process (None: the cores split among the processes); 1 on a machine shared with other jobs.
    cpu_threads: int | None = None
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    max_checkpoints: int = 3
    # Where the processes start: here (torchrun, detached) or through Slurm (sbatch; docs in README "Slurm").
    launcher: str = "local"
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_time: str | None = None
    slurm_gpus_per_node: int | None = None
    slurm_args: list[str] = field(default_factory=list)
    # SIGTERM this many seconds before the time limit, so the trainer checkpoints and ends `stopped`.
    slurm_signal_s: int = 300
    slurm_requeue: bool = False
    # How a reader tells running from stalled and lost (docs/store.md "How a status is decided").
    heartbeat_s: float = HEARTBEAT_S
    lost_after_s: float = LOST_AFTER_S
    stall_after_s: float = STALL_AFTER_S
    stall_factor: float = STALL_FACTOR


@dataclass
class Recipe:
    """A whole training recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested plain dict (what is stored with a run)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value` for every setting."""
        return flatten(self.to_dict())


CHOICES = {
    "data.truncation": ("error", "drop", "left", "right"),
    "data.perbatch_cutoff_type": CUTOFF_MODES,
    "optim.lr_scheduler": ("cosine", "constant"),
    "diffusion.time_reweighting": TIME_REWEIGHTINGS,
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.launcher": ("local", "slurm"),
    "trainer.precision": ("auto", "fp32", "bf16"),
}
POSITIVE = {
    "data.max_length", "data.micro_batch_size_per_gpu", "data.gradient_accumulation_steps", "data.val_size",
    "trainer.total_epochs", "trainer.total_training_steps", "trainer.save_checkpoint_steps",
    "trainer.val_check_interval", "trainer.checks_per_epoch", "trainer.log_every", "trainer.nproc_per_node", "trainer.cpu_threads",
    "trainer.nnodes", "trainer.max_checkpoints", "model.tiny_hidden_size", "model.tiny_num_layers", "model.tiny_num_heads",
    "model.tiny_intermediate_size", "optim.lr", "optim.clip_grad", "trainer.heartbeat_s", "trainer.lost_after_s",
    "trainer.stall_after_s",
    "trainer.slurm_signal_s",
}


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(Recipe)}


def _field_types(section_type: type) -> dict[str, Any]:
    return typing.get_type_hints(section_type)


# Names people write from other trainers' habits, mapped to this recipe's key.
ALIASES = {"learning_rate": "lr", "batch_size": "micro_batch_size_per_gpu", "epochs": "total_epochs",
           "num_epochs": "total_epochs", "grad_clip": "clip_grad", "max_grad_norm": "clip_grad",
           "max_steps": "total_training_steps", "warmup_ratio": "warmup_steps_ratio", "model_name": "partial_pretrain"}


def _closest(name: str, options: list[str]) -> str:
    section, _, key = name.partition(".")
    if key in ALIASES and f"{section}.{ALIASES[key]}" in options:
        return f"; did you mean {section}.{ALIASES[key]}?"
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else f"; valid keys: {', '.join(sorted(options))}"


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise RecipeError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",")]
            value = parsed
        if not isinstance(value, list):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise RecipeError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise RecipeError(f"{key}: expected text, got {value!r}")
        return str(value)
    raise RecipeError(f"{key}: unsupported type {annotation}")


def set_value(recipe: Recipe, dotted: str, value: Any) -> None:
    """Set `section.key` to value (coerced to its type), refusing unknown keys with a suggestion."""
    sections = _sections()
    section, _, key = dotted.partition(".")
    all_keys = [f"{s}.{k}" for s, t in sections.items() for k in _field_types(t)]
    if section not in sections or not key:
        raise RecipeError(f"unknown recipe key {dotted!r}{_closest(dotted, all_keys)}")
    types_ = _field_types(sections[section])
    if key not in types_:
        raise RecipeError(f"unknown recipe key {dotted!r}{_closest(dotted, all_keys)}")
    setattr(getattr(recipe, section), key, _coerce(dotted, value, types_[key]))


def parse_override(text: str) -> tuple[str, str]:
    """Split `section.key=value`."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise RecipeError(f"override {text!r}: expected section.key=value (e.g. optim.lr=2e-6)")
    return key.strip(), value.strip()


def split_recipe_args(words: list[str] | None) -> tuple[str | None, list[str]]:
    """`[RECIPE] key=value ...` -> (recipe name or None, overrides)."""
    words = list(words or [])
    name = words.pop(0) if words and "=" not in words[0] else None
    return name, words


def find_recipe(name_or_path: str) -> Path:
    """A recipe path: an existing file, or a name in dreamlab/recipes (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(f"no recipe {name_or_path!r}: not a file, and the packaged recipes are {', '.join(names)}")


def load_recipe(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe (default: the tiny CPU recipe), apply overrides, validate."""
    recipe = Recipe()
    _apply_recipe_file(recipe, find_recipe(name_or_path or DEFAULT_RECIPE), seen=())
    for text in overrides:
        set_value(recipe, *parse_override(text))
    validate(recipe)
    return recipe


def _apply_recipe_file(recipe: Recipe, path: Path, seen: tuple[Path, ...]) -> None:
    """Set a recipe file's keys on `recipe`, after those of the recipe it `extends:` (if any)."""
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise RecipeError(f"{path}: extends itself through {chain}")
    try:
        document = yaml.safe_load(read_utf8(path, RecipeError)) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())  # a ReaderError's text has lines
        raise RecipeError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(document, dict):
        raise RecipeError(f"{path}: expected sections data / model / optim / diffusion / trainer")
    base = document.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise RecipeError(f"{path}: extends: expected a recipe name or path, got {base!r}")
        try:
            base_path = find_recipe(base)
        except RecipeError as error:
            raise RecipeError(f"{path}: extends: {error}") from None
        _apply_recipe_file(recipe, base_path, (*seen, path.resolve()))
    for section, values in document.items():
        if not isinstance(values, dict):
            raise RecipeError(f"{path}: section {section!r} must be a mapping of keys to values")
        for key, value in values.items():
            try:
                set_value(recipe, f"{section}.{key}", value)
            except RecipeError as error:
                raise RecipeError(f"{path}: {error}") from None


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    """Rebuild a recipe from `Recipe.to_dict()` output (e.g. a stored run's recipe)."""
    recipe = Recipe()
    for section, items in values.items():
        for key, value in items.items():
            set_value(recipe, f"{section}.{key}", value)
    validate(recipe)
    return recipe


def _validate_held_out(flat: dict[str, Any]) -> None:
    """data.val_fraction in [0, 1), and not beside val_files: one source of validation rows."""
    fraction = flat["data.val_fraction"]
    if fraction is None:
        return
    if not 0 <= fraction < 1:
        raise RecipeError(f"data.val_fraction: must be in [0, 1), got {fraction}")
    if fraction > 0 and flat["data.val_files"]:
        raise RecipeError("data.val_fraction holds out training rows for validation, but data.val_files also names "
                          "validation rows: set data.val_files=[] or data.val_fraction=null")


SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_time_seconds(text: str) -> int | None:
    """A Slurm `--time` in seconds (minutes, m:s, h:m:s, d-h, d-h:m, d-h:m:s); None for INFINITE / UNLIMITED."""
    if text.strip().upper() in ("INFINITE", "UNLIMITED"):
        return None
    match = SLURM_TIME.match(text.strip())
    if not match:
        raise RecipeError(f"trainer.slurm_time: {text!r} is not a Slurm time (minutes, minutes:seconds, "
                          "hours:minutes:seconds, days-hours, days-hours:minutes or days-hours:minutes:seconds)")
    days, first, second, third = match.groups()
    if days is not None:  # d-h, d-h:m, d-h:m:s
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if third is not None:  # h:m:s
        return (int(first) * 60 + int(second)) * 60 + int(third)
    return int(first) * 60 + int(second or 0)  # m or m:s


def _validate_slurm(flat: dict[str, Any]) -> None:
    """trainer.slurm_args are KEY=VALUE sbatch options; GPUs per node are not negative; the time-limit warning
    comes after the job starts."""
    for item in flat["trainer.slurm_args"]:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or key.startswith("-"):
            raise RecipeError(f"trainer.slurm_args: {item!r} is not KEY=VALUE (an sbatch long option without "
                              "its dashes, e.g. mem=64G or constraint=a100)")
    gpus = flat["trainer.slurm_gpus_per_node"]
    if gpus is not None and gpus < 0:
        raise RecipeError(f"trainer.slurm_gpus_per_node: must be >= 0, got {gpus}")
    limit = None if flat["trainer.slurm_time"] is None else slurm_time_seconds(str(flat["trainer.slurm_time"]))
    if limit is not None and flat["trainer.slurm_signal_s"] >= limit:
        # Slurm would send the warning as the job starts: the run would checkpoint and stop after its first step.
        raise RecipeError(f"trainer.slurm_signal_s: the time-limit warning {flat['trainer.slurm_signal_s']} s before "
                          f"the end comes before the job starts under trainer.slurm_time={flat['trainer.slurm_time']} "
                          f"({limit} s): set trainer.slurm_signal_s below {limit} (e.g. {max(1, limit // 4)})")


def validate(recipe: Recipe, context_length: int | None = None) -> None:
    """Refuse values that cannot run: wrong choices, zero or negative sizes, max_length over the context."""
    flat = recipe.flat()
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise RecipeError(f"{key}: {flat[key]!r} is not one of {', '.join(allowed)}")
    for key, value in flat.items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise RecipeError(f"{key}: must be a finite number, got {value}")
    for key in POSITIVE:
        value = flat[key]
        if value is not None and value <= 0:
            raise RecipeError(f"{key}: must be > 0, got {value}")
    for key in ("optim.warmup_steps_ratio", "optim.min_lr_ratio"):
        if not 0 <= flat[key] <= 1:
            raise RecipeError(f"{key}: must be in [0, 1], got {flat[key]}")
    if flat["optim.weight_decay"] < 0:
        raise RecipeError(f"optim.weight_decay: must be >= 0, got {flat['optim.weight_decay']}")
    if not 0 < flat["diffusion.eps"] < 1:
        raise RecipeError(f"diffusion.eps: must be in (0, 1), got {flat['diffusion.eps']}")
    if flat["trainer.seed"] < 0:
        raise RecipeError(f"trainer.seed: must be >= 0, got {flat['trainer.seed']}")
    if flat["trainer.stall_factor"] < 0:
        raise RecipeError(f"trainer.stall_factor: must be >= 0, got {flat['trainer.stall_factor']}")
    if flat["trainer.lost_after_s"] < 3 * flat["trainer.heartbeat_s"]:
        raise RecipeError(f"trainer.lost_after_s: must be at least 3 x trainer.heartbeat_s "
                          f"({3 * flat['trainer.heartbeat_s']:g}), got {flat['trainer.lost_after_s']:g}")
    if not 0 < flat["diffusion.cart_p"] <= 1:
        raise RecipeError(f"diffusion.cart_p: must be in (0, 1], got {flat['diffusion.cart_p']}")
    if len(flat["optim.betas"]) != 2 or not all(0 <= b < 1 for b in flat["optim.betas"]):
        raise RecipeError(f"optim.betas: expected two numbers in [0, 1), got {flat['optim.betas']}")
    if not flat["data.train_files"]:
        raise RecipeError("data.train_files: name at least one file (or builtin:arithmetic)")
    _validate_held_out(flat)
    _validate_slurm(flat)
    if flat["trainer.checks_per_epoch"] is not None:
        for key in ("trainer.save_checkpoint_steps", "trainer.val_check_interval"):
            if flat[key] is not None:
                raise RecipeError(f"trainer.checks_per_epoch sets the checkpoint and validation intervals: "
                                  f"set {key}=null, or trainer.checks_per_epoch=null to use {key}")
    if context_length is not None and flat["data.max_length"] > context_length:
        raise RecipeError(
            f"data.max_length: {flat['data.max_length']} is above the model's context of {context_length} "
            "positions (config.max_position_embeddings)"
        )
