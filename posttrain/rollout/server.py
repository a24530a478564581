"""Server mode: a rollout engine in its own process, sampled over HTTP, its weights pushed over ``torch.distributed``.

The server (``posttrain rollout serve``) hosts one engine (:class:`~posttrain.rollout.hf.HFEngine`, or vLLM's) and
answers JSON on ``http://HOST:PORT``:

- ``GET /health``: the model, the engine kind, the device, the weight-sync group (if open) and the weights version;
- ``POST /generate`` ``{"prompt_ids": [[int]], "params": {SamplingParams fields}}`` -> ``{"generations": [...]}``;
- ``POST /weights/init`` ``{"host", "port", "backend", "timeout_s"}``: join the learner's sync group as rank 1;
- ``POST /weights/update`` ``{"tensors": [{"name", "shape", "dtype"}]}``: the tensors the learner broadcasts next;
- ``GET /weights/status``: the last update's outcome (its error message, if it failed);
- ``POST /close`` ``{"stop": bool}``: close the sync group; with ``stop`` also shut the server down.

An error comes back as ``{"error": {"type", "what", "where", "fix"}}`` with status 400 (a request the caller can
fix), 409 (the server is in the wrong state for it) or 500 (a fault in the engine; the traceback stays in the
server's log), and :class:`RemoteEngine` raises it as the matching :class:`~posttrain.errors.PosttrainError`.

Weight sync. The learner (rank 0) and the server (rank 1) form a process group of two, built straight from a
``TCPStore`` that the learner hosts: a gloo (CPU) or NCCL (CUDA) backend object constructed on that store, the
way vLLM's stateless process groups are. ``init_process_group`` is never called and no default group is read or
written, so a learner that is itself one rank of a torchrun/accelerate job keeps its own group untouched. One
update is: the learner posts the tensors' metadata; the server starts a thread that receives that many broadcasts
(root 0) into fresh buffers, hands them to ``engine.load_weights`` and then broadcasts one status number (root 1);
the learner broadcasts its tensors and waits for that number, which both orders the update before the learner's
next request and says whether it took. Nothing read from the network is unpickled: requests are JSON, tensors
arrive as raw buffers whose dtype and shape the JSON metadata gives (from a fixed list of dtypes).
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
import torch.distributed as dist

from posttrain import errors
from posttrain.errors import ConfigError, DataError, ModelError, PosttrainError
from posttrain.models import is_peft_model
from posttrain.rollout.base import Generation, SamplingParams, WeightSyncEngine

DEFAULT_PORT = 8765
MAX_REQUEST_BYTES = 256 * 1024 * 1024
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
BACKENDS = ("gloo", "nccl")
SERVE_FIX = "start one with `posttrain rollout serve --model MODEL --port PORT` and pass its http://HOST:PORT"


class RolloutServerError(PosttrainError):
    """The rollout server cannot be reached, answered with a fault, or a weight sync failed."""


# ---------------------------------------------------------------------------------------------------- the group


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


# ------------------------------------------------------------------------------------------------------ JSON


def generation_to_json(generation: Generation) -> dict:
    return dataclasses.asdict(generation)


def generation_from_json(data: dict) -> Generation:
    return Generation(**{field.name: data[field.name] for field in dataclasses.fields(Generation)})


def params_to_json(params: SamplingParams) -> dict:
    return dataclasses.asdict(params)


def params_from_json(data: Any) -> SamplingParams:
    if not isinstance(data, dict):
        raise ConfigError("params must be a JSON object of sampling settings", where="params",
                          fix="send e.g. {\"temperature\": 0, \"max_new_tokens\": 32}")
    known = {field.name for field in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown sampling setting {unknown[0]!r}", where=f"params.{unknown[0]}",
                          fix=f"use only: {', '.join(sorted(known))}")
    return SamplingParams(**data)


def prompts_from_json(data: Any) -> list[list[int]]:
    def is_token(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(data, list) or not all(isinstance(p, list) and all(map(is_token, p)) for p in data):
        raise DataError("prompt_ids must be a list of lists of token ids (integers >= 0)", where="prompt_ids",
                        fix="send tokenized prompts, e.g. {\"prompt_ids\": [[1, 2, 3]]}")
    return data


def tensor_specs_from_json(data: Any) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    if not isinstance(data, list) or not data:
        raise DataError("tensors must be a non-empty list of {name, shape, dtype}", where="tensors",
                        fix="send the metadata of the tensors to broadcast")
    specs = []
    for index, item in enumerate(data):
        where = f"tensors[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise DataError("each tensor needs a string name", where=where, fix="send {name, shape, dtype}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise DataError(f"tensor {item['name']!r} has an invalid shape {shape!r}", where=f"{where}.shape",
                            fix="send the shape as a list of integers >= 0")
        dtype = DTYPES.get(item.get("dtype"))
        if dtype is None:
            raise DataError(f"tensor {item['name']!r} has an unsupported dtype {item.get('dtype')!r}",
                            where=f"{where}.dtype", fix=f"use one of: {', '.join(DTYPES)}")
        specs.append((item["name"], tuple(shape), dtype))
    return specs


def error_to_json(error: BaseException) -> dict:
    if isinstance(error, PosttrainError):
        return {"type": type(error).__name__, "what": error.what, "where": error.where, "fix": error.fix}
    return {"type": type(error).__name__, "what": f"{type(error).__name__}: {errors.first_line(error)}",
            "where": None, "fix": "see the rollout server's log for the traceback"}


def error_from_json(data: Any, url: str, status: int) -> PosttrainError:
    """The :class:`PosttrainError` a server's error answer stands for (its own class when posttrain has it)."""
    if not isinstance(data, dict) or "what" not in data:
        return RolloutServerError(f"the rollout server at {url} answered HTTP {status}: {str(data)[:200]}",
                                  fix="check that the URL points at `posttrain rollout serve`")
    kind = getattr(errors, str(data.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, PosttrainError)):
        kind = RolloutServerError
    what = str(data["what"])
    return kind(f"rollout server {url}: {what}", where=data.get("where"), fix=data.get("fix"))


