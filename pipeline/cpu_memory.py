"""Let glibc reuse the memory of large freed tensors instead of returning it to the system at once.

On CPU, PyTorch allocates tensors with ``malloc``. glibc serves blocks above
its mmap threshold (at most 32 MB, however it adapts) with fresh ``mmap``
pages and unmaps them on free, so a training step that makes tensors of tens
of megabytes (iBOT logits: crops × patches × prototypes) page-faults every
page of every one of them, every step. Measured here on the distillation
losses: a log-softmax and cross-entropy over a 2,048 × 4,096 float32 tensor
take 55 ms with glibc's defaults and 15 ms once freed memory is kept for reuse
(``benchmarks/distillation.py`` and ``docs/performance.md``).

The cost is memory held after its tensors are gone: the process keeps up to
the high-water mark of its heap, as a GPU caching allocator does. GPUs do not
need this: their allocator already caches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory_for_reuse() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB for this process; ``False`` where that is not glibc.

    Blocks up to 1 GiB then come from the heap and stay there when freed,
    ready for the next step. Safe to call more than once and from any thread.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # musl and other C libraries without glibc's tunables
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
