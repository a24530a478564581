"""Processes of a run: rank, world size, device, and the two reductions the loop needs.

The loop normalizes every loss by a count taken over the *global* batch (all micro-batches of
all processes), so the gradient of the global loss is the **sum** of the processes' gradients.
:meth:`Processes.average_gradients` averages them (one flat all-reduce, then ÷ world size) exactly as
DDP and FSDP do, and the loop multiplies each loss by the world size once before ``backward`` — the
only place the world size enters a gradient, so swapping in an averaging engine changes nothing.
Launch several processes with ``accelerate launch`` (or ``torchrun``); one process needs nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


class Processes:
    def __init__(self, device: str = "auto"):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            from accelerate import PartialState

            PartialState(cpu=not torch.cuda.is_available())
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.is_main = self.rank == 0
        self.device = self._pick_device(device)

    def _pick_device(self, device: str) -> torch.device:
        if device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return torch.device("cpu")
        return torch.device(device)

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Every parameter's gradient becomes the mean over processes (what DDP/FSDP do)."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        for parameter, reduced in zip(parameters, _unflatten_dense_tensors(flat, grads), strict=True):
            parameter.grad = reduced

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return dict(zip(keys, tensor.tolist(), strict=True))

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """The processes' equally shaped tensors concatenated along dim 0, in rank order."""
        if self.world_size == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world_size)]
        dist.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
