"""Keep the resident memory of a training process close to what its tensors need.

glibc serves large allocations with ``mmap`` and returns them to the OS when freed, but it raises that
threshold dynamically (up to 32 MiB) each time such a block is freed; from then on tensors of that size
come from the heap, which fragments and rarely shrinks. A training step frees and re-allocates the same
activations, logits and optimizer temporaries every step, so peak RSS creeps up by hundreds of MB over
the first steps. Fixing the threshold (``M_MMAP_THRESHOLD``) turns the dynamic adjustment off.

It is a trade, so it is off unless asked for (``POSTTRAIN_MMAP_THRESHOLD=1048576``): on the SFT benchmark
(docs/benchmarks.md) a 1 MiB threshold lowered peak RSS from 4577 to 4234 MB and cost 20% of the throughput
(166 → 134 tokens/s), the price of fresh zeroed pages for every large tensor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def release_freed_tensors(threshold_bytes: int | None = None) -> bool:
    """Serve allocations of at least ``threshold_bytes`` with ``mmap`` (glibc only); True if applied.

    The default is ``$POSTTRAIN_MMAP_THRESHOLD`` (unset or ``0``: leave glibc's dynamic threshold alone).
    """
    if threshold_bytes is None:
        threshold_bytes = int(os.environ.get("POSTTRAIN_MMAP_THRESHOLD", "0"))
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
