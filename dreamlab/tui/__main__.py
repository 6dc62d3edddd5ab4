"""`python -m dreamlab.tui [--db PATH]`: the console alone (what `dreamlab --serve` runs per browser tab)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamlab.store import default_db_path
from dreamlab.tui import run_console

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=None, help="the run store (default: $DREAMLAB_DB or runs/dreamlab.db)")
    run_console(parser.parse_args().db or default_db_path())
