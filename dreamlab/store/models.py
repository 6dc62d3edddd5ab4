"""Which weights `--model` / `--run` name: a recorded run's newest complete checkpoint, a folder and the run owning it, or a spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dreamlab.store.runstore import RunStore

TINY = "tiny"


@dataclass(frozen=True)
class ModelChoice:
    """The model as typed (`tiny`, a hub id, a run, `latest`, a path), its checkpoint folder and the run it belongs to."""

    spec: str
    checkpoint: str | None = None
    run_id: int | None = None

    @property
    def source(self) -> str:
        """What to load: the checkpoint folder, else the spec."""
        return self.checkpoint or self.spec


def newest_checkpoint(store: RunStore, ref: str) -> ModelChoice:
    """A run's newest complete checkpoint (`latest`: of the newest run that has one)."""
    from dreamlab.store.ingest import ingest_runs

    ingest_runs(store)  # a Slurm job's checkpoints are in its journal until a reader reads them in
    runs = store.list_runs() if ref == "latest" else [store.get_run(ref)]
    for run in runs:
        checkpoint = store.latest_complete_checkpoint(run.id)
        if checkpoint is not None and Path(checkpoint.path).is_dir():
            return ModelChoice(ref, str(Path(checkpoint.path).resolve()), run.id)
    raise FileNotFoundError(f"no complete checkpoint for {ref!r} in {store.path} yet: train first "
                            "(`dreamlab train --foreground`)")


def choose_model(db: Path, model: str | None = None, run: str | None = None) -> ModelChoice:
    """What `--model` / `--run` mean; neither: the newest run's checkpoint when the store has one, else `tiny`."""
    if run is not None and model is not None:
        raise ValueError("give --run or --model, not both")
    if run is not None:
        if not db.is_file():
            raise FileNotFoundError(f"no run store at {db} (pass --db or set DREAMLAB_DB)")
        return newest_checkpoint(RunStore(db), run)
    if model is None:
        try:
            return newest_checkpoint(RunStore(db), "latest") if db.is_file() else ModelChoice(TINY)
        except FileNotFoundError:
            return ModelChoice(TINY)
    local = Path(model).expanduser()
    if local.exists() or (model != TINY and (model.startswith((".", "/", "~")) or model.count("/") > 1)):
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"no model at {model}: expected a folder with config.json and safetensors weights")
        return ModelChoice(model, str(local.resolve()), RunStore(db).run_owning(local) if db.is_file() else None)
    return ModelChoice(model)
