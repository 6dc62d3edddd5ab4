"""Turning token ids into text people read: masks shown as blocks, output cut at the first EOS."""

from __future__ import annotations

from dreamlab.display import MASK_GLYPH, render_with_masks  # noqa: F401  (shared with the console's replay)
from dreamlab.evals.harness import cut_at_eos  # noqa: F401  (re-exported for the CLI)
