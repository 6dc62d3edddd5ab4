"""`dreamlab eval`: evaluate a model on a task over a grid of sampler settings; `score` and `compare`."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dreamlab.cli.options import DbOption, JsonOption, resolve_db

app = typer.Typer(help="Evaluate models on tasks (evals/*.yaml) with the diffusion sampler; score files; compare.",
                  invoke_without_command=True)

DEFAULT_TASK = "arithmetic"


@contextmanager
def _errors() -> Iterator[None]:
    """Bad flags, tasks, models and store problems become one `error:` line and exit code 2."""
    from dreamlab.evals.tasks import TaskError
    from dreamlab.store import StoreError

    try:
        yield
    except (TaskError, StoreError, ValueError, FileNotFoundError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


def _list(value: str | None, kind: type, flag: str) -> list[Any]:
    """`a,b,c` -> [a, b, c] converted to kind (one None when the flag was not given)."""
    if value is None:
        return [None]
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ValueError(f"{flag} is empty")
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of {kind.__name__}s; got {value!r}") from None


def _pick_model(model: str | None, run: str | None, db: Path) -> tuple[str, str | None, int | None]:
    """(model spec, checkpoint path or None, run id or None) from --model / --run / the newest run's checkpoint."""
    from dreamlab.cli.generate import newest_checkpoint_model
    from dreamlab.store import RunStore

    if run is not None and model is not None:
        raise ValueError("give --run or --model, not both")
    if run is not None:
        if not db.is_file():
            raise FileNotFoundError(f"no run store at {db} (pass --db or set DREAMLAB_DB)")
        path = newest_checkpoint_model(run, db)
        store = RunStore(db)
        run_id = store.get_run(run).id if run != "latest" else _run_owning(store, Path(path))
        return run, str(Path(path).resolve()), run_id
    if model is None:
        if db.is_file():
            try:
                path = newest_checkpoint_model("latest", db)
            except FileNotFoundError:
                return "tiny", None, None
            return "latest", str(Path(path).resolve()), _run_owning(RunStore(db), Path(path))
        return "tiny", None, None
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"no model at {model}: expected a folder with config.json and safetensors weights")
        run_id = _run_owning(RunStore(db), local) if db.is_file() else None
        return model, str(local.resolve()), run_id
    if model != "tiny" and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise FileNotFoundError(f"no model at {model}: expected a folder with config.json and safetensors weights")
    return model, None, None


def _run_owning(store: Any, path: Path) -> int | None:
    resolved = path.resolve()
    for found in store.list_runs():
        if found.run_dir and resolved.is_relative_to(Path(found.run_dir).resolve()):
            return found.id
    return None


@app.callback()
def eval_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="A task name in evals/ (arithmetic, gsm8k, math500, jsonl) or a .yaml path.")] = DEFAULT_TASK,
    model: Annotated[str | None, typer.Option(help="`tiny`, a checkpoint / model folder, or a hub id.")] = None,
    run: Annotated[str | None, typer.Option(help="A recorded run (name, id or `latest`): its newest complete checkpoint.")] = None,
    alg: Annotated[str | None, typer.Option(help="Comma list of origin, maskgit_plus, topk_margin, entropy (task default).")] = None,
    steps: Annotated[str | None, typer.Option(help="Comma list of step counts (task default).")] = None,
    max_new_tokens: Annotated[str | None, typer.Option(help="Comma list (task default).")] = None,
    temperature: Annotated[float | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    top_k: Annotated[int | None, typer.Option()] = None,
    alg_temp: Annotated[float | None, typer.Option()] = None,
    block_length: Annotated[int | None, typer.Option(help="Semi-autoregressive blocks of this many tokens.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Also reveal every position with p >= threshold.")] = None,
    template: Annotated[str | None, typer.Option(help="base (few-shot CoT as plain text) or chat (through the chat template).")] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot examples (task default).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N problems.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per sampler call (a speed setting: the sampler is batch-invariant).")] = 16,
    seed: Annotated[int, typer.Option(help="Sample idx uses seed + idx.")] = 0,
    data: Annotated[str | None, typer.Option(help="The data file for --task jsonl (or to replace a task's source).")] = None,
    question_field: Annotated[str | None, typer.Option(help="The question field of --data rows.")] = None,
    answer_field: Annotated[str | None, typer.Option(help="The gold answer field of --data rows.")] = None,
    history: Annotated[bool, typer.Option(help="Keep the per-step sequences of the first 4 samples (for replay).")] = False,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Allow a checkpoint's own Python code to run.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of tables.")] = False,
) -> None:
    """Evaluate a model on a task: every (alg, steps) cell of the grid, resumable, recorded in the run store."""
    if ctx.invoked_subcommand is not None:
        return
    with _errors():
        records = _run_eval(locals())
    if as_json or as_csv:
        from dreamlab.evals.report import to_csv, to_json

        typer.echo(to_json(records) if as_json else to_csv(records), nl=as_json)
        return
    print_results(records, Console(highlight=False))


