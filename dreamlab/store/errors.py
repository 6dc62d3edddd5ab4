"""The run store's one error type: its message is a single line fit for `error: ...`."""

from __future__ import annotations


class StoreError(Exception):
    """A refused store operation (unknown run, bad name, wrong status, newer schema...)."""
