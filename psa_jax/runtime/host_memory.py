"""Host (CPU process) memory housekeeping."""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["trim_host_memory", "HUGE_PAGE_ENV"]

# Environment for CPU hosts, set before the process starts (the Makefile's `demo` and
# benchmarks/run.py do): glibc then backs its large mmapped chunks with transparent huge pages.
# XLA:CPU allocates its temp buffer (a train step's saved activations, gigabytes for HRNet)
# afresh on every execution; with 4 KiB pages every step pays one minor page fault per page of it,
# with huge pages a small fraction of that (figures in benchmarks/NOTES.md). glibc versions
# without the tunable ignore it.
HUGE_PAGE_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def trim_host_memory() -> bool:
    """Returns freed heap pages to the OS (glibc `malloc_trim(0)`); False where unavailable.

    XLA's compiler frees gigabytes when it finishes, but glibc keeps them in its arenas and the
    executable's buffers are then allocated on top: trimming once after the first compilation
    lowers a train process's peak resident memory by about the heap the compiler left behind
    (figure in benchmarks/NOTES.md).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
