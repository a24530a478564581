"""Loading saved training state without executing anything from the file.

Optimizer, scheduler, RNG and reward-model states are written with ``torch.save`` as tensors and plain
containers, and read back with ``torch.load(weights_only=True)``: a file holding any other object (a
pickled class, code) is refused, as is a damaged file, with a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.errors import CheckpointError


def load_state_file(file: str | Path, fix: str):
    """The tensors and plain values saved in ``file``; a :class:`CheckpointError` (with ``fix``) for anything else."""
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except Exception as error:  # UnpicklingError for foreign objects, RuntimeError/EOFError for damaged files
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"refusing to load {file}: it is damaged or holds more than tensors and plain values "
                              f"({type(error).__name__}: {reason})", fix=fix) from None
