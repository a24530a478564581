"""Processes of a run: rank, world size, device, and the reductions of logged values the loop needs.

Gradients are not reduced here: the engines of :mod:`posttrain.trainers.parallel` (DDP, FSDP2) average them.
Launch several processes with ``accelerate launch`` (or ``torchrun``); one process needs nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from posttrain.data import micro_batches
from posttrain.trainers.parallel import FSDP, resolve_strategy


class Processes:
    """This process's place in the run; ``strategy`` is the engine of :mod:`posttrain.trainers.parallel`
    (``single`` for one process)."""

    def __init__(self, device: str = "auto", strategy: str = "auto"):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            from accelerate import PartialState

            PartialState(cpu=not torch.cuda.is_available())
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.is_main = self.rank == 0
        self.strategy = resolve_strategy(strategy, self.world_size)
        # every forward is a collective under FSDP: processes must run the same passes
        self.lockstep = self.strategy == FSDP
        self.device = self._pick_device(device)

    def _pick_device(self, device: str) -> torch.device:
        if device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return torch.device("cpu")
        return torch.device(device)

    def max_count(self, count: int) -> int:
        """The largest ``count`` over the processes."""
        if self.world_size == 1:
            return count
        tensor = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor)

    def micro_batches(self, items, lengths, batch_size: int, token_budget: int = 0) -> list[list]:
        """:func:`posttrain.data.micro_batches` of this process's items; in lockstep, as many passes on every
        process (the largest count: passes are halved where there are fewer)."""
        parts = micro_batches(items, lengths, batch_size, token_budget)
        if not self.lockstep:
            return parts
        return micro_batches(items, lengths, batch_size, token_budget, min_parts=self.max_count(len(parts)))

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

    def gather_rows(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The processes' tensors, whose first dimensions may differ, concatenated along dim 0 in rank order, and the
        row where this process's part starts."""
        if self.world_size == 1:
            return values, 0
        counts = self.gather(torch.tensor([values.shape[0]], dtype=torch.int64)).tolist()
        padded = torch.zeros((max(counts), *values.shape[1:]), dtype=values.dtype, device=values.device)
        padded[: values.shape[0]] = values
        parts = self.gather(padded).split(max(counts))
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]), sum(counts[: self.rank])

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
