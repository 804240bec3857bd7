"""Child processes and their cost: start and stop by process group, wait until ready, and the
/proc accounting (CPU of a process tree, RSS, fds, how busy the rest of the machine was)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from common import BenchError

if TYPE_CHECKING:
    from peers import Env

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------------------------


class Processes:
    """Every child this run starts, each in its own process group; stop_all() ends them by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=kwargs.pop("stdout", out),
                stderr=out,
                stdin=kwargs.pop("stdin", subprocess.DEVNULL),
                start_new_session=True,  # its own group: socat's forked children go with it
                **kwargs,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        # Forked children (socat) may outlive a group leader that exited on its own.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
    """SIGTERM, SIGINT and SIGHUP raise KeyboardInterrupt, so that a run's ``finally`` stops every
    server it started (by default SIGTERM and SIGHUP end Python without running it)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)


def ignore_signals() -> None:
    """While cleaning up: a second signal must not cut the clean-up short."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_script(
    name: str, main: Callable[[], int], server: Callable[[list[str]], int] | None = None
) -> NoReturn:
    """A script's exit: ``server(argv)`` for ``SCRIPT server ARGS...`` (its server mode, a child of
    its own run); else main()'s status, or 130 with one line when a signal stopped it (main's
    ``finally`` has stopped its servers by then: interrupt_on_signals)."""
    if server is not None and sys.argv[1:2] == ["server"]:
        sys.exit(server(sys.argv[2:]))
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(
            f"{name}: stopped ({exc or 'interrupted'}); every server it started is stopped", file=sys.stderr
        )
        sys.exit(130)


def raise_nofile() -> None:
    """Soft fd limit up to the hard one, for us and (inherited) every child."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def program(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return str(args[0]) if isinstance(args, list) else str(args)


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = regex.search(text)
        if match:
            return match
        if proc.poll() is not None:
            raise BenchError(f"{program(proc)} exited with {proc.returncode} before it was ready; see {log}")
        time.sleep(0.05)
    raise BenchError(f"not ready after {timeout:.0f}s; see {log}")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """For servers that print nothing (socat): is the port in LISTEN state?"""
    hexport = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(hexport) and fields[3] == "0A":
                return
        if proc.poll() is not None:
            raise BenchError(f"{program(proc)} exited with {proc.returncode}")
        time.sleep(0.05)
    raise BenchError(f"port {port} not listening after {timeout:.0f}s")


# -- /proc accounting -----------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (forked workers, socat's per-connection children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current not in tree:
            tree.append(current)
            todo.extend(children.get(current, ()))
    return tree


def tree_cpu_s(pid: int, kernel_only: bool = False) -> float:
    """utime+stime of pid and its live descendants, plus the CPU of children they have reaped;
    ``kernel_only``: stime alone (the CPU spent in the kernel on their behalf)."""
    # utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat.
    fields = (12, 14) if kernel_only else (11, 12, 13, 14)
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError):
            f = _stat_fields(member)
            ticks += sum(int(f[i]) for i in fields)
    return ticks / CLK_TCK


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size (or its peak, field="VmHWM") in KiB, summed over the process tree.
    Forked workers share pages, so the sum over-counts them; the deltas the report uses do not."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
    return total


def fd_count(pid: int) -> int:
    """Open fds over the process tree."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{member}/fd"))
    return total


def settle(pid: int, limit: float = 3.0) -> float:
    """Wait (bounded) until pid's CPU stops moving (closing sessions, reaping children)."""
    deadline = time.monotonic() + limit
    last, still = tree_cpu_s(pid), 0
    while time.monotonic() < deadline and still < 2:
        time.sleep(0.1)
        now = tree_cpu_s(pid)
        still = still + 1 if now == last else 0
        last = now
    return last


class NoiseMeter:
    """How much of the machine processes other than ours used over an interval (shared machines)."""

    def __init__(self, env: Env, pids: Iterable[int] = ()) -> None:
        """``pids``: long-lived servers of ours, still running when other_pct() is asked (their
        CPU is ours, not other processes'); children reaped by then are counted already."""
        self.env = env
        self.pids = list(pids)
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        busy, _steal, total = machine_busy()
        own = sum(
            r.ru_utime + r.ru_stime
            for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        )
        for pid in {self.env.echo_pid, *self.pids} - {0}:  # long-lived children, not reaped yet
            with contextlib.suppress(OSError):
                own += tree_cpu_s(pid)
        return busy / CLK_TCK, total / CLK_TCK, own

    def other_pct(self) -> float:
        (b0, t0, o0), (b1, t1, o1) = self.start, self._sample()
        return max(0.0, 100 * ((b1 - b0) - (o1 - o0)) / max(t1 - t0, 1e-9))


def machine_busy() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies over all CPUs, to show how noisy the machine was."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    steal = f[7] if len(f) > 7 else 0
    total = sum(f[:8])
    return total - idle, steal, total


def max_relayed() -> int:
    """How many relayed sessions (2 fds each) one process can hold under the hard fd limit."""
    return (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200) // 2
