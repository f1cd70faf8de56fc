"""avcl_bench/allocator.py: freed memory is kept and reused, so a large block allocated again
takes no new pages from the system (by default glibc maps such a block afresh every time)."""

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "retain":
        from avcl_bench.allocator import retain_freed_memory
        assert retain_freed_memory() and retain_freed_memory()  # idempotent
    size = 64 * 2**20  # a 64 MB block (a tensor of the AV-CIL network's batch is 85 MB): 16384 pages
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)  # touch every page, as writing a tensor does
        libc.free(block)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults():
    def last_faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert last_faults("default") > 10000  # a fresh mapping, one fault per page
    assert last_faults("retain") < 1000  # the heap's own pages again
