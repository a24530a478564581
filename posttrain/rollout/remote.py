"""The client of a rollout server: :class:`RemoteEngine`, a rollout engine whose ``generate`` runs on the server
and whose ``load_weights`` pushes the learner's tensors to it (the protocol is in :mod:`posttrain.rollout.server`).
"""

from __future__ import annotations

import datetime
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable

import torch
import torch.distributed as dist

from posttrain import errors
from posttrain.errors import ConfigError, ModelError
from posttrain.models import is_peft_model
from posttrain.rollout.base import Generation, SamplingParams, WeightSyncEngine
from posttrain.rollout.sync_group import BACKENDS, SyncGroup, build_group, local_address_towards
from posttrain.rollout.wire import (
    DTYPE_NAMES,
    DTYPES,
    RolloutServerError,
    error_from_json,
    generation_from_json,
    params_to_json,
)

SERVE_FIX = "start one with `posttrain rollout serve --model MODEL --port PORT` and pass its http://HOST:PORT"


class RemoteEngine(WeightSyncEngine):
    """A :class:`RolloutEngine` whose ``generate`` runs on a rollout server, and whose ``load_weights`` pushes the
    learner's tensors to it over a two-member process group (opened on first use; see
    :mod:`posttrain.rollout.server`).

    ``backend`` ``"auto"`` picks NCCL when the tensors to send are on CUDA and the server has CUDA, else gloo.
    ``sync_host`` is the learner's address as the server reaches it (default: derived from the server's URL).
    """

    def __init__(self, url: str, *, timeout_s: float = 600.0, connect_timeout_s: float = 10.0,
                 backend: str = "auto", sync_host: str | None = None, sync_timeout_s: float = 300.0):
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise ConfigError(f"rollout server URL {url!r} is not an http://HOST:PORT address", where="server_url",
                              fix="use e.g. http://127.0.0.1:8765")
        errors.check_choice(backend, ("auto", *BACKENDS), "weight-sync backend", where="backend")
        self.url = f"http://{parsed.netloc}"
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backend = backend
        self.sync_host = sync_host
        self.sync_timeout_s = sync_timeout_s
        self.group: SyncGroup | None = None
        self.last_sync_seconds: float | None = None

    # -- HTTP -----------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> dict:
        """One JSON request; a failure is a :class:`PosttrainError` naming the URL."""
        url = self.url + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                payload = json.loads(error.read()).get("error")
            except (json.JSONDecodeError, AttributeError, OSError):
                payload = None
            raise error_from_json(payload, url, error.code) from None
        except TimeoutError:
            raise RolloutServerError(f"the rollout server at {url} did not answer within {timeout:g} s",
                                     fix="check that it is running and not stuck (GET /health), or raise timeout_s"
                                     ) from None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise RolloutServerError(f"cannot reach the rollout server at {url}: {reason}", fix=SERVE_FIX) from None

    def health(self) -> dict:
        return self.request("GET", "/health", timeout_s=self.connect_timeout_s)

    def wait_ready(self, timeout_s: float = 120.0, process=None) -> dict:
        """Poll ``/health`` until the server answers (or ``process``, the server's ``Popen``, exits)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.health()
            except RolloutServerError:
                if process is not None and process.poll() is not None:
                    raise RolloutServerError(f"the rollout server for {self.url} exited with status "
                                             f"{process.returncode} before it answered", fix=SERVE_FIX) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # -- RolloutEngine ----------------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Generation]:
        answer = self.request("POST", "/generate", {"prompt_ids": [list(map(int, p)) for p in prompt_ids],
                                                    "params": params_to_json(params)})
        return [generation_from_json(item) for item in answer["generations"]]

    # -- weight sync ------------------------------------------------------------------------------------------

    def open_group(self, backend: str = "gloo") -> SyncGroup:
        """Host a ``TCPStore`` on a free port, ask the server to join, and join as rank 0."""
        self.close_group()
        host = self.sync_host or local_address_towards(urllib.parse.urlsplit(self.url).hostname)
        timeout = datetime.timedelta(seconds=self.sync_timeout_s)
        store = dist.TCPStore(host, 0, 2, is_master=True, timeout=timeout, wait_for_workers=False)
        prefix = f"posttrain-sync-{uuid.uuid4().hex}"
        self.request("POST", "/weights/init", {"host": host, "port": store.port, "backend": backend,
                                               "prefix": prefix, "timeout_s": self.sync_timeout_s})
        try:
            self.group = build_group(dist.PrefixStore(prefix, store), 0, backend, host, timeout)
        except RuntimeError as error:
            raise RolloutServerError(f"the rollout server at {self.url} did not join the weight-sync group on "
                                     f"{host}:{store.port}: {errors.first_line(error)}",
                                     fix="the server must reach this machine at that address (set sync_host to an "
                                         "address it can reach, and open the port)") from None
        return self.group

    def close_group(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None

    def close(self, stop_server: bool = False) -> None:
        """Close the weight-sync group on both sides; ``stop_server`` also shuts the server down."""
        try:
            self.request("POST", "/close", {"stop": stop_server}, timeout_s=self.connect_timeout_s)
        finally:
            self.close_group()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Broadcast ``(name, tensor)`` pairs to the server, which loads them with its engine's ``load_weights``.

        Returns when the server has applied them (or raises the server's reason why it did not).
        """
        tensors = [(name, tensor.detach()) for name, tensor in named_tensors]
        if not tensors:
            return
        started = time.perf_counter()
        if self.group is None:
            backend = self.backend
            if backend == "auto":
                on_cuda = any(tensor.is_cuda for _, tensor in tensors)
                backend = "nccl" if on_cuda and self.health().get("cuda") else "gloo"
            self.open_group(backend)
        group = self.group
        for name, tensor in tensors:
            if tensor.dtype not in DTYPE_NAMES:
                raise ModelError(f"parameter {name!r} has dtype {tensor.dtype}, which weight sync does not carry",
                                 where=name, fix=f"cast it to one of: {', '.join(DTYPES)}")
        metadata = [{"name": name, "shape": list(tensor.shape), "dtype": DTYPE_NAMES[tensor.dtype]}
                    for name, tensor in tensors]
        self.request("POST", "/weights/update", {"tensors": metadata})
        try:
            for _, tensor in tensors:
                group.broadcast(tensor.to(group.device).contiguous(), root=0)
            status = torch.zeros(1, dtype=torch.int64, device=group.device)
            group.broadcast(status, root=1)
        except RuntimeError as error:
            self.close_group()
            raise RolloutServerError(f"weight sync with the rollout server at {self.url} broke: "
                                     f"{errors.first_line(error)}",
                                     fix="check the server's log; the next load_weights opens a new group") from None
        if int(status.item()) != 0:
            outcome = self.request("GET", "/weights/status")
            raise error_from_json(outcome.get("error"), self.url, 200)
        self.last_sync_seconds = time.perf_counter() - started

    def sync_from(self, model) -> None:
        """Push every parameter of an HF model (a tied weight once) to the server."""
        if is_peft_model(model):
            raise ModelError("sync_from takes a plain model, not one with LoRA adapters",
                             fix="merge the adapters into a copy (merge_and_unload) and sync that copy")
        self.load_weights(model.named_parameters())
