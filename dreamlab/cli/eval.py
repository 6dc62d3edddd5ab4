"""`dreamlab eval`: evaluate a model on a task over a grid of sampler settings; `score` and `compare`."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dreamlab import library_versions
from dreamlab.cli.options import (
    AccountOption,
    DbOption,
    GpusPerNodeOption,
    JsonOption,
    PartitionOption,
    SlurmArgOption,
    SlurmFlag,
    TimeOption,
    open_existing_store,
    resolve_db,
)
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.display import fmt_percent, fmt_points
from dreamlab.evals.compare import compare
from dreamlab.evals.frontier import frontier_plot, frontier_table
from dreamlab.evals.grid import SAMPLER_TYPES, extra_settings, grid_cells
from dreamlab.evals.jobs import JobTracker, StopRequested, running_job
from dreamlab.evals.launch import LAYOUT_PARAMS, needs_torchrun, run_attached, torchrun_eval_command
from dreamlab.evals.progress import StoreProgress
from dreamlab.evals.report import RichProgress, accuracy_plot, export_rows, results_table, to_csv, to_json
from dreamlab.evals.scoring import score_generation
from dreamlab.evals.stats import summarize
from dreamlab.evals.tasks import Task, TaskError, load_task
from dreamlab.store import EvalJob, EvalRecord, RunStore, StoreError
from dreamlab.store.models import choose_model
from dreamlab.textfiles import json_lines

app = typer.Typer(help="Evaluate models on tasks (evals/*.yaml) with the diffusion sampler; score files; compare.",
                  invoke_without_command=True)

DEFAULT_TASK = "arithmetic"
_LAYOUT = "Data parallel (torchrun)"


@contextmanager
def _errors() -> Iterator[None]:
    """Bad flags, tasks, models and store problems become one `error:` line and exit code 2."""
    try:
        yield
    except (TaskError, StoreError, ValueError, FileNotFoundError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets the error; one says it
            typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


@app.callback()
def eval_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="A task name in evals/ (arithmetic, gsm8k_cot, minerva_math, math500, gsm8k, jsonl) or a .yaml path.")] = DEFAULT_TASK,
    model: Annotated[str | None, typer.Option(help="`tiny`, a checkpoint / model folder, or a hub id.")] = None,
    run: Annotated[str | None, typer.Option(help="A recorded run (name, id or `latest`): its newest complete checkpoint.")] = None,
    alg: Annotated[str | None, typer.Option(help="Comma list of origin, maskgit_plus, topk_margin, entropy (task default).")] = None,
    steps: Annotated[str | None, typer.Option(help="Comma list of step counts (task default).")] = None,
    max_new_tokens: Annotated[str | None, typer.Option(help="Comma list (task default).")] = None,
    temperature: Annotated[float | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    top_k: Annotated[int | None, typer.Option()] = None,
    alg_temp: Annotated[float | None, typer.Option()] = None,
    eps: Annotated[float | None, typer.Option(help="The last timestep (the schedule runs from 1 to eps).")] = None,
    block_length: Annotated[str | None, typer.Option(help="Comma list: semi-autoregressive blocks of this many tokens (none: off).")] = None,
    threshold: Annotated[str | None, typer.Option(help="Comma list: also reveal every position with p >= threshold (none: off).")] = None,
    elide_noop_steps: Annotated[bool | None, typer.Option(help="Skip steps that reveal nothing (default: on).")] = None,
    cache: Annotated[str | None, typer.Option(help="Comma list of none, prefix, dual: Fast-dLLM's block-wise KV caches (need --block-length).")] = None,
    factor: Annotated[str | None, typer.Option(help="Comma list: Fast-dLLM's factor rule, reveal while (i+1)(1-p_i) < factor.")] = None,
    gamma: Annotated[str | None, typer.Option(help="Comma list: entropy bound (EB-sampler), reveal while summed entropy - max <= gamma.")] = None,
    commit_gap: Annotated[str | None, typer.Option(help="Comma list: Prophet's early commit, fill the block once the mean top-2 gap >= this.")] = None,
    template: Annotated[str | None, typer.Option(help="base (few-shot CoT as plain text) or chat (through the chat template).")] = None,
    shots: Annotated[int | None, typer.Option(help="Few-shot examples (task default).")] = None,
    bos: Annotated[bool | None, typer.Option("--bos/--no-bos", help="Start base prompts with the tokenizer's BOS (task default: prompt.add_bos).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N problems.")] = None,
    batch_size: Annotated[str, typer.Option(help="Rows per sampler call, or auto: the largest that fits on CUDA (backs off on out-of-memory), 32 on the CPU. A speed setting: the sampler is batch-invariant.")] = "16",
    seed: Annotated[int, typer.Option(help="Sample idx uses seed + idx.")] = 0,
    data: Annotated[str | None, typer.Option(help="A data file for --task jsonl, or in place of a task's hub data set.")] = None,
    question_field: Annotated[str | None, typer.Option(help="The question field of --data rows.")] = None,
    answer_field: Annotated[str | None, typer.Option(help="The gold answer field of --data rows.")] = None,
    history: Annotated[bool, typer.Option(help="Keep the per-step sequences of the first 4 samples (for replay).")] = False,
    device: str = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 or float16; recorded with each cell.")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Allow a checkpoint's own Python code to run.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of tables.")] = False,
    slurm: SlurmFlag = False,
    partition: PartitionOption = None,
    gpus_per_node: GpusPerNodeOption = None,
    time_limit: TimeOption = None,
    account: AccountOption = None,
    slurm_arg: SlurmArgOption = None,
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background, detached from this terminal (log in "
                                         "<store folder>/evals/<job>/eval.log); watch with `dreamlab evals list`.")] = False,
    job_id: Annotated[int | None, typer.Option(hidden=True, help="The eval job this process works for (set by --detach).")] = None,
    nproc_per_node: Annotated[int, typer.Option(help="Processes on this node (one per GPU): the eval starts itself under "
                                                "torchrun, problems dealt over the processes, rank 0 records.",
                                                rich_help_panel=_LAYOUT)] = 1,
    nnodes: Annotated[int, typer.Option(help="Nodes: run the same command on each.", rich_help_panel=_LAYOUT)] = 1,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT of the first node (with --nnodes).",
                                                      rich_help_panel=_LAYOUT)] = None,
    job_dir: Annotated[Path | None, typer.Option(hidden=True, help="Run as the Slurm job of this eval job folder: "
                                                 "record into its journal, never the store.")] = None,
) -> None:
    """Evaluate a model on a task: every (alg, steps) cell of the grid, resumable, recorded in the run store."""
    if ctx.invoked_subcommand is not None:
        return
    sampler = {name: value for name, value in locals().items() if name in SAMPLER_TYPES}  # one option per field
    with _errors():
        data_parallel = needs_torchrun(nproc_per_node, nnodes, rdzv_endpoint, slurm=slurm, device=device)
    if slurm:
        with _errors():
            job = _submit_to_slurm(ctx, db=db, model=model, run=run, partition=partition, gpus_per_node=gpus_per_node,
                                   time_limit=time_limit, account=account, slurm_arg=slurm_arg, task=task)
        db_flag = "" if db is None else f" --db {db}"
        typer.echo(f"submitted eval job {job.id} as Slurm job {job.job_id} (queued); it records into "
                   f"{Path(job.folder) / 'journal.jsonl'}, read into {resolve_db(db)} by `dreamlab evals list` and "
                   "the other readers of the store")
        typer.echo(f"  log:      tail -f {Path(job.folder) / 'eval.log'}")
        typer.echo(f"  progress: dreamlab evals list{db_flag}")
        typer.echo(f"  stop:     dreamlab evals stop {job.id}{db_flag}")
        return
    if detach:  # the detached process runs this command without --detach (under torchrun if it asks for processes)
        with _errors():  # refuse bad flags here, not in the detached eval's log
            check_options(task, sampler, template, shots, limit, batch_size, question_field, answer_field,
                          processes=nproc_per_node * nnodes)
        start_detached_eval(ctx, db, model=model, run=run, task=task, as_json=as_json)
        return
    if data_parallel:
        with _errors():  # refuse bad flags here, not once per rank
            check_options(task, sampler, template, shots, limit, batch_size, question_field, answer_field,
                          processes=nproc_per_node * nnodes)
            command = torchrun_eval_command(_argv_without(ctx, LAYOUT_PARAMS | {"db"}), resolve_db(db).resolve(),
                                            nproc_per_node, nnodes, rdzv_endpoint)
        raise typer.Exit(run_attached(command))
    options = dict(model=model, run=run, sampler=sampler, template=template, shots=shots, add_bos=bos, limit=limit,
                   batch_size=batch_size, seed=seed, data=data, question_field=question_field, answer_field=answer_field,
                   history=history, device=device, dtype=dtype, trust_remote_code=trust_remote_code, db=db)
    command = _argv_without(ctx, _JOB_PARAMS)
    with _errors(), _interrupt_exits():
        if job_dir is not None:  # the Slurm job of a recorded eval job: it records into its folder's journal
            records = run_eval(task, **options, job_dir=job_dir)
        elif os.environ.get("RANK", "0") != "0":  # a rank under torchrun other than 0: rank 0 records the job
            records = run_eval(task, **options)
        elif job_id is None:  # a job is recorded once the flags are known good (a typo leaves no failed job behind)
            records = run_eval(task, **options, start_job=lambda: running_job(RunStore(resolve_db(db)), None, command))
        else:  # the detached process of a recorded job: whatever fails ends the job
            with running_job(RunStore(resolve_db(db)), job_id, command) as job:
                records = run_eval(task, **options, start_job=lambda: nullcontext(job))
    if not records:  # a rank other than 0 under torchrun: rank 0 prints
        return
    if as_json or as_csv:
        typer.echo(to_json(records) if as_json else to_csv(records), nl=as_json)
        return
    print_results(records, Console(highlight=False))


@contextmanager
def _interrupt_exits() -> Iterator[None]:
    """An interrupt (or SIGTERM) before the grid started, during the model load, exits 130 without a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


