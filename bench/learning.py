"""Learning: does the embedded default really learn the built-in task on this CPU, and how fast?

Trains the recipe in-process (one gloo process, both cores), then scores the test split of the arithmetic task
with the eval harness (evals/arithmetic.yaml: Math-Verify on the answer after </think>) (greedy, entropy, steps = max_new_tokens).
Run: python -m bench.learning [--level 1] [--steps N] [--eval-rows N] [override ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from dreamlab.config import load_recipe
from dreamlab.data.arithmetic import arithmetic_rows
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.evals.harness import evaluate_in_memory
from dreamlab.evals.tasks import Sample, load_task
from dreamlab.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--eval-rows", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="generation window (and steps); default: the longest training response of the level")
    parser.add_argument("--notrace", action="store_true")
    parser.add_argument("--block-length", type=int, default=None, help="also score with semi-autoregressive blocks")
    parser.add_argument("--json", type=Path, help="append the result as one JSON line here")
    parser.add_argument("--label", default="", help="a name for this configuration in the JSON line")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    source = f"builtin:arithmetic:{args.level}" + (":notrace" if args.notrace else "")
    recipe = load_recipe(None, [f"data.train_files=[{source}]", f"data.val_files=[{source}]",
                                "trainer.save_checkpoint_steps=null", *args.overrides])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    # BENCH_THREADS: several configurations sharing one machine should not each take every core.
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    losses: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as run_dir:
        def record(step: int, values: dict[str, float]) -> None:
            losses.append((step, values.get("train/loss", float("nan"))))
            val = f" val {values['val/loss']:.4f}" if "val/loss" in values else ""
            print(f"step {step} loss {values.get('train/loss', float('nan')):.4f}{val} "
                  f"{values.get('train/step_seconds', 0):.2f} s/step", file=sys.stderr, flush=True)

        trainer = Trainer(recipe, Path(run_dir), metrics=record)
        trainer.setup()
        started = time.perf_counter()
        outcome = trainer.fit()
        train_seconds = time.perf_counter() - started
    rows = arithmetic_rows("test", level=args.level, size=args.eval_rows, trace=not args.notrace)
    samples = [Sample(i, r["question"], r["gold"]) for i, r in enumerate(rows)]
    task = load_task("arithmetic")
    task.system = recipe.data.system_prompt
    model = trainer.raw_model.eval()
    window = args.max_new_tokens or max(len(example.response_ids) for example in trainer.train)
    cell = SamplerSettings(alg="entropy", steps=window, max_new_tokens=window)
    started = time.perf_counter()
    result, scored = evaluate_in_memory(model, trainer.tokenizer, task, samples, cell, batch_size=128)
    eval_seconds = time.perf_counter() - started
    if args.block_length:
        blocked, _ = evaluate_in_memory(model, trainer.tokenizer, task, samples,
                                        dataclasses.replace(cell, block_length=args.block_length), batch_size=128)
        print(f"  with block_length {args.block_length}: {blocked['n_correct']}/{blocked['n_done']} = "
              f"{100 * blocked['accuracy']:.1f}%")
    by_kind: dict[str, list[bool]] = {}
    for row, source in zip(scored, rows):
        by_kind.setdefault(source["kind"], []).append(bool(row["correct"]))
    kinds = {kind: sum(hits) / len(hits) for kind, hits in by_kind.items()}
    print("  by kind: " + ", ".join(f"{k} {100 * v:.1f}% ({len(by_kind[k])})" for k, v in kinds.items()))
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps({"label": args.label, "level": args.level, "notrace": args.notrace,
                                  "overrides": args.overrides, "status": outcome.status, "steps": outcome.step,
                                  "train_seconds": train_seconds, "threads": torch.get_num_threads(),
                                  "accuracy": result["accuracy"], "max_new_tokens": window,
                                  "rows": result["n_done"], "by_kind": kinds, "device": str(trainer.device),
                                  "loss_curve": losses[1:]}) + "\n")
    curve = " ".join(f"{s}:{l:.3f}" for s, l in losses[1::max(1, len(losses) // 12)])
    print(f"level {args.level}{' notrace' if args.notrace else ''} overrides {args.overrides}")
    print(f"  {outcome.status} at step {outcome.step}, train {train_seconds:.0f} s; accuracy "
          f"{result['n_correct']}/{result['n_done']} = {100 * result['accuracy']:.1f}% (eval {eval_seconds:.0f} s, "
          f"mean NFE {result['nfe_mean']:.0f})")
    print(f"  loss curve {curve}")
    for row in scored[:3]:
        print(f"  {row['question']!r} -> {row['generation']!r} (gold {row['gold']})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
