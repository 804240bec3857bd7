"""Give freed heap memory back to the operating system after many sessions close at once.

OpenSSL's per-connection state and Python's buffers come from glibc's malloc. When thousands
of mobile clients drop at once (a network outage, a Prosody restart), that memory is freed but
glibc keeps it in the process: RSS stays at the peak until the next peak reuses it. glibc's
``malloc_trim(0)`` releases free pages back to the kernel. It exists only on glibc (not musl);
elsewhere :func:`trim` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from typing import Final

_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func


def available() -> bool:
    return _malloc_trim() is not None


def trim() -> bool:
    """Release free heap pages to the kernel; False if this libc cannot."""
    func = _malloc_trim()
    if func is None:
        return False
    func(0)
    return True


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc), 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
