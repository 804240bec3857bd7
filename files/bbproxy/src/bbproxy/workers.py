"""``--workers N``: N processes, each with its own SO_REUSEPORT listeners; the kernel spreads
new connections over them. The parent only supervises:

* it forks the workers before any event loop exists, and says READY=1 to systemd once every
  worker has bound its listeners (each writes one byte to a pipe);
* SIGHUP and SIGTERM are passed on: each worker reloads, or drains, on its own;
* a worker that dies unexpectedly is replaced, at most ``MAX_RESTARTS`` times a minute, after
  which the parent stops the others and exits 1 rather than flap forever.

Limits (max_connections, per-IP) apply per worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Final

from . import notify

log = logging.getLogger("bbproxy")

MAX_RESTARTS: Final = 5
READY_TIMEOUT: Final = 30.0
_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}

WorkerMain = Callable[[int, Callable[[], None]], int]
"""A worker body: (index, report_ready) -> exit status. Runs in the forked child."""


class Supervisor:
    def __init__(self, count: int, worker_main: WorkerMain) -> None:
        self.count = count
        self.worker_main = worker_main
        self.children: dict[int, int] = {}  # pid -> worker index
        self.restarts: list[float] = []
        self.stopping = False
        self._ready_r, self._ready_w = os.pipe()

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for index in range(self.count):
                self._spawn(index)
            if not self._wait_ready():
                self._stop_all()
                return 1
            log.info("%d workers ready", self.count)
            notify.send("READY=1")
            return self._supervise()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.close(self._ready_r)
                os.environ.pop("NOTIFY_SOCKET", None)  # only the parent talks to systemd
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                status = self.worker_main(index, self._report_ready)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()  # os._exit skips atexit: write the lines still waiting
                os._exit(status)
        self.children[pid] = index

    def _report_ready(self) -> None:
        os.write(self._ready_w, b"r")

    def _wait_ready(self) -> bool:
        ready = 0
        deadline = time.monotonic() + READY_TIMEOUT
        while ready < self.count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("workers not ready after %.0f s", READY_TIMEOUT)
                return False
            readable, _, _ = select.select([self._ready_r], [], [], min(remaining, 0.2))
            if readable:
                ready += len(os.read(self._ready_r, self.count))
            for pid, status in self._reap():
                log.error(
                    "worker %d exited during start-up (%s)", self.children.pop(pid, -1), _status(status)
                )
                return False
        return True

    def _supervise(self) -> int:
        while self.children:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            if info is None:
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self.stopping = True
                notify.send("STOPPING=1")
                self._signal_all(signal.SIGTERM)
            elif info.si_signo == signal.SIGHUP:
                notify.send("RELOADING=1")
                self._signal_all(signal.SIGHUP)
                notify.send("READY=1")
            for pid, status in self._reap():
                index = self.children.pop(pid)
                if self.stopping:
                    continue
                log.error("worker %d exited unexpectedly (%s); starting a new one", index, _status(status))
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < 60] + [now]
                if len(self.restarts) > MAX_RESTARTS:
                    log.error("workers keep dying (%d restarts in a minute); stopping", len(self.restarts))
                    self._stop_all()
                    return 1
                self._spawn(index)
        return 0

    def _reap(self) -> list[tuple[int, int]]:
        done = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            done.append((pid, status))
        return done

    def _signal_all(self, signum: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _stop_all(self) -> None:
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.children.pop(pid, None)


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
