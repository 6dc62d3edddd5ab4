"""`dreamlab doctor`'s checks: pure functions returning Check(status, name, message, fix); none raises.

Each check looks at one thing (versions, CUDA, NVML, NCCL, disk, the store, a model folder, a
tokenizer, a data file) and says what it found and, when it is not ok, what to do about it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 2**30
# A Dream-7B checkpoint: sharded fp32 weights + two AdamW moments (12 bytes a parameter, 7.6B
# parameters) plus the bf16 model folder (2 bytes a parameter), about 100 GiB.
SEVEN_B_CHECKPOINT_GIB = 7.6e9 * 14 / GIB
MIN_FREE_GIB = 1.0
PYTHON_MIN = (3, 10)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    status: str
    name: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return asdict(self)


def check_python() -> Check:
    """The interpreter is new enough for dreamlab."""
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < PYTHON_MIN:
        return Check(FAIL, "python", f"Python {version} is older than {'.'.join(map(str, PYTHON_MIN))}",
                     "install Python 3.10 or newer")
    return Check(OK, "python", f"Python {version}")


def check_packages(distribution: str = "dreamlab") -> list[Check]:
    """Every dependency dreamlab declares is installed at a version its requirement allows."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return [Check(FAIL, "packages", f"{distribution} is not installed as a package",
                      "pip install -e '.[test]' in the repository")]
    checks = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra (test) or another platform's dependency
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            checks.append(Check(FAIL, requirement.name, "not installed", f"pip install '{requirement}'"))
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            checks.append(Check(FAIL, requirement.name, f"{installed} installed, dreamlab needs {requirement.specifier}",
                                f"pip install '{requirement}'"))
        else:
            checks.append(Check(OK, requirement.name, installed))
    return checks


def check_cuda() -> Check:
    """torch sees CUDA devices (a warning, not a failure: the embedded default runs on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = "this torch is a CPU build" if built is None else f"torch {torch.__version__} (CUDA {built}) finds no usable GPU"
        return Check(WARN, "cuda", f"no CUDA: {why}; training and evals run on the CPU (fine for the tiny default)",
                     "on a GPU machine: pip install torch (without ==2.13.0) and check nvidia-smi")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check(OK, "cuda", f"CUDA {torch.version.cuda}: {len(names)} device(s): {', '.join(sorted(set(names)))}")


def check_gpu_memory(snapshot: Any | None = None) -> Check:
    """GPU memory per device through NVML (dreamlab.gpu), with what the s1K recipe needs."""
    from dreamlab import gpu

    snapshot = snapshot if snapshot is not None else gpu.snapshot()
    if snapshot.unavailable:
        return Check(WARN, "gpu memory", f"NVML {snapshot.unavailable}",
                     "only needed for GPU runs: install the NVIDIA driver (nvidia-smi must work)")
    parts = []
    smallest = None
    for device in snapshot.devices:
        if device.memory_total_mib is None:
            parts.append(f"{device.index}: memory unknown")
            continue
        total = device.memory_total_mib / 1024
        used = (device.memory_used_mib or 0) / 1024
        smallest = total if smallest is None else min(smallest, total)
        parts.append(f"{device.index} {device.name or ''} {used:.1f}/{total:.1f} GiB used".replace("  ", " "))
    message = f"{len(snapshot.devices)} GPU(s): " + "; ".join(parts)
    if smallest is not None and smallest < 24:
        return Check(WARN, "gpu memory", message + " (under 24 GiB: Dream 7B needs micro batch 1-2 with checkpointing)",
                     "dreamlab train s1k-dream7b --estimate, then lower data.micro_batch_size_per_gpu or data.max_length")
    return Check(OK, "gpu memory", message)


def check_nccl(cuda: bool | None = None) -> Check:
    """NCCL for multi-GPU runs (gloo serves CPU runs)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() if cuda is None else cuda
    available = dist.is_available() and dist.is_nccl_available()
    if not cuda:
        return Check(OK, "nccl", "not needed without CUDA: CPU runs use gloo"
                     + (" (gloo available)" if dist.is_available() and dist.is_gloo_available() else ""))
    if not available:
        return Check(FAIL, "nccl", "torch was built without NCCL: multi-GPU training cannot start",
                     "install a CUDA build of torch from pytorch.org (it bundles NCCL)")
    version = torch.cuda.nccl.version()
    return Check(OK, "nccl", f"NCCL {'.'.join(map(str, version)) if isinstance(version, tuple) else version}")


def check_disk(folder: Path) -> Check:
    """Free space where checkpoints go (the store's folder, or its nearest existing parent)."""
    existing = folder.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free / GIB
    message = f"{free:.1f} GiB free under {existing}"
    if free < MIN_FREE_GIB:
        return Check(FAIL, "disk", message + ": not enough for a tiny run's checkpoints",
                     "free space or point --db / DREAMLAB_DB at a bigger disk")
    if free < SEVEN_B_CHECKPOINT_GIB:
        return Check(WARN, "disk", message + f": one Dream-7B checkpoint takes about {SEVEN_B_CHECKPOINT_GIB:.0f} GiB",
                     "for 7B runs use a bigger disk (runs/ on shared storage) and keep trainer.max_checkpoints low")
    return Check(OK, "disk", message)


