"""Process-wide allocator setting for CPU code that allocates and frees large tensors in a loop."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)
_applied: bool | None = None

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc malloc serve large blocks from its heap and keep freed memory for reuse.

    By default glibc gives large blocks (above a threshold of at most 32 MB) their own mmap and
    unmaps them on free, so a loop that allocates the same large tensors each step page-faults them
    all in again; the dense CRF on a batch of 8 photos spent a large share of its time in the
    kernel. With the mmap threshold at 1 GiB and the trim threshold at 2 GiB, freed blocks are
    reused instead. The price: the process keeps its peak memory until it exits, so batch
    evaluations opt in at their entry points (eval.py with refinements, the refinement report
    after testing, scripts/tune_refinements.py, scripts/benchmark_crf.py); servers do not.
    Applies once per process on Linux with glibc; returns whether it is in effect.
    """
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _applied = (bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30))
                            and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)))
            except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
                _applied = False
        if _applied:
            log.info("glibc malloc keeps freed memory for reuse (mmap threshold 1 GiB): fewer page faults, "
                     "the process keeps its peak memory.")
    return _applied
