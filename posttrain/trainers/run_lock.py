"""One process per run directory.

A run holds an exclusive ``flock`` on ``runs/<name>/.lock`` for its lifetime and writes its pid and host
into the file. The kernel drops the lock when the holder exits in any way — ``kill -9`` included — so a
lock can never outlive its process; the file itself stays (removing it would race with a new holder).
A second process on the same run directory gets a :class:`RunStateError` naming the holder.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from posttrain.errors import RunStateError

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir):`` — the run directory belongs to this process until the block ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            pid, host = (holder + ["?", "?"])[:2]
            raise RunStateError(
                f"run directory {self.run_dir} is in use by process {pid} on {host}",
                fix=f"wait for that run to end (or stop it: kill {pid}), or give this one another name "
                    "(name=...) or output_dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
