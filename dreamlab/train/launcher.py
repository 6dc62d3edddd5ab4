"""Starting runs: record them, then run torchrun as a detached process group (its own session).

Closing the terminal or losing SSH never stops a run: the torchrun process group belongs to no
terminal, writes to `runs/<run>/train.log`, and reports to the store. `dreamlab runs stop` signals
the group (recorded as the run's pgid). With trainer.launcher=slurm the run is submitted instead
(`submit`, through `dreamlab.train.slurm`) and recorded queued with its job id; the job reports to its
folder's journal, which readers of the store ingest.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from dreamlab import library_versions
from dreamlab.config import Recipe, RecipeError, parse_override, set_value, validate
from dreamlab.data.sources import BUILTIN_PREFIX, HUB_ID
from dreamlab.models.tiny import TINY_NAME
from dreamlab.store import Run, RunStore
from dreamlab.textfiles import read_json_object
from dreamlab.train.torchrun import torchrun_prefix

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def model_context_length(recipe: Recipe) -> int | None:
    """The starting model's context (max_position_embeddings) without loading its weights."""
    spec = recipe.model.partial_pretrain
    if spec == TINY_NAME:
        try:
            config = model_config(recipe)
        except ValueError as error:  # the worker would fail building the model: refuse now, naming the keys
            raise RecipeError(f"model.tiny_*: {error} (tiny_hidden_size={recipe.model.tiny_hidden_size}, "
                              f"tiny_num_heads={recipe.model.tiny_num_heads})") from None
        return config.max_position_embeddings
    config_file = Path(spec).expanduser() / "config.json"
    if config_file.is_file():
        return read_json_object(config_file, RecipeError).get("max_position_embeddings")
    # A hub id is ORG/NAME: a spec with more slashes, or one that starts like a path, is a local folder.
    if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise RecipeError(f"model.partial_pretrain: no model at {spec} (expected a folder with config.json; "
                          f"a run's checkpoint is runs/RUN/checkpoints/step-N/model)")
    return None  # a hub id: checked when the worker loads it


def model_config(recipe: Recipe):
    """The starting model's config (tiny preset with the recipe's sizes, or the folder's config.json)."""
    from dreamlab.models import DreamConfig
    from dreamlab.models.tiny import tiny_config

    if recipe.model.partial_pretrain == TINY_NAME:
        return tiny_config(**recipe.model.tiny_sizes())
    return DreamConfig.from_pretrained(recipe.model.partial_pretrain)


def memory_estimate(recipe: Recipe):
    """The per-GPU estimate for this recipe (see dreamlab/train/memory.py)."""
    from dreamlab.train.memory import estimate

    return estimate(model_config(recipe), micro_batch=recipe.data.micro_batch_size_per_gpu,
                    max_length=recipe.data.max_length,
                    world=recipe.trainer.nproc_per_node * recipe.trainer.nnodes,
                    checkpointing=recipe.model.enable_gradient_checkpointing)


def check_memory(recipe: Recipe, budget_gb: float | None) -> None:
    """Refuse a GPU run whose estimate exceeds the GPU, with the estimate and what to lower."""
    from dreamlab.train.memory import suggestion

    if budget_gb is None or recipe.trainer.device == "cpu":
        return
    try:
        config = model_config(recipe)
    except OSError:
        return  # a hub id without a network: the worker reports it
    needed = memory_estimate(recipe).total_gb
    if needed > 0.95 * budget_gb:
        fix = suggestion(config, micro_batch=recipe.data.micro_batch_size_per_gpu, max_length=recipe.data.max_length,
                         world=recipe.trainer.nproc_per_node * recipe.trainer.nnodes,
                         checkpointing=recipe.model.enable_gradient_checkpointing, budget_gb=0.95 * budget_gb)
        raise RecipeError(f"estimated {needed:.1f} GiB per GPU, the GPU has {budget_gb:.1f} GiB: try {fix} "
                          "(`dreamlab train --estimate` shows the parts)")