_SLURM_PARAMS = {"slurm", "partition", "gpus_per_node", "time_limit", "account", "slurm_arg", "db", "detach", "job_id",
                 "job_dir"}
# What a job records as its command (and a detached one runs): the eval's own options, not where its output goes.
_JOB_PARAMS = _SLURM_PARAMS | {"as_json", "as_csv"}
# Options a Slurm job's command leaves out besides: the model's (chosen at submission, where the store is).
_CHOSEN_PARAMS = {"model", "run"}


def _submit_to_slurm(ctx: typer.Context, *, db: Path | None, model: str | None, run: str | None,
                     partition: str | None, gpus_per_node: int | None, time_limit: str | None, account: str | None,
                     slurm_arg: list[str] | None, task: str) -> EvalJob:
    """Choose the model here (a run's checkpoint is in this host's store), record the eval job and sbatch it."""
    from dreamlab.train import slurm as slurm_jobs
    from dreamlab.train.eval_jobs import job_folder, new_job_name, submit_eval_job

    missing = slurm_jobs.available()
    if missing:
        raise ValueError(f"--slurm: {missing}")
    store_path = resolve_db(db)
    choice = choose_model(store_path, model, run)
    store = RunStore(store_path)
    name = new_job_name()
    folder = job_folder(store, name)
    options = slurm_jobs.job_options(name=f"dreamlab-{name}", output=folder / "eval.log", partition=partition,
                                     account=account, time_limit=time_limit, gpus_per_node=gpus_per_node,
                                     extra=slurm_arg or [])
    command = [sys.executable, "-c", "from dreamlab.cli import main; main()", "eval", *_argv_without_slurm(ctx)]
    return submit_eval_job(store, command, choice, options, folder, task=task)


