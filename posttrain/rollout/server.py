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
server's log), and :class:`~posttrain.rollout.remote.RemoteEngine` raises it as the matching
:class:`~posttrain.errors.PosttrainError`.

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

import datetime
import json
import os
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
import torch.distributed as dist

from posttrain import errors
from posttrain.errors import ConfigError, DataError, PosttrainError
from posttrain.rollout.base import WeightSyncEngine
from posttrain.rollout.sync_group import BACKENDS, SyncGroup, build_group, local_address_towards
from posttrain.rollout.wire import (
    error_to_json,
    generation_to_json,
    params_from_json,
    prompts_from_json,
    tensor_specs_from_json,
)

DEFAULT_PORT = 8765
MAX_REQUEST_BYTES = 256 * 1024 * 1024


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