def check_before_launch(recipe: Recipe) -> None:
    """Everything that can be refused before a process starts."""
    from dreamlab.train.memory import gpu_memory_gb

    validate(recipe, context_length=model_context_length(recipe))
    if recipe.trainer.launcher == "local":  # a Slurm job's GPUs are not this host's
        check_memory(recipe, gpu_memory_gb())
    for key, files in (("data.train_files", recipe.data.train_files), ("data.val_files", recipe.data.val_files)):
        for spec in files:
            is_hub_id = HUB_ID.match(spec) and not spec.startswith(".")
            if not spec.startswith(BUILTIN_PREFIX) and not is_hub_id and not Path(spec).exists():
                raise RecipeError(f"{key}: {spec} does not exist (a prepared .jsonl / .parquet file, a folder, "
                                  "a hub id, or builtin:arithmetic)")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_meta() -> dict[str, Any]:
    """Git commit, host, GPU names and library versions, recorded with every run."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "git_commit": _git_commit(),
        "host": socket.gethostname(),
        "gpus": gpus,
        "versions": library_versions(),
    }


def write_run_spec(run_dir: Path, recipe: Recipe, run_id: int, db: Path | None) -> None:
    """`run.json`: what the workers read (recipe, run id, and the store of a local run; a Slurm job gets none)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"run_id": run_id, "db": None if db is None else str(db), "recipe": recipe.to_dict()}
    (run_dir / "run.json").write_text(json.dumps(spec, indent=2))


# What `--resume RUN key=value` may change: where and how wide the run is laid out, nothing it learns.
RELAYOUT_KEYS = ("trainer.nproc_per_node", "trainer.nnodes", "trainer.rdzv_endpoint", "data.micro_batch_size_per_gpu",
                 "data.gradient_accumulation_steps", "trainer.launcher", "trainer.slurm_partition",
                 "trainer.slurm_account", "trainer.slurm_time", "trainer.slurm_gpus_per_node", "trainer.slurm_args",
                 "trainer.slurm_signal_s", "trainer.slurm_requeue")


def relayout(recipe: Recipe, overrides: list[str]) -> list[str]:
    """Apply layout overrides for a resume (refusing any other key); returns the `key=value` changes."""
    changes = []
    for text in overrides:
        key, value = parse_override(text)
        if key not in RELAYOUT_KEYS:
            raise RecipeError(f"--resume continues the run as recorded: {key} cannot change; a resume may set "
                              f"only {', '.join(RELAYOUT_KEYS)}")
        set_value(recipe, key, value)
        changes.append(f"{key}={value}")
    validate(recipe)
    return changes


def torchrun_command(recipe: Recipe, run_dir: Path, db: Path, *, resume: bool) -> list[str]:
    """The torchrun command line for this recipe's launch settings."""
    t = recipe.trainer
    try:
        command = torchrun_prefix(t.nproc_per_node, t.nnodes, t.rdzv_endpoint, rdzv_id=run_dir.name)
    except ValueError as error:
        raise RecipeError(f"trainer.rdzv_endpoint: {error}") from None
    command += ["-m", "dreamlab.train.worker", "--run-dir", str(run_dir), "--db", str(db)]
    if resume:
        command.append("--resume")
    return command


def launch(store: RunStore, store_path: Path, recipe: Recipe, *, name: str | None = None,
           capture: bool = False) -> tuple[Run, subprocess.Popen]:
    """Check the recipe, record the run, write its spec and start torchrun detached; (run, process)."""
    check_before_launch(recipe)
    run = store.create_run(name=name, recipe=recipe.to_dict(), meta=environment_meta(), run_dir=None)
    run_dir = Path(run.run_dir)
    write_run_spec(run_dir, recipe, run.id, store_path.resolve())
    process = start_process(torchrun_command(recipe, run_dir, store_path.resolve(), resume=False), run_dir,
                            capture=capture)
    return store.mark_started(run.id, pid=process.pid, pgid=process.pid), process


def submit(store: RunStore, store_path: Path, recipe: Recipe, *, name: str | None = None) -> Run:
    """Check the recipe, record the run, write its spec and sbatch it; the run is queued with its job id."""
    from dreamlab.train import slurm

    missing = slurm.available()
    if missing:
        raise RecipeError(f"trainer.launcher=slurm: {missing}")
    check_before_launch(recipe)
    run = store.create_run(name=name, recipe=recipe.to_dict(), meta=environment_meta(), run_dir=None)
    write_run_spec(Path(run.run_dir), recipe, run.id, None)
    return slurm.submit(store, run, recipe)


def start_process(command: list[str], run_dir: Path, *, capture: bool,
                  extra_env: dict[str, str] | None = None, log_name: str = "train.log") -> subprocess.Popen:
    """Start torchrun (or an eval) in a new session; output to run_dir/log_name (or to a pipe the caller tees)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    with open(run_dir / log_name, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if capture else log,
            stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=os.getcwd(),
        )
