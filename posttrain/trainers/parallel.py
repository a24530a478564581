"""How the model of a run is spread over its processes: one process, DDP replicas, or FSDP2 shards.

Several processes are started by ``accelerate launch --num_processes N`` (or ``torchrun``); ``dist.strategy``
picks the engine — PyTorch's own, the ones accelerate drives:

* ``ddp`` — ``DistributedDataParallel``: each process holds a full replica; gradients are averaged in buckets
  *during* backward (overlapped with it), on the last micro-batch of an update only (``no_sync`` before).
* ``fsdp`` — FSDP2 (``fully_shard``): every decoder layer is one shard group and the rest (embeddings, final
  norm, output layer) the root group. Each process keeps ``1/N`` of every parameter, gradient and AdamW moment;
  a layer's parameters are gathered for its forward and backward and freed after, and gradients are
  reduce-scattered (averaged) as backward leaves the layer.

Both engines average gradients over processes. The loop divides every loss by a total over the *global*
batch and multiplies it by the world size once (:mod:`posttrain.trainers.loop`), so the average is the
gradient of the global loss — the same update as one process running the whole batch.

The engines hook a module's ``forward``; posttrain's passes call the decoder and the output layer directly
(:func:`posttrain.ops.completion_logprobs` never builds full logits). :class:`ModelRunner` makes any such
pass *the* forward of the wrapped module — ``run(fn, *args)`` calls ``fn(model, *args)`` inside the engine's
forward — so DDP prepares its reducer and FSDP gathers the root group for it.

Under FSDP every forward is a collective: all processes must run the same number of passes through each
layer. The loop therefore agrees on the number of micro-batches of a step (:meth:`Processes.agree_count`),
generation runs with ``synced_gpus`` (finished processes keep stepping until all are done), and evaluation
runs on every process. Frozen copies (an RL reference, a distillation teacher) are sharded the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from posttrain.config import DistConfig
from posttrain.errors import ConfigError

SINGLE, DDP, FSDP = "single", "ddp", "fsdp"


def _flag(environ: dict, name: str) -> bool:
    return str(environ.get(name, "")).lower() in ("1", "true", "yes")


def resolve_strategy(requested: str, world_size: int, environ: dict | None = None) -> str:
    """``single`` for one process; else ``requested``, where ``auto`` follows accelerate's launch (``--use_fsdp``
    sets ``ACCELERATE_USE_FSDP``) and defaults to ``ddp``."""
    environ = os.environ if environ is None else environ
    if world_size == 1:
        return SINGLE
    if _flag(environ, "ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("accelerate was launched with DeepSpeed, which posttrain does not drive",
                          where="accelerate launch --use_deepspeed / the accelerate config file",
                          fix="launch without DeepSpeed and set dist.strategy=fsdp (FSDP2 shards parameters, "
                              "gradients and optimizer state as ZeRO-3 does)")
    if requested == "auto":
        return FSDP if _flag(environ, "ACCELERATE_USE_FSDP") else DDP
    return requested


class ModelRunner(torch.nn.Module):
    """A module whose forward is ``fn(model, *args)``: any pass over ``model`` becomes the engine's forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def shard_groups(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of an HF model (its ``_no_split_modules`` classes), each one FSDP shard group."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [module for module in inner.modules() if type(module).__name__ in names]
    if not layers:
        raise ConfigError(f"dist.strategy=fsdp cannot find the decoder layers of {type(inner).__name__} (it names "
                          "no _no_split_modules)", where="dist.strategy",
                          fix="use dist.strategy=ddp for this model")
    return layers


def _fully_shard(runner: ModelRunner, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in shard_groups(runner.model):
        fully_shard(layer, reshard_after_forward=reshard_after_forward)
    fully_shard(runner, reshard_after_forward=reshard_after_forward)
    with torch.no_grad():
        runner(lambda model: None)  # FSDP initializes from the first forward of the root: make it this one


class ParallelModel:
    """The run's model under its engine: :meth:`run` a pass, :meth:`synced` an update's backward, :meth:`gathered`
    for passes that call the model directly (generation, frozen log-probs)."""

    def __init__(self, model: torch.nn.Module, strategy: str, device: torch.device, dist: DistConfig):
        """``strategy``: :func:`resolve_strategy`'s answer for this run."""
        self.model = model
        self.strategy = strategy
        self.runner = ModelRunner(model)
        self._engine: torch.nn.Module = self.runner
        if self.strategy == DDP:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            # gradients are views into DDP's communication buckets: no second copy of every gradient
            self._engine = DistributedDataParallel(self.runner, device_ids=ids, gradient_as_bucket_view=True)
        elif self.strategy == FSDP:
            if hasattr(model, "peft_config"):
                raise ConfigError("dist.strategy=fsdp does not shard LoRA models yet", where="model.lora",
                                  fix="use dist.strategy=ddp with LoRA (the adapters are small; the base model is "
                                      "replicated), or full fine-tuning with fsdp")
            _fully_shard(self.runner, dist.reshard_after_forward)
        self.reshard_after_forward = dist.reshard_after_forward
        self._frozen: list[ModelRunner] = []

    @property
    def sharded(self) -> bool:
        return self.strategy == FSDP

    @property
    def lockstep(self) -> bool:
        """Every forward is a collective (FSDP): processes must run the same passes."""
        return self.strategy == FSDP

    def run(self, fn: Callable[..., Any], *args, **kwargs):
        """``fn(model, *args, **kwargs)`` as the engine's forward."""
        return self._engine(fn, *args, **kwargs)

    def synced(self, last: bool):
        """Context for one micro-batch's forward and backward: DDP averages gradients on the ``last`` one only."""
        if self.strategy == DDP and not last:
            return self._engine.no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """FSDP: the root group (embeddings, norm, output layer) stays gathered, so passes that call the model
        directly work; each layer still gathers itself. Nothing to do otherwise."""
        if not self.sharded:
            yield
            return
        self.runner.unshard()
        try:
            yield
        finally:
            self.runner.reshard()

    def shard_frozen(self, model: torch.nn.Module) -> None:
        """Shard a frozen copy (reference, teacher) like the policy; its root group stays gathered for good."""
        if not self.sharded:
            return
        runner = ModelRunner(model)
        _fully_shard(runner, self.reshard_after_forward)
        runner.unshard()
        self._frozen.append(runner)

    @staticmethod
    def full_value(tensor: torch.Tensor) -> float:
        """A scalar that may be a DTensor (a norm over shards) as a Python float."""
        return float(tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor)