def _argv_without_slurm(ctx: typer.Context) -> list[str]:
    """This eval's options as given (defaults left out), less the Slurm ones: the command the job runs."""
    return _argv_without(ctx, _SLURM_PARAMS | _CHOSEN_PARAMS)


def _argv_without(ctx: typer.Context, left_out: set[str] | frozenset[str]) -> list[str]:
    """This eval's options as given (defaults left out), less those named: the command a job or rank runs."""
    argv = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in left_out or value is None or value == param.default or not param.opts:
            continue
        if getattr(param, "is_flag", False):
            argv.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            argv += [param.opts[0], str(value)]
    return argv


def start_detached_eval(ctx: typer.Context, db: Path | None, *, model: str | None, run: str | None, task: str,
                        as_json: bool) -> None:
    """`--detach`: check the model choice, record the job, start it in its own session and say how to watch it."""
    from dreamlab.evals.jobs import start_detached

    with _errors():
        store_path = resolve_db(db)
        choice = choose_model(store_path, model, run)  # a bad --run / --model is refused here, not in the log
        job = start_detached(RunStore(store_path), _argv_without(ctx, _JOB_PARAMS), run_id=choice.run_id,
                             model=choice.spec, task=task)
    if as_json:
        typer.echo(json.dumps(job.to_dict(), indent=2, default=str))
        return
    db_flag = "" if db is None else f" --db {db}"
    typer.echo(f"started eval job {job.id}, detached (pid {job.pid}, process group {job.pgid}); closing this terminal "
               "does not stop it")
    typer.echo(f"  progress: dreamlab evals list{db_flag}")
    typer.echo(f"  log:      tail -f {job.log_path}")
    typer.echo(f"  stop:     dreamlab evals stop {job.id}{db_flag}")


