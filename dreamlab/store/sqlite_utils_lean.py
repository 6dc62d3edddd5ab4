"""`sqlite_utils`, imported without pandas.

sqlite_utils imports pandas whenever it is installed (datasets installs it) only to map
`pandas.Timestamp` to TEXT, which the store never writes. That import is a third of a second
of the console's start, so it is hidden for the duration of this one import.
"""

from __future__ import annotations

import sys

if "pandas" in sys.modules:
    import sqlite_utils
else:
    sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` raise ImportError
    try:
        import sqlite_utils
    finally:
        del sys.modules["pandas"]

__all__ = ["sqlite_utils"]
