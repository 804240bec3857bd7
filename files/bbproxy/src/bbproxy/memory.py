"""Give freed heap memory back to the operating system after many sessions close at once.

OpenSSL's per-connection state and Python's buffers come from glibc's malloc. When thousands
of mobile clients drop at once (a network outage, a Prosody restart), that memory is freed but
glibc keeps it in the process: RSS stays at the peak until the next peak reuses it. glibc's
``malloc_trim(0)`` releases free pages back to the kernel. It exists only on glibc (not musl);
elsewhere :func:`trim` does nothing and says so.

The relay's buffers are the other side of it: each read hands over up to 256 KiB, decrypted or
encrypted into buffers as large, freed a moment later. With glibc's defaults a free at the top
of the heap above its (adaptive) trim threshold goes straight back to the kernel, and the next
read faults the same pages in again (a ``brk`` pair and ~64 page faults per read).
:func:`tune_for_relay` keeps up to :data:`TRIM_THRESHOLD` of free heap for reuse instead, and
serves buffers up to :data:`MMAP_THRESHOLD` from the heap; :func:`trim` still returns
everything free after a mass close.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from typing import Final, cast

_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
TRIM_THRESHOLD: Final = 16 * 1024 * 1024
MMAP_THRESHOLD: Final = 4 * 1024 * 1024
# An operator who sets glibc's own tunables (MALLOC_TRIM_THRESHOLD_=...) keeps them.
_OPERATOR_TUNABLES: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    func = getattr(_libc(), "malloc_trim", None)  # glibc only
    if func is None:
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return cast("Callable[[int], int]", func)


def available() -> bool:
    return _malloc_trim() is not None


def trim() -> bool:
    """Release free heap pages to the kernel; False if this libc cannot."""
    func = _malloc_trim()
    if func is None:
        return False
    func(0)
    return True


def tune_for_relay() -> bool:
    """Keep the relay's freed buffers for reuse (see the module docstring); False if this libc
    has no mallopt or the operator tuned glibc's malloc through the environment."""
    if any(name in os.environ for name in _OPERATOR_TUNABLES):
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if available() else None  # glibc: malloc_trim + mallopt
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mmap_set) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc), 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
