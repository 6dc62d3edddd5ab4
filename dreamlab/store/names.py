"""Run names: validated so a run folder can never escape the runs directory; generated readable names."""

from __future__ import annotations

import re
import secrets

from dreamlab.store.errors import StoreError

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A run folder sits next to the database file: never let one take the name of SQLite's files.
_RESERVED_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")

_ADJECTIVES = ("amber", "bold", "brisk", "calm", "clever", "crisp", "eager", "fair", "gentle", "glad", "keen",
               "lively", "lucid", "mellow", "nimble", "quiet", "rapid", "sunny", "swift", "tidy", "vivid", "warm",
               "wise", "zesty")
_NOUNS = ("badger", "crane", "dingo", "egret", "falcon", "gecko", "heron", "ibis", "jackal", "koala", "lemur",
          "marten", "newt", "ocelot", "otter", "panda", "quokka", "raven", "stoat", "tapir", "vole", "wombat",
          "yak", "zebu")


def validate_run_name(name: str) -> str:
    """Return `name` if it is a safe run name (letters, digits, - _ .; no / or ..; 1-64 chars), else raise."""
    if not isinstance(name, str) or not name:
        raise StoreError("run name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise StoreError(f"run name is longer than {MAX_NAME_LENGTH} characters: {name[:MAX_NAME_LENGTH]}...")
    if not _NAME.fullmatch(name) or ".." in name:
        raise StoreError(f"bad run name {name!r}: use letters, digits, '-', '_' and '.', starting with a letter "
                         "or digit (no '/', no '..')")
    if name.lower().endswith(_RESERVED_SUFFIXES):
        raise StoreError(f"bad run name {name!r}: names ending in .db are reserved for the store's files")
    return name


def generate_run_name() -> str:
    """A readable random name such as `swift-otter-3f9a` (the caller checks it is unused)."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"