def print_results(records: list[EvalRecord], console: Console) -> None:
    """The algorithms x steps table, then the accuracy-vs-steps plot when there are several step counts.

    A grid whose cells set blocks, caches or decoding rules gets the frontier (table and plot) instead:
    the algorithms x steps table cannot tell those cells apart.
    """
    first = records[0]
    if any(extra_settings(r) for r in records):
        print_frontier(records, console)
        return
    prompt = f"{first.template or 'base'}{' + BOS' if first.add_bos else ''}"
    table = results_table(records, title=f"{first.task} · {first.model} · {first.n_samples} problems · {first.shots} shots · {prompt}")
    table.caption = (f"eval ids {', '.join(str(r.id) for r in records)} · accuracy [95% Wilson CI] · mean NFE · tokens/s "
                     "of every generated position · answer: tokens/s up to EOS or the stop string")
    console.print(table)
    if len({r.steps for r in records}) > 1:
        console.print(Text.from_ansi(accuracy_plot(records, width=min(console.width - 1, 90))))


def check_options(task: str, sampler: Mapping[str, Any] | None, template: str | None, shots: int | None,
                  limit: int | None, batch_size: int | str, question_field: str | None = None,
                  answer_field: str | None = None, processes: int = 1) -> tuple[Task, str, int, list[SamplerSettings]]:
    """The task, its prompt shape and the grid's cells, or the error `dreamlab eval` refuses the flags with."""
    from dreamlab.evals.batching import AUTO, parse_batch_size  # torch

    spec = load_task(task, question_field=question_field, answer_field=answer_field)
    template, shots = spec.prompt_shape(template, shots)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1; got {limit}")
    if parse_batch_size(batch_size) == AUTO and processes > 1:
        raise ValueError("--batch-size auto searches one process's batch size: give data-parallel evals "
                         "(--nproc-per-node / --nnodes) a number")
    return spec, template, shots, grid_cells(sampler or {}, spec.settings_for(template), spec.name)


