"""`dreamlab --serve`: the console in a browser through textual-serve, bound to localhost only."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

LOCALHOST = "127.0.0.1"


def serve_command(db: Path) -> str:
    """The command textual-serve starts for each browser session."""
    return shlex.join([sys.executable, "-m", "dreamlab.tui", "--db", str(db.resolve())])


def serve_console(db: Path, port: int) -> None:
    """Serve until interrupted; reachable only from this machine (tunnel with `ssh -L PORT:localhost:PORT`)."""
    from textual_serve.server import Server

    from dreamlab.tui import open_store

    open_store(db).close()  # refused here, once, rather than in every browser tab
    Server(serve_command(db), host=LOCALHOST, port=port, title="dreamlab").serve()
