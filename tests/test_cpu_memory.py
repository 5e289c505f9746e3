"""Large CPU tensors come from the reusable heap once freed memory is kept, not from fresh mmap pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Prints the bytes glibc holds in mmap'ed blocks while a 64 MB tensor is alive.
_PROBE = """
import ctypes, ctypes.util, sys, torch
from pipeline.cpu_memory import keep_freed_memory_for_reuse

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory_for_reuse()
tensor = torch.ones(16 << 20, dtype=torch.float32)
print(libc.mallinfo2().hblkhd)
"""


def _mmapped_bytes(mode: str) -> int:
    finished = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return int(finished.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
@pytest.mark.slow
def test_kept_memory_serves_large_tensors_from_the_heap():
    assert _mmapped_bytes("default") >= 64 << 20  # glibc's default: a fresh mapping, unmapped on free
    assert _mmapped_bytes("keep") < 64 << 20
