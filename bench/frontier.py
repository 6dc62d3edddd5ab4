"""Accuracy against speed on a trained model with long prompts (issue 16): the frontier through the real CLI.

Runs `dreamlab eval --task arithmetic --shots 8` (557-token prompts) on a trained run once per group
of cells, the uncached one-token-per-step baseline first, then `dreamlab eval frontier ID ... --json`
on those cells. Saves the frontier's rows under bench/results/ and prints a markdown table: each
cell's answer tokens/s over the baseline's and its accuracy difference. Every cell's speed is its own
wall time: on a machine shared with other jobs, load that changes between cells moves the ratios.

Run: python -m bench.frontier --run RUN --db DB [--limit 500] [--threads 1] [--groups baseline,caches,...] [--out FILE]
     python -m bench.frontier --run RUN --db DB --table-only [--seed N]   (the table over RUN's evals of that seed)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BLOCK = ["--block-length", "16"]
# One `dreamlab eval` per group: each is a grid (comma lists) of cells over the task's defaults
# (entropy, 48 steps, 48 new tokens, greedy). The baseline is the default cell: no blocks, no cache.
GROUPS: dict[str, list[str]] = {
    "baseline": [],
    # Blocks without a cache: what the block schedule alone changes, apart from the stale cache entries.
    "blocks": BLOCK,
    "caches": [*BLOCK, "--cache", "prefix,dual"],
    "threshold": [*BLOCK, "--cache", "dual", "--threshold", "0.9,0.7"],
    "factor": [*BLOCK, "--cache", "dual", "--factor", "1"],
    "gamma": [*BLOCK, "--cache", "dual", "--gamma", "0.1,1"],
    "commit": [*BLOCK, "--cache", "dual", "--threshold", "0.9", "--commit-gap", "3"],
}


def run_cli(args: list[str], threads: int) -> str:
    """Run `python -m dreamlab ARGS` at `threads` CPU threads; its stdout (fails loudly)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print("$ python -m dreamlab " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "dreamlab", *args], env=env, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-2000:])
    if done.returncode:
        raise SystemExit(f"dreamlab {' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout[-2000:]}")
    return done.stdout


RULES = ("threshold", "factor", "gamma", "commit_gap")


def is_baseline(row: dict, *, blocks: bool = False) -> bool:
    """The uncached, one-token-per-step cell: no cache, no decoding rule, steps = max_new_tokens; no blocks (or blocks)."""
    return (row["steps"] == row["max_new_tokens"] and bool(row.get("block_length")) == blocks and not row.get("cache")
            and not any(row.get(name) for name in RULES))


def same_as(db: Path, rows: list[dict], reference: dict | None) -> dict[int, float | None]:
    """Per eval id: the fraction of its problems whose generation equals `reference`'s (None without one)."""
    from dreamlab.store import RunStore

    if reference is None:
        return {row["id"]: None for row in rows}
    store = RunStore(db)
    expected = {s["idx"]: s["generation"] for s in store.eval_samples(reference["id"])}
    fractions: dict[int, float | None] = {}
    for row in rows:
        samples = [s for s in store.eval_samples(row["id"]) if s["idx"] in expected]
        fractions[row["id"]] = sum(s["generation"] == expected[s["idx"]] for s in samples) / max(1, len(samples))
    return fractions


def markdown(db: Path, rows: list[dict]) -> str:
    """The frontier table: speed ratio and accuracy difference against the baseline, and each cell's drift from
    the baseline and from the uncached block cell (which separates what blocks change from what caches and rules do)."""
    base = next((r for r in rows if is_baseline(r)), None)
    if base is None:
        return "(no baseline cell among these evals: no blocks, no cache, no rule, steps = max_new_tokens; see --table-only)"
    same_base = same_as(db, rows, base)
    same_blocks = same_as(db, rows, next((r for r in rows if is_baseline(r, blocks=True)), None))
    speed, accuracy = base["answer_tokens_per_s"], 100 * base["accuracy"]
    lines = ["| cell | accuracy | vs baseline | same output as baseline / as uncached blocks | NFE | tokens/forward | "
             "answer tokens/s | ratio | wall s | Pareto |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in sorted(rows, key=lambda r: -r["answer_tokens_per_s"]):
        extras = [f"{name.replace('_length', '')} {r[name]}" for name in
                  ("block_length", "cache", *RULES) if r.get(name) is not None]
        label = " · ".join([f"{r['alg']} × {r['steps']}", *extras]) + (" (baseline)" if is_baseline(r) else "")
        drift = " / ".join("-" if same[r["id"]] is None else f"{100 * same[r['id']]:.0f}%" for same in (same_base, same_blocks))
        lines.append(f"| {label} | {100 * r['accuracy']:.1f}% | {100 * r['accuracy'] - accuracy:+.1f} | {drift} | {r['nfe_mean']:.1f} | "
                     f"{r['tokens_per_forward']:.2f} | {r['answer_tokens_per_s']:.1f} | "
                     f"{r['answer_tokens_per_s'] / speed:.2f}x | {r['wall_seconds']:.0f} | {'★' if r['pareto'] else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="the trained run (tiny-arithmetic-8shot)")
    source.add_argument("--model", help="a checkpoint folder, or `tiny` (random weights: a smoke test of this script)")
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=500, help="test problems per cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0,
                        help="eval seed; greedy cells decode the same tokens under any seed, so a second seed is a second timing")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {', '.join(GROUPS)}")
    parser.add_argument("--table-only", action="store_true",
                        help="run no evals: the table of --run's evals of --seed and --limit (groups run by several of these scripts side by side)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/frontier-8shot.json"))
    args = parser.parse_args()
    if args.table_only and not args.run:
        parser.error("--table-only needs --run")
    groups = [] if args.table_only else args.groups.split(",")
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}: choose from {', '.join(GROUPS)}")
    model = ["--run", args.run] if args.run else ["--model", args.model]
    common = ["eval", *model, "--db", str(args.db), "--task", "arithmetic", "--shots", "8",
              "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    ids = []
    for name in groups:
        ids += [str(row["id"]) for row in json.loads(run_cli([*common, *GROUPS[name], "--json"], args.threads))]
    if not ids:
        # The table compares like with like: this seed, and as many problems as --limit (a run may hold other
        # evals); the frontier then marks its Pareto cells among those alone.
        every = json.loads(run_cli(["eval", "frontier", "--run", args.run, "--db", str(args.db), "--json"], args.threads))
        ids = [str(row["id"]) for row in every if row["seed"] == args.seed and row["n_samples"] == args.limit]
        if not ids:
            raise SystemExit(f"{args.run} has no evals of seed {args.seed} over {args.limit} problems")
    rows = json.loads(run_cli(["eval", "frontier", *ids, "--db", str(args.db), "--json"], args.threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(markdown(args.db, rows))


if __name__ == "__main__":
    main()