def run_eval(task: str = DEFAULT_TASK, *, model: str | None = None, run: str | None = None,
             sampler: Mapping[str, Any] | None = None, template: str | None = None, shots: int | None = None,
             add_bos: bool | None = None, limit: int | None = None, batch_size: int | str = 16, seed: int = 0,
             data: str | None = None, question_field: str | None = None, answer_field: str | None = None,
             history: bool = False, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
             db: Path | None = None,
             start_job: Callable[[], AbstractContextManager[JobTracker]] | None = None,
             job_dir: Path | None = None) -> list[EvalRecord]:
    """Run an eval grid as `dreamlab eval` does; `sampler` maps SamplerSettings fields to values or comma lists.

    With `start_job`, the eval runs as that job (entered once the options are checked): the job is described
    (grid, samples x cells) before the model loads and its progress written after every batch. With `job_dir`
    (a Slurm eval job's folder) the model is the one chosen at submission and everything, the job's description
    included, goes to the folder's journal instead of the store. Under torchrun (WORLD_SIZE > 1) every rank
    calls this: the problems are dealt over the ranks and global rank 0 alone reads and writes the store and
    returns the records; the other ranks return [].
    """
    from dreamlab.cpu_memory import keep_freed_memory
    from dreamlab.evals import sharding  # torch
    from dreamlab.evals.batching import AUTO, CPU_AUTO_BATCH_SIZE, parse_batch_size  # torch
    from dreamlab.evals.harness import EvalPlan
    from dreamlab.models.loading import load_model_and_tokenizer  # torch, transformers

    ranks = sharding.ranks_from_env()
    spec, template, shots, cells = check_options(task, sampler, template, shots, limit, batch_size, question_field,
                                                 answer_field, processes=ranks.world)
    batch_size = parse_batch_size(batch_size)
    store_path = resolve_db(db)
    if job_dir is not None:
        from dreamlab.train.eval_jobs import read_choice

        choice = read_choice(job_dir)
    else:
        if ranks.world > 1:
            device = sharding.rank_device(ranks, device)
            sharding.join(ranks, device)
        choice = sharding.from_main(ranks, lambda: choose_model(store_path, model, run))
    samples = spec.load_samples(limit, data)
    if not samples:
        raise ValueError(f"task {spec.name} has no problems to evaluate")
    err = Console(stderr=True, highlight=False, quiet=not ranks.is_main)
    bos_note = ", BOS" if spec.bos_for(template, add_bos) else ""
    layout = f"; {ranks.world} processes" if ranks.world > 1 else ""
    err.print(f"[dim]{spec.name}: {len(samples)} problems, {template} template{bos_note}, {shots} shots, {len(cells)} cells; "
              f"model {choice.spec}{' (' + choice.checkpoint + ')' if choice.checkpoint else ''}{layout}[/dim]")
    grid_id = uuid.uuid4().hex[:8]
    task_label = spec.name if data is None else f"{spec.name}:{Path(data).resolve()}"
    with start_job() if start_job is not None else nullcontext() as job:
        if job is not None:
            job.store.describe_eval_job(job.id, run_id=choice.run_id, model=choice.spec, task=task_label, grid_id=grid_id,
                                        n_total=len(samples) * len(cells))
        net, tokenizer = load_model_and_tokenizer(choice.source, device=device, dtype=dtype,
                                                  trust_remote_code=trust_remote_code)
        on_cuda = next(net.parameters()).device.type == "cuda"
        if not on_cuda:
            keep_freed_memory()
        if batch_size == AUTO:
            err.print("[dim]--batch-size auto: " + ("every remaining problem in one batch, 0.9x on each out-of-memory "
                                                    "error" if on_cuda else f"{CPU_AUTO_BATCH_SIZE} at most (the CPU "
                                                    "default; the largest that fits is searched on CUDA only)") + "[/dim]")
        plan = EvalPlan(task=spec, samples=samples, template=template, shots=shots, cells=cells, model=choice.spec,
                        batch_size=batch_size, seed=seed, limit=limit, checkpoint=choice.checkpoint, run_id=choice.run_id,
                        history=history, grid_id=grid_id, add_bos=add_bos, task_label=task_label,
                        versions=library_versions())

        def on_backoff(old: int, new: int) -> None:
            err.print(f"out of memory at batch size {old}: retrying the unfinished problems at {new}")

        if job_dir is not None:
            return _run_as_job(job_dir, net, tokenizer, plan, err, on_backoff, n_total=len(samples) * len(cells))
        try:
            with RichProgress(err) if ranks.is_main else nullcontext() as progress:
                if job is not None:
                    progress = StoreProgress(job.store, job.id, progress)
                records = sharding.run_plan_on_ranks(lambda: job.store if job is not None else RunStore(store_path), net,
                                                     tokenizer, plan, progress, ranks, on_backoff=on_backoff)
        except KeyboardInterrupt:
            err.print("interrupted: finished samples are saved; run the same command again to resume")
            raise typer.Exit(130) from None
    sharding.leave()
    return records