def print_results(records: list[Any], console: Console) -> None:
    """The algorithms x steps table, then the accuracy-vs-steps plot when there are several step counts."""
    from dreamlab.evals.report import accuracy_plot, results_table

    first = records[0]
    table = results_table(records, title=f"{first.task} · {first.model} · {first.n_samples} problems · {first.shots} shots")
    table.caption = f"eval ids {', '.join(str(r.id) for r in records)} · accuracy [95% Wilson CI] · mean NFE · tokens/s"
    console.print(table)
    if len({r.steps for r in records}) > 1:
        from rich.text import Text

        console.print(Text.from_ansi(accuracy_plot(records, width=min(console.width - 1, 90))))


def run_eval(**given: Any) -> list[Any]:
    """Run an eval grid as `dreamlab eval` would with these options (the rest at their defaults)."""
    import inspect

    options = {name: parameter.default for name, parameter in inspect.signature(eval_command).parameters.items()
               if name != "ctx"}
    unknown = set(given) - set(options)
    if unknown:
        raise TypeError(f"unknown eval options: {sorted(unknown)}")
    return _run_eval({**options, **given})


def _run_eval(options: dict[str, Any]) -> list[Any]:
    from dreamlab.diffusion.sampler import SamplerSettings
    from dreamlab.evals.tasks import TEMPLATES, load_task

    task = load_task(options["task"])
    if options["question_field"]:
        task.question_field = options["question_field"]
    if options["answer_field"]:
        task.gold_field = options["answer_field"]
    template = options["template"] or task.template
    if template not in TEMPLATES:
        raise ValueError(f"--template must be base or chat; got {template!r}")
    shots = task.shots if options["shots"] is None else options["shots"]
    if not 0 <= shots <= len(task.fewshot):
        raise ValueError(f"--shots must be from 0 to {len(task.fewshot)} (the task's few-shot examples); got {shots}")
    for flag in ("limit", "batch_size"):
        if options[flag] is not None and options[flag] < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1; got {options[flag]}")
    defaults = task.settings_for(template)
    from dreamlab.evals.harness import Cell, EvalPlan, run_plan, versions

    cells = []
    for max_new in _list(options["max_new_tokens"], int, "--max-new-tokens"):
        for alg in _list(options["alg"], str, "--alg"):
            for count in _list(options["steps"], int, "--steps"):
                values = {"alg": alg, "steps": count, "max_new_tokens": max_new}
                for key in ("temperature", "top_p", "top_k", "alg_temp", "block_length", "threshold"):
                    values[key] = options[key]
                for key, value in defaults.items():
                    if values.get(key) is None:
                        values[key] = value
                values.setdefault("alg", "entropy")
                values = {key: value for key, value in values.items() if value is not None}
                values.setdefault("temperature", 0.0)
                for required in ("alg", "steps", "max_new_tokens"):
                    if required not in values:
                        raise ValueError(f"task {task.name} sets no default {required}: pass --{required.replace('_', '-')}")
                SamplerSettings(**values)  # validates (unknown alg, steps 0, bad blocks...) before the model loads
                cells.append(Cell(**values))
    db = resolve_db(options["db"])
    spec, checkpoint, run_id = _pick_model(options["model"], options["run"], db)
    samples = task.load_samples(options["limit"], options["data"])
    if not samples:
        raise ValueError(f"task {task.name} has no problems to evaluate")
    label = task.name if options["data"] is None else f"{task.name}:{Path(options['data']).resolve()}"
    from dreamlab.models.loading import load_model_and_tokenizer
    from dreamlab.store import RunStore

    err = Console(stderr=True, highlight=False)
    err.print(f"[dim]{task.name}: {len(samples)} problems, {template} template, {shots} shots, {len(cells)} cells; "
              f"model {spec}{' (' + checkpoint + ')' if checkpoint else ''}[/dim]")
    net, tokenizer = load_model_and_tokenizer(checkpoint or spec, device=options["device"], dtype=options["dtype"],
                                              trust_remote_code=options["trust_remote_code"])
    plan = EvalPlan(task=task, samples=samples, template=template, shots=shots, cells=cells, model=spec,
                    batch_size=options["batch_size"], seed=options["seed"], limit=options["limit"], checkpoint=checkpoint,
                    run_id=run_id, history=options["history"], grid_id=uuid.uuid4().hex[:8], task_label=label,
                    versions=versions())
    from dreamlab.evals.report import RichProgress

    store = RunStore(db)
    try:
        with RichProgress(err) as progress:
            return run_plan(store, net, tokenizer, plan, progress)
    except KeyboardInterrupt:
        err.print("interrupted: finished samples are saved; run the same command again to resume")
        raise typer.Exit(130) from None


