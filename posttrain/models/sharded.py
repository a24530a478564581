"""Model (and optimizer) state written as shards by several processes, read back under any sharding.

Under FSDP every process writes its own shards with ``torch.distributed.checkpoint`` (DCP): one ``.distcp``
file per process and a ``.metadata`` index. Reading re-shards: the same processes, another number of them, or
one process without a process group (``posttrain model export`` and a single-process resume).

DCP reads ``.metadata`` with plain ``pickle``, which would run code from a crafted file. :func:`check_metadata`
first reads it with an unpickler that builds only DCP's own metadata records, torch sizes, dtypes and layouts;
anything else is refused. The tensor files are read by DCP with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch

from posttrain.errors import CheckpointError

SHARDED_DIR = "sharded"  # the shards' folder in a checkpoint
METADATA_FILE = ".metadata"
_ALLOWED_MODULES = ("torch.distributed.checkpoint.metadata",)
_ALLOWED = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in _ALLOWED_MODULES or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def check_metadata(directory: Path, fix: str) -> None:
    """A :class:`CheckpointError` unless ``directory/.metadata`` holds only DCP's index records."""
    file = Path(directory) / METADATA_FILE
    if not file.is_file():
        raise CheckpointError(f"{directory} is not a sharded checkpoint (no {METADATA_FILE})", fix=fix)
    try:
        _MetadataUnpickler(io.BytesIO(file.read_bytes())).load()
    except Exception as error:  # UnpicklingError for foreign objects, EOFError and others for damaged files
        raise CheckpointError(f"refusing to load {file}: it is damaged or holds more than a checkpoint index "
                              f"({type(error).__name__}: {str(error)[:200]})", fix=fix) from None


def write_shards(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Every process: its shards of ``model`` and ``optimizer`` state (the model's alone when ``optimizer`` is None)
    into ``directory`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=directory)
        return
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)


def read_shards(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, fix: str) -> None:
    """Load the shards in ``directory`` into ``model`` (and ``optimizer``) whatever their sharding now."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_state_dict

    check_metadata(directory, fix)
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    try:
        with warnings.catch_warnings():  # DCP warns that one process without a group loads alone: it is meant to
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(state, checkpoint_id=directory, no_dist=not dist.is_initialized())
    except Exception as error:  # DCP wraps reader and planner failures in its own CheckpointException
        raise CheckpointError(f"cannot read the sharded checkpoint {directory}: {str(error)[:500]}", fix=fix) from None
    set_state_dict(model, optimizer if optimizer is not None else [], model_state_dict=state["model"],
                   optim_state_dict=state.get("optimizer", {}))