# ---------------------------------------------------------------------------------------------------- server


class _Conflict(PosttrainError):
    """The server is in the wrong state for a request (HTTP 409)."""


class RolloutServer:
    """Hosts ``engine`` behind the HTTP endpoints of the module docstring; ``serve_forever`` blocks."""

    def __init__(self, engine: WeightSyncEngine, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 info: dict | None = None, log: Callable[[str], None] | None = None):
        self.engine = engine
        self.info = dict(info or {})
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.engine_lock = threading.Lock()  # generate and load_weights never overlap
        self.state_lock = threading.Lock()  # guards the fields below
        self.group: SyncGroup | None = None
        self.group_error: str | None = None
        self.group_thread: threading.Thread | None = None
        self.update_thread: threading.Thread | None = None
        self.last_update: dict = {"ok": None}
        self.weights_version = 0
        try:
            self.http = ThreadingHTTPServer((host, port), _handler_for(self))
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}", where="port",
                              fix="pick a free port with --port (or stop the process that holds it)") from None
        self.http.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        try:
            self.http.serve_forever(poll_interval=0.2)
        finally:
            self.http.server_close()
            self._close_group()

    # -- endpoints ------------------------------------------------------------------------------------------

    def health(self) -> dict:
        with self.state_lock:
            group = self.group
            world = {"rank": 1, "world_size": 2, "backend": group.backend if group else None,
                     "sync_group": "open" if group else ("failed" if self.group_error else "none"),
                     "error": self.group_error}
            updating = self.update_thread is not None and self.update_thread.is_alive()
        device = getattr(self.engine, "device", None)
        return {"status": "ok", **self.info, "device": str(device) if device is not None else None,
                "cuda": torch.cuda.is_available(), "world": world, "weights_version": self.weights_version,
                "updating": updating, "pid": os.getpid()}

    def generate(self, body: dict) -> dict:
        prompts = prompts_from_json(body.get("prompt_ids"))
        params = params_from_json(body.get("params", {}))
        with self.engine_lock:
            generations = self.engine.generate(prompts, params)
        return {"generations": [generation_to_json(g) for g in generations], "weights_version": self.weights_version}

    def init_weights(self, body: dict) -> dict:
        host, port = body.get("host"), body.get("port")
        backend = body.get("backend", "gloo")
        timeout_s = body.get("timeout_s", 300)
        if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
            raise ConfigError("weights/init needs the learner's store address as host (string) and port (integer)",
                              where="host", fix="send {\"host\": \"127.0.0.1\", \"port\": 29500}")
        errors.check_choice(backend, BACKENDS, "weight-sync backend", where="backend")
        if not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ConfigError(f"timeout_s = {timeout_s!r} is invalid", where="timeout_s", fix="use a number > 0")
        prefix = str(body.get("prefix") or "posttrain-sync")
        self._close_group()
        with self.state_lock:
            if self.update_thread is not None and self.update_thread.is_alive():
                raise _Conflict("a weight update is in progress", fix="wait for it to finish, then open a new group")
            self.group_error = None
            thread = threading.Thread(target=self._join_group, args=(host, port, backend, prefix, timeout_s),
                                      name="weight-sync-join", daemon=True)
            self.group_thread = thread
        thread.start()
        return {"ok": True, "rank": 1, "world_size": 2, "backend": backend}

    def _join_group(self, host: str, port: int, backend: str, prefix: str, timeout_s: float) -> None:
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            store = dist.TCPStore(host, port, 2, is_master=False, timeout=timeout)
            group = build_group(dist.PrefixStore(prefix, store), 1, backend, local_address_towards(host), timeout)
        except Exception as error:  # reported through /health and the next /weights/update
            self.log(f"weight-sync group with {host}:{port} failed: {errors.first_line(error)}")
            with self.state_lock:
                self.group_error = errors.first_line(error)
            return
        with self.state_lock:
            self.group = group
        self.log(f"weight-sync group open with {host}:{port} ({backend})")

    def update_weights(self, body: dict) -> dict:
        specs = tensor_specs_from_json(body.get("tensors"))
        group_thread, previous = self.group_thread, self.update_thread
        if group_thread is not None:
            group_thread.join(timeout=60)
        if previous is not None:  # the learner has the last update's status, the thread may not have returned yet
            previous.join(timeout=5)
        with self.state_lock:
            if self.group is None:
                reason = f" (joining it failed: {self.group_error})" if self.group_error else ""
                raise _Conflict(f"no weight-sync group is open{reason}",
                                fix="POST /weights/init first (RemoteEngine does this on its first load_weights)")
            if self.update_thread is not None and self.update_thread.is_alive():
                raise _Conflict("a weight update is already in progress", fix="wait for it to finish")
            self.last_update = {"ok": None, "tensors": len(specs)}
            thread = threading.Thread(target=self._receive, args=(self.group, specs), name="weight-sync-receive",
                                      daemon=True)
            self.update_thread = thread
        thread.start()
        return {"ok": True, "tensors": len(specs)}

    def _receive(self, group: SyncGroup, specs: list[tuple[str, tuple[int, ...], torch.dtype]]) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        received = []
        try:
            for name, shape, dtype in specs:
                buffer = torch.empty(shape, dtype=dtype, device=group.device)
                group.broadcast(buffer, root=0)
                received.append((name, buffer))
        except Exception as failure:  # the group broke: nothing more can be said over it
            self.log(f"weight update: receiving failed: {errors.first_line(failure)}")
            with self.state_lock:
                self.last_update = {"ok": False, "error": error_to_json(failure)}
                self.group_error = errors.first_line(failure)
            self._close_group()
            return
        try:
            with self.engine_lock:
                self.engine.load_weights(received)
        except Exception as failure:
            error = failure
            if not isinstance(failure, PosttrainError):
                self.log(traceback.format_exc())
        seconds = time.perf_counter() - started
        with self.state_lock:
            if error is None:
                self.weights_version += 1
                self.last_update = {"ok": True, "tensors": len(specs), "seconds": seconds,
                                    "weights_version": self.weights_version}
            else:
                self.last_update = {"ok": False, "error": error_to_json(error)}
        self.log(f"weight update: {len(specs)} tensors in {seconds:.3f}s"
                 + ("" if error is None else f", not applied: {errors.first_line(error)}"))
        try:
            group.broadcast(torch.tensor([0 if error is None else 1], dtype=torch.int64, device=group.device), root=1)
        except Exception as failure:
            self.log(f"weight update: sending the status failed: {errors.first_line(failure)}")

    def weights_status(self) -> dict:
        with self.state_lock:
            return dict(self.last_update, weights_version=self.weights_version)

    def close(self, body: dict) -> dict:
        self._close_group()
        if body.get("stop"):
            threading.Thread(target=self.http.shutdown, daemon=True).start()
        return {"ok": True, "stopping": bool(body.get("stop"))}

    def _close_group(self) -> None:
        with self.state_lock:
            group, self.group = self.group, None
        if group is not None:
            group.close()


