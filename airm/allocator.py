"""Keeping freed host memory for reuse, for CPU training (glibc's malloc only).

PyTorch allocates a CPU tensor with the C library's malloc and has no caching allocator for
the CPU. glibc serves a request above its mmap threshold (raised as large blocks are freed, but
never above 32 MiB on 64-bit systems) with fresh pages from the kernel and gives them back on
free, so every tensor over 32 MiB costs a page fault per 4 KiB page each time it is made. A CPU
training step makes dozens of them: the implicit decoder's float32 activations and gradients
at batch 8 (8 x 50,176 queries x 32 channels) are 51 MB each. Measured on this project's 2-core
machine, one thread, batch 8 (`python tools/bench_train_step.py`): 1.23x faster steps, 72,000
page faults a step down to 600, the same peak memory (the README has the figures).

`retain_freed_memory()` makes glibc serve every request from its heap and never give freed
memory back (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = the largest value): the process's
resident memory then stays at its peak, the right trade for a training run, which returns to
its peak every step. It changes the whole process from that call on, so only entry points that
own their process call it (`airm.training.train` on a CPU); inference does not, where it
measured no faster (its decoder works in chunks of 16,384 queries, under 8 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


@functools.cache
def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for reuse (see the module's
    docstring). Returns whether it took effect: False where the C library is not glibc
    (macOS, Windows, musl), which are left as they are."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
