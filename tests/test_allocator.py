"""airm.allocator: freed memory is kept for reuse, so large tensors stop costing page faults."""

import subprocess
import sys

import pytest

# Allocates and fills a 64 MiB tensor (twice glibc's largest mmap threshold) six times and
# prints the minor page faults of the last three, per 4 KiB page of the tensor (the first ones
# grow the heap).
_CHILD = """
import resource, sys, torch
from airm.allocator import retain_freed_memory
took = retain_freed_memory() if sys.argv[1] == "retain" else None
pages = 64 * 2**20 // 4096
for i in range(6):
    if i == 3:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)  # float32: 64 MiB, freed at once
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (3 * pages))
"""


def _faults_per_page(mode: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_retained_memory_is_reused_without_page_faults():
    took, retained = _faults_per_page("retain")
    if took != "True":
        pytest.skip("the C library is not glibc")
    _, default = _faults_per_page("default")
    # glibc's default maps each 64 MiB tensor afresh: a fault per page, every time.
    assert default > 0.9
    assert retained < 0.05
