"""Keep freed tensor memory inside the process on glibc, so CPU inference stops paying page faults on every op.

glibc hands each allocation above its mmap threshold (128 KiB, rising with use) to the kernel and gives it
back on free: every batched forward then faults its activations in page by page again (measured on the
demo model at batch 32: ~10,000 minor faults a forward, 1.4x the CPU time of the eval; bench/README.md,
"Eval throughput"). PyTorch has no caching allocator on the CPU, so the fix is glibc's own settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h) and the largest mmap threshold glibc accepts on 64-bit machines.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MiB from the heap and keep up to 1 GiB of freed memory; False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