def _run_as_job(job_dir: Path, net: Any, tokenizer: Any, plan: Any, err: Console,
                on_backoff: Callable[[int, int], None], n_total: int) -> list[EvalRecord]:
    """The plan as a Slurm eval job: every record into the folder's journal, with the job's start, what it
    evaluates (its grid, samples x cells) and its ending."""
    from dreamlab.evals.harness import run_plan
    from dreamlab.evals.journaled import JournalEvalStore

    store = JournalEvalStore(job_dir)
    store.job_started()
    store.describe_job(run_id=plan.run_id, model=plan.model, task=plan.task_label, grid_id=plan.grid_id, n_total=n_total)

    def on_sigterm(signum: int, frame: object) -> None:  # scancel --signal=TERM (dreamlab evals stop)
        raise StopRequested()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with RichProgress(err) as progress:
            records = run_plan(store, net, tokenizer, plan, progress, on_backoff=on_backoff)
    except BaseException as error:
        if isinstance(error, StopRequested):
            store.job_ended("stopped", "stopped by SIGTERM (dreamlab evals stop); finished samples are kept")
        else:
            store.job_ended("stopped" if isinstance(error, KeyboardInterrupt) else "failed",
                            f"{type(error).__name__}: {error}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    store.job_ended("completed")
    return records


def print_frontier(records: list[EvalRecord], console: Console) -> None:
    """The frontier table (Pareto cells starred) and the accuracy-vs-answer-tokens/s plot."""
    first = records[0]
    console.print(frontier_table(records, title=f"{first.task} · {first.model} · {first.n_samples} problems · "
                                                f"{first.shots} shots · accuracy vs speed (★ Pareto-optimal)"))
    if sum(1 for r in records if r.answer_tokens_per_s and r.accuracy is not None) > 1:
        console.print(Text.from_ansi(frontier_plot(records, width=min(console.width - 1, 90))))


@app.command("frontier")
def frontier_command(
    evals: Annotated[list[int] | None, typer.Argument(help="Eval ids (default: the newest grid's cells).")] = None,
    grid: Annotated[str | None, typer.Option(help="A grid id (every cell of one `dreamlab eval`).")] = None,
    run: Annotated[str | None, typer.Option(help="Every eval of a run (name, id or `latest`).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Accuracy against answer tokens/s for an eval grid's cells, the Pareto-optimal ones marked."""
    from dreamlab.evals.frontier import pareto_ids

    with _errors():
        store = open_existing_store(db)
        if evals:
            records = [store.get_eval(eval_id) for eval_id in evals]
        elif run is not None or grid is not None:
            records = store.list_evals(run_ref=run, grid_id=grid)
        else:  # the newest grid; an eval without one (the lm-eval bridge's) is a grid of its own
            newest = store.list_evals()
            last = newest[-1] if newest else None
            records = [r for r in newest if last.grid_id is not None and r.grid_id == last.grid_id] or newest[-1:]
        if not records:
            raise ValueError("no evals to plot: run `dreamlab eval` with speed axes (--cache, --threshold, ...) first")
    if as_json:
        best = pareto_ids(records)
        typer.echo(json.dumps([{**row, "pareto": row["id"] in best} for row in export_rows(records)], indent=2, default=str))
        return
    print_frontier(records, Console(highlight=False))


@app.command("score")
def score_command(
    file: Annotated[Path, typer.Argument(help="A generations file: jsonl with question / gold / generation fields.")],
    task: Annotated[str, typer.Option(help="The task whose stop strings, extractor, scorer and lm-eval filters to use.")] = "gsm8k",
    out: Annotated[Path | None, typer.Option(help="Write the re-scored rows here (jsonl).")] = None,
    mask_token: Annotated[str, typer.Option(help="The mask token text counted as leftover.")] = "<|mask|>",
    as_json: JsonOption = False,
) -> None:
    """Re-score a generations file as the task scores: until-cut, extractor and Math-Verify, lm-eval's strict / flexible."""
    with _errors():
        spec = load_task(task)
        if not file.is_file():
            raise FileNotFoundError(f"no generations file {file}")
        rows = []
        for number, row in json_lines(file, ValueError):
            if not isinstance(row, dict):
                raise ValueError(f"{file}:{number}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in ("gold", "generation") if key not in row]
            if missing:
                raise ValueError(f"{file}:{number}: missing field {missing[0]!r} (need question, gold, generation)")
            reference = row.get(spec.reference_field) if spec.reference_field else None
            if reference is None and spec.gold_boxed:
                reference = row["gold"]
            try:
                score = score_generation(str(row["generation"]), spec.gold_answer(str(row["gold"])), extractor=spec.extractor,
                                         scorer=spec.scorer, numeric=spec.numeric, mask_token=mask_token, until=spec.until,
                                         lm_eval=spec.lm_eval, reference=None if reference is None else str(reference))
            except ValueError as error:  # lm-eval's minerva scoring needs a boxed answer in the reference solution
                field = spec.reference_field if spec.reference_field in row else "gold"
                raise ValueError(f"{file}:{number}: {field}: {error}") from None
            rows.append({**row, **score.as_row()})
    strict = summarize(rows, max_new_tokens=0, total=len(rows))
    correct, low, high = strict["n_correct"], strict["ci_low"], strict["ci_high"]
    flexible = sum(row["flexible_correct"] for row in rows)
    summary = {"file": str(file), "task": spec.name, "n": len(rows), "correct": correct, "accuracy": strict["accuracy"],
               "ci_low": low, "ci_high": high, "strict_accuracy": strict["strict_accuracy"],
               "flexible_correct": flexible, "flexible_accuracy": strict["flexible_accuracy"],
               "cut": sum(row["cut_at"] is not None for row in rows),
               "unclosed_boxed": sum(bool(row["unclosed_boxed"]) for row in rows),
               "leftover_masks": sum(row["leftover_masks"] for row in rows)}
    if out is not None:
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    if rows:
        lm_eval = (f"lm-eval strict {100 * summary['strict_accuracy']:.1f}%, flexible "
                   if summary["strict_accuracy"] is not None else "flexible extract ")
        typer.echo(f"{spec.name}: {correct}/{len(rows)} = {100 * summary['accuracy']:.1f}% "
                   f"[95% CI {100 * low:.1f}, {100 * high:.1f}] (math-verify); {lm_eval}"
                   f"{flexible}/{len(rows)} = {100 * summary['flexible_accuracy']:.1f}%; {summary['cut']} cut at a stop string; "
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
    with _errors():
        results = compare(open_existing_store(db), a, b)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2, default=str))
        return
    table = Table(title=f"A = {a}   B = {b}   (paired on shared samples; McNemar)", title_justify="left")
    for column in ("task", "alg", "steps", "evals A/B", "shared", "A", "B", "B − A", "only A", "only B", "p-value"):
        table.add_column(column, justify="left" if column in ("task", "alg") else "right")
    for r in results:
        table.add_row(r.a.task, r.a.alg or "", str(r.a.steps), f"{r.a.id}/{r.b.id}", str(r.shared), fmt_percent(r.accuracy_a),
                      fmt_percent(r.accuracy_b), fmt_points(r.difference), str(r.only_a), str(r.only_b), f"{r.p_value:.3g} ({r.method})")
    console = Console(highlight=False)
    console.print(table)
    for r in results:
        if r.differs:
            settings = ", ".join(f"{key} {va} → {vb}" for key, (va, vb) in r.differs.items() if key not in ("model",))
            console.print(f"[dim]evals {r.a.id}/{r.b.id} differ in: {settings or 'the model only'}[/dim]")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