@app.command("score")
def score_command(
    file: Annotated[Path, typer.Argument(help="A generations file: jsonl with question / gold / generation fields.")],
    task: Annotated[str, typer.Option(help="The task whose extractor and scorer to use.")] = "gsm8k",
    out: Annotated[Path | None, typer.Option(help="Write the re-scored rows here (jsonl).")] = None,
    mask_token: Annotated[str, typer.Option(help="The mask token text counted as leftover.")] = "<|mask|>",
    as_json: JsonOption = False,
) -> None:
    """Re-score an existing generations file with a task's extractor and Math-Verify (plus the flexible extract)."""
    from dreamlab.evals.scoring import score_generation
    from dreamlab.evals.stats import wilson_interval
    from dreamlab.evals.tasks import load_task
    from dreamlab.textfiles import read_utf8, text_lines

    with _errors():
        spec = load_task(task)
        if not file.is_file():
            raise FileNotFoundError(f"no generations file {file}")
        rows = []
        for number, line in enumerate(text_lines(read_utf8(file, ValueError)), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file}:{number}: not valid JSON: {error.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file}:{number}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in ("gold", "generation") if key not in row]
            if missing:
                raise ValueError(f"{file}:{number}: missing field {missing[0]!r} (need question, gold, generation)")
            score = score_generation(str(row["generation"]), spec.gold_answer(str(row["gold"])), extractor=spec.extractor,
                                     scorer=spec.scorer, numeric=spec.numeric, mask_token=mask_token)
            rows.append({**row, **score.as_row()})
    correct = sum(row["correct"] for row in rows)
    flexible = sum(row["flexible_correct"] for row in rows)
    low, high = wilson_interval(correct, len(rows))
    summary = {"file": str(file), "task": spec.name, "n": len(rows), "correct": correct,
               "accuracy": correct / len(rows) if rows else None, "ci_low": low, "ci_high": high,
               "flexible_correct": flexible, "flexible_accuracy": flexible / len(rows) if rows else None,
               "unclosed_boxed": sum(bool(row["unclosed_boxed"]) for row in rows),
               "leftover_masks": sum(row["leftover_masks"] for row in rows)}
    if out is not None:
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    if rows:
        typer.echo(f"{spec.name}: {correct}/{len(rows)} = {100 * summary['accuracy']:.1f}% "
                   f"[95% CI {100 * low:.1f}, {100 * high:.1f}] (math-verify); flexible extract "
                   f"{flexible}/{len(rows)} = {100 * summary['flexible_accuracy']:.1f}%; "
                   f"{summary['unclosed_boxed']} unclosed \\boxed{{, {summary['leftover_masks']} leftover masks")
    else:
        typer.echo(f"{file}: no rows")


@app.command("compare")
def compare_command(
    a: Annotated[str, typer.Argument(help="A: a run, a checkpoint / model path, or an eval id (N or eval:N).")],
    b: Annotated[str, typer.Argument(help="B: the same kinds.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A and B side by side on their shared cells: accuracy difference and McNemar's paired p-value."""
    from dreamlab.evals.compare import compare
    from dreamlab.store import RunStore

    with _errors():
        path = resolve_db(db)
        if not path.is_file():
            raise FileNotFoundError(f"no run store at {path} (pass --db or set DREAMLAB_DB)")
        results = compare(RunStore(path), a, b)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"A = {a}   B = {b}   (paired on shared samples; McNemar)", title_justify="left")
    for column in ("task", "alg", "steps", "evals A/B", "shared", "A", "B", "B − A", "only A", "only B", "p-value"):
        table.add_column(column, justify="left" if column in ("task", "alg") else "right")
    for r in results:
        diff = "—" if r.difference is None else f"{100 * r.difference:+.1f}"
        acc = lambda value: "—" if value is None else f"{100 * value:.1f}%"  # noqa: E731
        table.add_row(r.a.task, r.a.alg or "", str(r.a.steps), f"{r.a.id}/{r.b.id}", str(r.shared), acc(r.accuracy_a),
                      acc(r.accuracy_b), diff, str(r.only_a), str(r.only_b), f"{r.p_value:.3g} ({r.method})")
    console = Console(highlight=False)
    console.print(table)
    for r in results:
        if r.differs:
            settings = ", ".join(f"{key} {va} → {vb}" for key, (va, vb) in r.differs.items() if key not in ("model",))
            console.print(f"[dim]evals {r.a.id}/{r.b.id} differ in: {settings or 'the model only'}[/dim]")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
