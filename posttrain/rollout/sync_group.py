"""The two-process weight-sync group between a learner (rank 0) and a rollout server (rank 1).

A gloo (CPU) or NCCL (CUDA) backend object built straight on a ``TCPStore``, without ``init_process_group``;
the protocol that uses it is described in :mod:`posttrain.rollout.server`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import socket
from typing import Any

import torch
import torch.distributed as dist

from posttrain import errors
from posttrain.errors import ConfigError

BACKENDS = ("gloo", "nccl")


@dataclasses.dataclass
class SyncGroup:
    """One side of the learner-server weight-sync group: a two-member gloo or NCCL backend on a ``TCPStore``.

    ``store`` is kept so the learner (who hosts it) keeps it alive as long as the group.
    """

    backend: str
    rank: int
    group: Any
    store: Any
    device: torch.device

    def broadcast(self, tensor: torch.Tensor, root: int) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = root
        options.rootTensor = 0
        self.group.broadcast([tensor], options).wait()

    def close(self) -> None:
        shutdown = getattr(self.group, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError:  # already torn down by the other side
                pass
        self.group = None


def build_group(store, rank: int, backend: str, host: str, timeout: datetime.timedelta) -> SyncGroup:
    """A two-member process group on ``store`` without ``init_process_group`` (no default group is involved).

    ``host`` is this process's address as the other member reaches it (gloo binds its device to it). Blocks until
    both members have joined or ``timeout`` passes.
    """
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        options._timeout = timeout
        group = dist.ProcessGroupGloo(store, rank, 2, options)
        device = torch.device("cpu")
    elif backend == "nccl":
        nccl = getattr(dist, "ProcessGroupNCCL", None)
        if nccl is None or not torch.cuda.is_available():
            raise ConfigError("weight sync over NCCL needs CUDA and a PyTorch built with NCCL", where="backend",
                              fix='use backend "gloo"')
        device = torch.device("cuda", torch.cuda.current_device())
        options = nccl.Options()
        options._timeout = timeout
        group = nccl(store, rank, 2, options)
    else:
        errors.check_choice(backend, BACKENDS, "weight-sync backend", where="backend")
    return SyncGroup(backend=backend, rank=rank, group=group, store=store, device=device)


def local_address_towards(host: str) -> str:
    """This machine's address on the interface that reaches ``host`` (``127.0.0.1`` for a loopback host)."""
    try:
        if ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            return "127.0.0.1"
    except (OSError, ValueError):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))  # UDP: no packet is sent, the kernel only picks the route
        return probe.getsockname()[0]

