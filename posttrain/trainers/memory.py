"""Keep the resident memory of a training process close to what its tensors need.

glibc serves large allocations with ``mmap`` and returns them to the OS when freed, but it raises that
threshold dynamically (up to 32 MiB) each time such a block is freed; from then on tensors of that size
come from the heap, which fragments and rarely shrinks. A training step frees and re-allocates the same
activations, logits and optimizer temporaries every step, so peak RSS creeps up by hundreds of MB over
the first steps. Fixing the threshold (``M_MMAP_THRESHOLD``) turns the dynamic adjustment off.

It is a trade, so it is off unless asked for (``POSTTRAIN_MMAP_THRESHOLD=1048576``): on the SFT benchmark
(docs/benchmarks.md) a 1 MiB threshold lowered peak RSS from 4577 to 4234 MB and cost 20% of the throughput
(166 → 134 tokens/s), the price of fresh zeroed pages for every large tensor.

FSDP on the CPU is the exception, on by default (:data:`FSDP_CPU_THRESHOLD`; ``POSTTRAIN_MMAP_THRESHOLD=0`` turns
it off): every layer's parameters are gathered into fresh buffers and freed again, forward and backward, and
with the dynamic threshold those blocks stay in the heap — two FSDP processes then peaked as high as one
process holding everything (3918 against 3925 MiB, ``benchmarks/bench_processes.py``), and 2668 MiB with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


FSDP_CPU_THRESHOLD = 1 << 20  # bytes: the threshold of a sharded (FSDP) run on the CPU unless the variable is set


def release_freed_tensors(threshold_bytes: int | None = None, default: int = 0) -> bool:
    """Serve allocations of at least ``threshold_bytes`` with ``mmap`` (glibc only); True if applied.

    The default is ``$POSTTRAIN_MMAP_THRESHOLD``, else ``default`` (``0``: leave glibc's dynamic threshold alone).
    """
    if threshold_bytes is None:
        threshold_bytes = int(os.environ.get("POSTTRAIN_MMAP_THRESHOLD", str(default)))
    if threshold_bytes <= 0 or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
