"""Console at scale: 1,000 runs and 1,000,000 metric rows; first paint, refresh cycles, resident memory.

    python -m bench.console_scale [--runs 1000] [--steps 250] [--keys 4] [--cycles 15]

Builds the store as bench.store_scale does, then starts the console in a fresh Python process
(headless Textual at 80x24, the way `dreamlab` starts it) and measures, side by side in that run:
  - process start (parent's clock, interpreter start included) to the first painted runs table;
  - one refresh cycle of the runs table (1,000 runs) and of the run detail screen (every polling widget
    of it: summary, loss plot, GPU panel, log tail), as the median wall time from asking every
    widget to poll until every widget applied its result;
  - the console process's resident memory (RSS) after first paint and after the detail cycles.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.store_scale import build

CHILD = r'''
import asyncio, json, statistics, sys, time
start = time.perf_counter()
import dreamlab.cli  # what the `dreamlab` console script imports before it opens the console
from dreamlab.tui.app import build_app
from dreamlab.tui.screens.detail import RunDetailScreen
from dreamlab.tui.widgets.polling import pollers
imported = time.perf_counter() - start


def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


async def cycle(pilot, widgets):
    before = [w.polls_applied for w in widgets]
    t0 = time.perf_counter()
    for w in widgets:
        w.poll_now()
    while any(w.polls_applied == b for w, b in zip(widgets, before)):
        await pilot.pause(0.001)
    return time.perf_counter() - t0


async def main(db, cycles, run_name):
    out = {}
    app = build_app(db, poll_s=3600)  # no timer polls: the cycles below are the only refreshes
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.table
        while table.polls_applied == 0:
            await pilot.pause(0.001)
        await pilot.pause()  # let the compositor paint the filled table
        out["first_paint_in_process_s"] = time.perf_counter() - start
        out["import_s"] = imported
        print("PAINTED", flush=True)
        out["rows"] = table.row_count
        out["rss_first_paint_mb"] = rss_mb()
        out["runs_cycle_s"] = statistics.median([await cycle(pilot, [table]) for _ in range(cycles)])
        app.open_run(app.store.get_run(run_name).id)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        widgets = pollers(screen)
        while any(w.polls_applied == 0 for w in widgets):
            await pilot.pause(0.001)
        samples = [await cycle(pilot, widgets) for _ in range(cycles)]
        out["detail_widgets"] = {type(w).__name__: round(w.last_cycle_s * 1000, 2) for w in widgets}
        out["detail_cycle_s"] = statistics.median(samples)
        out["detail_cycle_max_s"] = max(samples)
        out["rss_after_detail_mb"] = rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runs" / "dreamlab.db"
        store, build_s = build(path, args.runs, args.steps, args.keys)
        newest = store.list_runs(limit=1)[0].name
        metric_rows = store.query_readonly(path, "SELECT COUNT(*) FROM metrics")[1][0][0]
        store.close()
        print(f"built {args.runs} runs, {metric_rows:,} metric rows in {build_s:.1f} s\n")
        began = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(args.cycles), newest],
                                 stdout=subprocess.PIPE, text=True)
        painted_wall = None
        result = None
        for line in child.stdout:
            if line.startswith("PAINTED") and painted_wall is None:
                painted_wall = time.perf_counter() - began
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        if child.wait() != 0 or result is None:
            raise SystemExit("the console process failed")
    rows = [
        ("first painted runs table, fresh process (wall, interpreter start included)", f"{painted_wall:.2f} s", "< 1.5 s"),
        ("first painted runs table, from the console's first import", f"{result['first_paint_in_process_s']:.2f} s", ""),
        ("  of which importing the command line and the console (typer, Textual, the store)",
         f"{result['import_s']:.2f} s", ""),
        (f"runs table refresh cycle ({result['rows']} rows, median)", f"{result['runs_cycle_s'] * 1000:.1f} ms", ""),
        ("run detail refresh cycle (all widgets, median)", f"{result['detail_cycle_s'] * 1000:.1f} ms", "< 100 ms"),
        ("run detail refresh cycle (slowest of the cycles)", f"{result['detail_cycle_max_s'] * 1000:.1f} ms", ""),
        ("resident memory after first paint", f"{result['rss_first_paint_mb']:.0f} MB", ""),
        ("resident memory after the detail cycles", f"{result['rss_after_detail_mb']:.0f} MB", "< 300 MB"),
    ]
    print("| measure | value | target |\n|---|---:|---|")
    for label, value, target in rows:
        print(f"| {label} | {value} | {target} |")
    print("\nlast detail cycle per widget (load + apply, ms):", result["detail_widgets"])


if __name__ == "__main__":
    main()
