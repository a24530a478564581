"""A time limit on one call of a reward function: :func:`call_with_timeout`.

On the main thread of a POSIX process the call runs in place. A watchdog thread (one per process, started
on first use) waits for the deadline and then sends :data:`INTERRUPT_SIGNAL` to the calling thread; the
handler, installed only for the duration of the call and then restored, raises an internal
``BaseException`` inside the function, which stops pure-Python loops and interrupts ``time.sleep`` and
other blocking system calls. The signal is a real-time signal of its own rather than ``SIGALRM``, so the
limit survives code that uses ``signal.alarm`` itself: math-verify arms and cancels ``SIGALRM`` around each
``parse``/``verify`` (which would cancel an ``ITIMER_REAL`` deadline), and its own timeouts keep working
inside a limited call. Python code that catches ``BaseException`` and carries on cannot be stopped, and a
long call into C code that does not check for signals is stopped only when it returns; either way the call
still counts as timed out.

Off the main thread (signal handlers can only be set there), or where the signal cannot be used, the call
runs in a daemon worker thread joined with the time limit. A call that runs past it is abandoned: an
exception is injected into the worker, which stops a pure-Python loop, but a sleeping or blocked worker
runs on in the background until it returns, and its result is discarded.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# A real-time signal near the top of the range, which glibc and common libraries leave alone; None where
# the platform lacks real-time signals or the calls used on them (the worker-thread fallback is used there).
INTERRUPT_SIGNAL: int | None = (
    signal.SIGRTMAX - 2
    if all(hasattr(signal, name) for name in ("SIGRTMAX", "pthread_kill", "pthread_sigmask", "sigtimedwait"))
    else None
)


class CallTimedOut(Exception):
    """A call ran longer than its time limit of ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"timed out after {seconds:g} s")


class _Interrupt(BaseException):
    """Raised inside the limited function at its deadline; a BaseException so that the function's own
    ``except Exception`` does not swallow it."""


def call_with_timeout(fn: Callable[[], T], seconds: float | None) -> T:
    """``fn()``, or :class:`CallTimedOut` when it runs longer than ``seconds`` (None or 0: no limit).

    Exceptions of ``fn`` propagate unchanged, except that one raised after the deadline passed (the
    function caught the interruption and raised something else) becomes :class:`CallTimedOut`; a
    ``KeyboardInterrupt`` always propagates. A call made while another limited call is running on the
    same thread runs under the outer deadline. See the module docstring for how the call is stopped.
    """
    if not seconds:
        return fn()
    if _can_interrupt_in_place():
        if _WATCHDOG.armed:
            return fn()
        return _interrupting(fn, seconds)
    return _in_worker(fn, seconds)


def _can_interrupt_in_place() -> bool:
    """On the main thread, with the interrupt signal available and its current handler restorable
    (``getsignal`` gives None for a handler installed outside Python)."""
    return (
        INTERRUPT_SIGNAL is not None
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(INTERRUPT_SIGNAL) is not None
    )


def _interrupting(fn: Callable[[], T], seconds: float) -> T:
    """Run ``fn`` on this (main) thread with the watchdog armed and the interrupt handler installed."""
    previous = signal.signal(INTERRUPT_SIGNAL, _WATCHDOG.interrupt)
    try:
        return _armed(fn, seconds)
    finally:
        _restore_handler(previous)


def _restore_handler(previous) -> None:
    """Put back the previous handler of the interrupt signal with no window in which an interruption sent
    just before disarming, and not yet delivered, could reach it (by default it would end the process):
    block the signal, drop such a pending one, restore, then restore the signal mask."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {INTERRUPT_SIGNAL})
    try:
        signal.sigtimedwait({INTERRUPT_SIGNAL}, 0)
        signal.signal(INTERRUPT_SIGNAL, previous)  # runs a delivered one first: it no longer raises
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _armed(fn: Callable[[], T], seconds: float) -> T:
    # The handler raises at most once and only while the watchdog is armed, so an interruption that lands
    # while arming or after fn returned (while disarming) is caught here too.
    try:
        try:
            _WATCHDOG.arm(seconds)
            value = fn()
        finally:
            _WATCHDOG.disarm()
    except BaseException as error:
        _WATCHDOG.disarm()  # again, in case the interruption cut the first one short; it cannot recur
        if isinstance(error, _Interrupt) or (_WATCHDOG.fired and not isinstance(error, KeyboardInterrupt)):
            raise CallTimedOut(seconds) from None
        raise
    if _WATCHDOG.fired:  # fn caught the interruption and returned anyway
        raise CallTimedOut(seconds)
    return value


class _Watchdog:
    """One daemon thread that sends :data:`INTERRUPT_SIGNAL` to the armed thread when its deadline passes.

    ``armed`` is true from :meth:`arm` to :meth:`disarm`; ``active`` too, but it ends at the interruption
    (the handler raises once); ``fired`` tells whether the deadline of the latest arming passed.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._deadline: float | None = None
        self._target = 0
        self._thread: threading.Thread | None = None
        self.armed = False
        self.active = False
        self.fired = False

    def arm(self, seconds: float) -> None:
        with self._condition:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="posttrain-reward-timeout", daemon=True)
                self._thread.start()
            self._deadline = time.monotonic() + seconds
            self._target = threading.get_ident()
            self.armed, self.active, self.fired = True, True, False
            self._condition.notify()

    def disarm(self) -> None:
        self.active = False  # first: the handler must not raise while this thread holds the lock
        with self._condition:
            self._deadline = None
            self.armed = False

    def interrupt(self, signum, frame) -> None:
        """The signal handler: raise the interruption once, if it is due; ignore a stray signal."""
        if self.active and self.fired:
            self.active = False
            raise _Interrupt

    def _watch(self) -> None:
        with self._condition:
            while True:
                left = None if self._deadline is None else self._deadline - time.monotonic()
                if left is None or left > 0:
                    self._condition.wait(left)
                    continue
                self._deadline = None
                self.fired = True
                signal.pthread_kill(self._target, INTERRUPT_SIGNAL)


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # a forked child has no watchdog thread and maybe a held lock
    os.register_at_fork(after_in_child=_WATCHDOG._reset)


def _in_worker(fn: Callable[[], T], seconds: float) -> T:
    """Run ``fn`` in a daemon thread joined for ``seconds``; abandon it past that (module docstring)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=run, name="posttrain-reward-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        _raise_in_thread(worker)
        raise CallTimedOut(seconds)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _raise_in_thread(thread: threading.Thread) -> None:
    """Ask CPython to raise the interruption in ``thread`` at its next bytecode (a no-op elsewhere)."""
    set_async_exc = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)
    if set_async_exc is not None and thread.ident is not None:
        set_async_exc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Interrupt))
