"""The C allocator's handling of freed memory, for the CPU runs' speed.

A mini-batch of the AV-CIL network on the release's features holds tensors of 85 MB (384 clips x
72 tokens x 768 channels x 4 bytes). glibc's malloc serves blocks that large with ``mmap`` and
gives them back with ``munmap`` when freed, so every forward and backward pass asks the kernel for
fresh zeroed pages again: on the release's AVE-CI files a 10-epoch AV-CIL run spent 89 of its 295
CPU seconds in the kernel on 38 million page faults (``perf/notes/avcil-side-by-side.md``). With
:func:`retain_freed_memory` the process keeps freed blocks on its heap and reuses them: the page
faults go away, at the price of a higher peak resident size (freed memory is not returned to the
system until the process ends). PyTorch's own CPU tuning guide recommends jemalloc or tcmalloc
for the same reason; this needs no extra library. Numbers do not change: only where memory comes
from does.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: freed memory at the top of the heap is kept up to this size (1 GiB) instead of being trimmed
TRIM_THRESHOLD = 1 << 30

_applied = False


def retain_freed_memory() -> bool:
    """Make glibc's malloc serve every block from the heap and keep freed memory for reuse (no
    ``mmap`` per large tensor). Once per process; True when it is in effect (Linux with glibc),
    False elsewhere, where nothing changes."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