def check_store(path: Path) -> Check:
    """The run store opens and migrates to this dreamlab's schema (an absent one: migrations run on a blank copy)."""
    from dreamlab.store import RunStore, StoreError
    from dreamlab.store.schema import SCHEMA_VERSION

    if not path.exists():
        try:
            RunStore(":memory:").close()
        except (sqlite3.Error, StoreError) as error:
            return Check(FAIL, "store", f"the migrations fail on an empty store: {error}", "report this as a bug")
        return Check(OK, "store", f"no store yet at {path} (the first run creates it; migrations to schema "
                     f"{SCHEMA_VERSION} apply cleanly)")
    try:
        with RunStore(path) as store:
            runs = store.count_runs()
    except (sqlite3.Error, StoreError, OSError) as error:
        return Check(FAIL, "store", f"{path} does not open: {str(error).splitlines()[0]}",
                     "move the file aside (a new store is created) or upgrade dreamlab if it is newer")
    return Check(OK, "store", f"{path} opens at schema {SCHEMA_VERSION} ({runs} runs)")


def check_model(spec: str, *, expect: str = "base") -> Check:
    """A model folder (or `tiny` / a hub id) loads as Dream's architecture; an Instruct one warns when Base is expected."""
    from dreamlab.models.tiny import TINY_NAME

    if spec == TINY_NAME:
        return Check(OK, "model", "tiny: the built-in preset")
    folder = Path(spec).expanduser()
    if not folder.exists():
        if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
            return Check(FAIL, "model", f"no model at {spec}", "pass a folder with config.json and safetensors weights")
        kind = "a hub id (downloaded on first use; not checked offline)"
        config: dict[str, Any] = {}
    else:
        config_file = folder / "config.json"
        if not config_file.is_file():
            return Check(FAIL, "model", f"{spec} has no config.json", "pass a Hugging Face model folder (config.json + safetensors)")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            return Check(FAIL, "model", f"{config_file} is not valid JSON: {error}", "re-download the model")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            return Check(FAIL, "model", f"{spec} has no weights (*.safetensors)", "finish the download")
        kind = f"model_type {config.get('model_type')}"
    # The model's own name only (the folder or hub name, and the name it was saved from), not its parents.
    named = f"{folder.name} {Path(str(config.get('_name_or_path') or '')).name}".lower()
    if expect == "base" and "instruct" in named:
        return Check(WARN, "model", f"{spec} is an Instruct checkpoint ({kind}); the s1K recipe fine-tunes a Base one",
                     "use Dream-v0-Base-7B for SFT, or keep Instruct on purpose (then evaluate with --template chat)")
    return Check(OK, "model", f"{spec}: {kind}")


def check_tokenizer(spec: str) -> Check:
    """The tokenizer loads and has a mask token (the diffusion loss and sampler need one)."""
    from dreamlab.models.tiny import TINY_NAME

    if spec == TINY_NAME:
        return Check(OK, "tokenizer", "tiny: the built-in character tokenizer (mask <|mask|>)")
    try:
        from dreamlab.models.loading import load_tokenizer

        tokenizer = load_tokenizer(spec)
    except Exception as error:  # noqa: BLE001 - any loading failure is the finding
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return Check(FAIL, "tokenizer", f"{spec} does not load: {first}",
                     "pass a folder with tokenizer.json (or vocab.json + merges.txt) and tokenizer_config.json")
    if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
        return Check(FAIL, "tokenizer", f"{spec} has no mask token: the diffusion loss and sampler cannot mask",
                     "use Dream's tokenizer (<|mask|> = 151666) or set mask_token in tokenizer_config.json")
    return Check(OK, "tokenizer", f"{spec}: {len(tokenizer)} tokens, mask {tokenizer.mask_token} = {tokenizer.mask_token_id}")


def check_data(path: Path) -> Check:
    """A training file is in Dream's format (prompt + response); other known formats warn, unknown ones fail."""
    from dreamlab.data.errors import DataError
    from dreamlab.data.formats import ConvertOptions, convert_dream, detect_format
    from dreamlab.data.sources import read_source

    prepare = f"dreamlab data prepare {path} --out data/{path.stem}.jsonl"
    try:
        records = read_source(str(path))
        if not records:
            return Check(FAIL, "data", f"{path} has no rows", "point at a prepared .jsonl / .parquet file")
        found = detect_format(set(records[0].record))
    except DataError as error:
        return Check(FAIL, "data", f"{path} is not in Dream's format (prompt + response): {error}",
                     f"convert it: {prepare} (--format names the schema)")
    except Exception as error:  # noqa: BLE001 - unreadable files are the finding
        return Check(FAIL, "data", f"{path} does not read: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
                     "point at a .jsonl / .json / .parquet file or a folder of them")
    if found != "dream":
        return Check(WARN, "data", f"{path} is {found}, not Dream's format (prompt + response): the trainer converts it "
                     "on the fly with default choices", f"prepare it once to choose the template and lengths: {prepare}")
    try:
        for record in records:
            convert_dream(record, ConvertOptions())
    except DataError as error:
        return Check(FAIL, "data", f"{path} has a bad Dream row: {error}", f"fix the row, or re-create the file: {prepare}")
    return Check(OK, "data", f"{path}: {len(records)} rows in Dream's format")


def worst(checks: list[Check]) -> str:
    """fail if any check failed, else warn if any warned, else ok."""
    statuses = {check.status for check in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK
