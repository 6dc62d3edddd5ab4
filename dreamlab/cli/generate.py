"""`dreamlab generate`: sample from a model with the diffusion sampler and watch masks fill in."""

from __future__ import annotations

import sys
import time
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from dreamlab.cli.options import DbOption, resolve_db
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.display import render_with_masks
from dreamlab.store.errors import StoreError
from dreamlab.store.models import choose_model

DEFAULT_PROMPT = "Solve: 27 + 45"


def _fail(error: Exception) -> NoReturn:
    """One `error:` line on stderr (the first line of the message), exit code 2."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (wrapped in the chat template unless --raw).")] = DEFAULT_PROMPT,
    model: Annotated[str, typer.Option(help="`tiny` (built-in preset), a checkpoint folder, or a hub id.")] = "tiny",
    run: Annotated[str | None, typer.Option(help="A recorded run (name, id, or `latest`): its newest complete checkpoint (overrides --model).")] = None,
    db: DbOption = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    steps: Annotated[int, typer.Option(min=1)] = 64,
    alg: Annotated[str, typer.Option(help="Remasking algorithm: origin, maskgit_plus, topk_margin, entropy.")] = "entropy",
    temperature: float = 0.0,
    top_p: Annotated[float | None, typer.Option()] = None,
    top_k: Annotated[int | None, typer.Option()] = None,
    alg_temp: Annotated[float | None, typer.Option()] = None,
    eps: Annotated[float, typer.Option(help="The last timestep (the schedule runs from 1 to eps).")] = SamplerSettings.eps,
    block_length: Annotated[int | None, typer.Option(help="Semi-autoregressive blocks of this many tokens.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Also reveal every position with p >= threshold.")] = None,
    cache: Annotated[str | None, typer.Option(help="prefix or dual: Fast-dLLM's block-wise KV cache (needs --block-length).")] = None,
    factor: Annotated[float | None, typer.Option(help="Fast-dLLM's factor rule: reveal while (i+1)(1-p_i) < factor.")] = None,
    gamma: Annotated[float | None, typer.Option(help="Entropy bound: reveal while summed entropy - max <= gamma.")] = None,
    commit_gap: Annotated[float | None, typer.Option(help="Early commit: fill the block once the mean top-2 gap >= this.")] = None,
    seed: int = 0,
    elide_noop_steps: Annotated[bool, typer.Option("--elide/--no-elide", help="Skip steps that reveal nothing: fewer model calls, same tokens at temperature 0, same distribution when sampling.")] = True,
    raw: Annotated[bool, typer.Option(help="Use the prompt as is, without the chat template.")] = False,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Allow a checkpoint's own Python code to run.")] = False,
) -> None:
    """Generate a completion and show the masks filling in step by step."""
    import torch  # heavy imports stay out of the CLI's start-up

    from dreamlab.diffusion.sampler import SamplerHooks, generate as diffusion_generate
    from dreamlab.evals.harness import cut_at_eos
    from dreamlab.models.loading import load_model_and_tokenizer

    console = Console()
    if run is not None:
        try:
            model = choose_model(resolve_db(db), run=run).source
        except (StoreError, FileNotFoundError) as error:
            _fail(error)
        console.print(f"[dim]run {run}: {model}[/dim]")
    try:
        net, tokenizer = load_model_and_tokenizer(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        _fail(error)
    mask_id = net.config.mask_token_id
    text = prompt if raw else tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    input_ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids], device=net.device)
    prompt_length = input_ids.shape[1]
    live = Live(console=console, refresh_per_second=20, transient=True) if console.is_terminal else None

    def show(step, x, logits):
        if live is not None:
            body = render_with_masks(tokenizer, x[0, prompt_length:].tolist(), mask_id)
            live.update(Panel(body, title=f"step {0 if step is None else step + 1}/{steps}"))
        return x

    started = time.perf_counter()
    try:
        if live is not None:
            live.start()
        out = diffusion_generate(
            net, input_ids, max_new_tokens=max_new_tokens, steps=steps, alg=alg, alg_temp=alg_temp,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, block_length=block_length,
            threshold=threshold, eps=eps, elide_noop_steps=elide_noop_steps, cache=cache, factor=factor, gamma=gamma,
            commit_gap=commit_gap, hooks=SamplerHooks(tokens=show),
        )
    except ValueError as error:
        _fail(error)
    finally:
        if live is not None:
            live.stop()
    seconds = time.perf_counter() - started
    answer = tokenizer.decode(cut_at_eos(tokenizer, out.sequences[0, prompt_length:].tolist()))
    console.print(Panel(answer or "[dim](empty: the model filled every position with EOS)[/dim]", title="generation"))
    summary = Table.grid(padding=(0, 2))
    summary.add_row("model", model, "alg", alg, "steps", str(steps))
    summary.add_row("model calls (NFE)", str(out.nfe), "seconds", f"{seconds:.2f}",
                    "tokens/s", f"{max_new_tokens / seconds:.1f}")
    console.print(summary)
    if model == "tiny":
        print("note: `tiny` is the untrained preset (random weights): expect noise. Train it with "
              "`dreamlab train --foreground --name demo`, then `dreamlab generate --run demo`.", file=sys.stderr)
