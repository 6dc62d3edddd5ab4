"""How runs read on screen, shared by `dreamlab runs` and the console: status colours, numbers, times."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

STATUS_STYLES = {"queued": "dim", "running": "bold cyan", "completed": "green", "failed": "bold red",
                 "diverged": "magenta", "stopped": "yellow", "lost": "red",
                 "stalled": "bold yellow"}


def fmt_value(value: Any) -> str:
    """A param or metric value: numbers short, lists / dicts as JSON, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return fmt_number(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def fmt_number(value: Any) -> str:
    """A number with 4 significant digits (ints, NaN and infinities as they are); None as a dash."""
    if value is None:
        return "—"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def fmt_percent(fraction: float | None) -> str:
    """A fraction as `72.5%`; None as a dash."""
    return "—" if fraction is None else f"{100 * fraction:.1f}%"


def fmt_points(difference: float | None) -> str:
    """A difference of two fractions in percentage points, signed (`+16.7`); None as a dash."""
    return "—" if difference is None else f"{100 * difference:+.1f}"


def fmt_when(stamp: float | None, short: bool = False) -> str:
    """A unix time as local date and time ('%m-%d %H:%M' when short); None as a dash."""
    if stamp is None:
        return "—"
    return datetime.fromtimestamp(stamp).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    """Seconds as 1h02m / 3m04s / 5s; None as a dash."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


MASK_GLYPH = "░"


def render_with_masks(tokenizer: Any, ids: list[int], mask_token_id: int) -> str:
    """Decode ids with a transformers tokenizer, drawing each still-masked position as a block."""
    pieces, run = [], []
    for token in ids:
        if token == mask_token_id:
            if run:
                pieces.append(tokenizer.decode(run))
                run = []
            pieces.append(MASK_GLYPH)
        else:
            run.append(token)
    if run:
        pieces.append(tokenizer.decode(run))
    return "".join(pieces)
