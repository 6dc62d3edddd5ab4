"""Published results beside measured ones: a task file's `published:` entries matched to an eval's model and settings."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from dreamlab.evals.grid import EXTRA_SETTINGS
from dreamlab.evals.tasks import PUBLISHED_KEYS, SAMPLER_KEYS, TaskError, load_task

# Besides these, an entry may pin sampler settings (alg, temperature, top_p, ...): a cell matches only with them.
_SETTING_KEYS = ("template", "shots", "max_new_tokens", "steps")


@lru_cache(maxsize=64)
def _published(task_name: str) -> tuple[dict[str, Any], ...]:
    try:
        return tuple(load_task(task_name).published)
    except TaskError:  # a task file deleted or renamed since the eval: nothing to show
        return ()


def _same_model(published: str, record: Any) -> bool:
    """The eval's model is the published one: its hub id, or a folder named like it (a local copy)."""
    wanted = published.lower().rstrip("/")
    for name in (record.model, record.checkpoint):
        name = (name or "").lower().rstrip("/")
        if name and (name == wanted or name.rsplit("/", 1)[-1] == wanted.rsplit("/", 1)[-1]):
            return True
    return False


def _plain_decoding(entry: dict[str, Any], record: Any) -> bool:
    """The eval decodes as the published run did: no blocks, cache or decoding rule the entry does not pin.

    A block as long as the answer is no block (LLaDA's published runs set block_length = gen_length).
    """
    for key in EXTRA_SETTINGS:
        value = getattr(record, key, None)
        if key not in entry and value is not None and not (key == "block_length" and value == record.max_new_tokens):
            return False
    return True


def published_for(record: Any) -> dict[str, Any] | None:
    """The task's published result whose model and settings this eval matches (None for a --limit eval or no match)."""
    if record.limit_n is not None or not record.task:
        return None
    for entry in _published(record.task.split(":", 1)[0]):
        pinned = [key for key in entry if key in _SETTING_KEYS or (key in SAMPLER_KEYS and key not in PUBLISHED_KEYS)]
        if (_same_model(entry["model"], record) and all(getattr(record, key, None) == entry[key] for key in pinned)
                and _plain_decoding(entry, record)):
            return entry
    return None


def published_note(record: Any) -> str | None:
    """`published 77.2 (source)` for an eval that matches a published result."""
    entry = published_for(record)
    return None if entry is None else f"published {entry['value']:.1f} ({entry['source']})"
