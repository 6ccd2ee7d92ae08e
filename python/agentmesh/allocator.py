"""An opt-in for programs that move megabyte payloads: keep freed memory for reuse.

agentmesh never changes the process's malloc settings by itself (they are the application's:
they affect every library in the process). With glibc's malloc as a process starts, the two
megabyte objects of a 1 MiB message (the wire ``bytes`` and the payload value that comes back)
go back to the kernel at the end of every message, and the next one maps and zeroes their pages
again: that more than doubles a 1 MiB seal+unseal (docs/agents.md, *Binary values*;
docs/benchmarks.md has the figures). ``keep_freed_memory`` is the documented way to ask for the
other policy from inside the program, where ``GLIBC_TUNABLES`` in the environment is not an
option.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory"]

DEFAULT_LIMIT = 64 * 1024 * 1024
# mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses a larger mmap threshold (half its heap size limit on 64-bit systems).
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_MAX_INT = 2**31 - 1


def keep_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Lets this process keep up to ``limit`` bytes of freed memory at the top of glibc's heap,
    and take buffers of up to ``min(limit, 32 MiB)`` from the heap instead of fresh mappings,
    so large messages reuse memory instead of faulting in new pages. For messages of up to
    N bytes, a ``limit`` of about 2N + 1 MiB is enough (two such buffers are alive at once).

    Process-wide and for good: it sets glibc's ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD``
    (``mallopt``), which also ends glibc's own adjustment of them. Returns True when they were
    set, False where the C library is not glibc (nothing changes there).
    """
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int (bytes), got {type(limit).__name__}")
    if not 0 < limit <= _MAX_INT:
        raise ValueError(f"limit must be between 1 and {_MAX_INT} bytes, got {limit}")
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # (mallopt returns 1 on success)
    mmap_set = mallopt(_M_MMAP_THRESHOLD, min(limit, _MAX_MMAP_THRESHOLD)) == 1
    return mmap_set and mallopt(_M_TRIM_THRESHOLD, limit) == 1
