"""Learning: does the embedded default really learn the built-in task on this CPU, and how fast?

Trains the recipe in-process (one gloo process, both cores), then scores exact match on the test
split of the arithmetic task (greedy, entropy, steps = max_new_tokens).
Run: python -m bench.learning [--level 1] [--steps N] [--eval-rows N] [override ...]
"""

from __future__ import annotations

import argparse
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
from dreamlab.evals.exact_match import exact_match
from dreamlab.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--eval-rows", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=64)
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
    model = trainer.raw_model.eval()
    started = time.perf_counter()
    result = exact_match(model, trainer.tokenizer, [r["question"] for r in rows], [r["gold"] for r in rows],
                         max_new_tokens=args.max_new_tokens, steps=args.max_new_tokens,
                         system_prompt=recipe.data.system_prompt)
    eval_seconds = time.perf_counter() - started
    if args.block_length:
        blocked = exact_match(model, trainer.tokenizer, [r["question"] for r in rows], [r["gold"] for r in rows],
                              max_new_tokens=args.max_new_tokens, steps=args.max_new_tokens,
                              block_length=args.block_length, system_prompt=recipe.data.system_prompt)
        print(f"  with block_length {args.block_length}: {blocked.correct}/{blocked.total} = {100 * blocked.accuracy:.1f}%")
    by_kind: dict[str, list[bool]] = {}
    for answer, row in zip(result.answers, rows):
        by_kind.setdefault(row["kind"], []).append(answer == row["gold"])
    kinds = {kind: sum(hits) / len(hits) for kind, hits in by_kind.items()}
    print("  by kind: " + ", ".join(f"{k} {100 * v:.1f}% ({len(by_kind[k])})" for k, v in kinds.items()))
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps({"label": args.label, "level": args.level, "notrace": args.notrace,
                                  "overrides": args.overrides, "status": outcome.status, "steps": outcome.step,
                                  "train_seconds": train_seconds, "accuracy": result.accuracy, "rows": result.total,
                                  "by_kind": kinds, "device": str(trainer.device),
                                  "loss_curve": losses[1:]}) + "\n")
    curve = " ".join(f"{s}:{l:.3f}" for s, l in losses[1::max(1, len(losses) // 12)])
    print(f"level {args.level}{' notrace' if args.notrace else ''} overrides {args.overrides}")
    print(f"  {outcome.status} at step {outcome.step}, train {train_seconds:.0f} s; exact match "
          f"{result.correct}/{result.total} = {100 * result.accuracy:.1f}% (eval {eval_seconds:.0f} s, NFE {result.nfe})")
    print(f"  loss curve {curve}")
    for g, r in list(zip(result.generations, rows))[:3]:
        print(f"  {r['question']!r} -> {g!r} (gold {r['gold']})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
