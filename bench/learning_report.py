"""Markdown for docs/learning.md from `bench.learning --json` lines: a results table and the loss curves.

Run: python -m bench.learning_report RESULTS.jsonl [--labels a,b,...] [--smooth 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import plotext

MARKERS = ["*", "o", "+", "x", "#", "@"]

def smoothed(curve: list[list[float]], window: int) -> tuple[list[float], list[float]]:
    """Steps and the trailing mean of the last `window` logged losses (single-step losses are noisy)."""
    steps, values = [s for s, _ in curve], [v for _, v in curve]
    means = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
             for i in range(len(values))]
    return steps, means


def chart(rows: list[dict], window: int) -> str:
    """One plain-text log-scale chart of every row's smoothed loss curve."""
    plotext.clear_figure()
    plotext.theme("clear")
    plotext.plotsize(96, 24)
    for row, marker in zip(rows, itertools.cycle(MARKERS)):  # without colour, only the marker tells curves apart
        steps, means = smoothed(row["loss_curve"], window)
        plotext.scatter(steps[::2], means[::2], label=row["label"], marker=marker)
    plotext.yscale("log")
    plotext.xlabel("optimizer step")
    plotext.ylabel(f"train loss (mean of {window} logs)")
    return re.sub(r"\x1b\[[0-9;]*m", "", plotext.build())


def table(rows: list[dict]) -> str:
    """Markdown: level, configuration, steps, training time (and threads), exact match, by kind, final loss."""
    lines = ["| level | configuration | steps | train time (threads) | exact match | by kind | loss (last 5 logs) |",
             "|---:|---|---:|---:|---:|---|---:|"]
    for row in rows:
        kinds = ", ".join(f"{kind} {100 * value:.1f}%" for kind, value in sorted(row["by_kind"].items()))
        tail = [v for _, v in row["loss_curve"][-5:]]
        lines.append(f"| {row['level']} | {row['label']} | {row['steps']:,} | {row['train_seconds'] / 60:.1f} min ({row.get('threads', '?')}) | "
                     f"**{100 * row['accuracy']:.1f}%** ({row['rows']} rows) | {kinds} | {sum(tail) / len(tail):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--labels", help="comma list of labels to include, in this order (default: all)")
    parser.add_argument("--smooth", type=int, default=5)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    if args.labels:
        wanted = args.labels.split(",")
        rows = sorted((r for r in rows if r["label"] in wanted), key=lambda r: wanted.index(r["label"]))
    print(table(rows))
    print()
    print("```text")
    print(chart(rows, args.smooth))
    print("```")


if __name__ == "__main__":
    main()