def _handler_for(server: RolloutServer) -> type[BaseHTTPRequestHandler]:
    routes = {
        ("GET", "/health"): lambda body: server.health(),
        ("GET", "/weights/status"): lambda body: server.weights_status(),
        ("POST", "/generate"): server.generate,
        ("POST", "/weights/init"): server.init_weights,
        ("POST", "/weights/update"): server.update_weights,
        ("POST", "/close"): server.close,
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
            route = routes.get((method, path))
            try:
                body = self._read_body()
                if route is None:
                    paths = sorted(f"{m} {p}" for m, p in routes)
                    self._answer(404, {"error": {"type": "RolloutServerError", "what": f"no endpoint {method} {path}",
                                                 "where": None, "fix": f"use one of: {', '.join(paths)}"}})
                    return
                self._answer(200, route(body))
            except _Conflict as error:
                self._answer(409, {"error": error_to_json(error)})
            except PosttrainError as error:
                self._answer(400, {"error": error_to_json(error)})
            except Exception as error:
                server.log(traceback.format_exc())
                self._answer(500, {"error": error_to_json(error)})

        def _read_body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                raise DataError(f"the request body has {length} bytes, more than {MAX_REQUEST_BYTES}",
                                fix="send fewer prompts per request")
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return {}
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(f"the request body is not valid JSON: {error}", fix="send a JSON object") from None
            if not isinstance(body, dict):
                raise DataError("the request body must be a JSON object", fix="send a JSON object")
            return body

        def _answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# ---------------------------------------------------------------------------------------------------- client


class RemoteEngine(WeightSyncEngine):
    """A :class:`RolloutEngine` whose ``generate`` runs on a rollout server, and whose ``load_weights`` pushes the
    learner's tensors to it over a two-member process group (opened on first use; see the module docstring).

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


# ----------------------------------------------------------------------------------------------------- serve


def serve(engine: WeightSyncEngine, host: str = "127.0.0.1", port: int = DEFAULT_PORT, info: dict | None = None,
          ready: Callable[[str], None] | None = None) -> None:
    """Serve ``engine`` until ``POST /close {"stop": true}`` or Ctrl-C; ``ready(url)`` is called once listening."""
    server = RolloutServer(engine, host, port, info)
    if ready is not None:
        ready(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
