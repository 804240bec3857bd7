"""The benchmark's client: a lean, single-threaded epoll load generator (stdlib and the test kit).

run.py starts one or more of these as separate processes, so the client's CPU is never
charged to the server under test. Each client session is a small generator that yields
``(fd, events)`` whenever a non-blocking socket would block; one epoll loop drives them all.

Usage (run.py does this): ``python loadgen.py '<json config>'``. Talks JSON lines:
stdout gets ``{"event": ...}`` records, stdin takes the commands ``go`` and ``close``.

Modes
  handshake  ``count`` sessions, at most ``concurrency`` in flight: connect, [STARTTLS prelude],
             [TLS handshake], one ``stanza_size`` round trip, close. Reports rate and failures.
  hold       the same sessions, but kept open until ``close``; reports how many were still alive.
  stream     ``concurrency`` sessions, then each keeps a window of bytes in flight to the echo
             backend for ``duration`` s; reports bytes echoed between a warm-up mark and the end.
  latency    one session, then ``samples`` sequential round trips of ``stanza_size`` bytes
             (blocking socket, perf_counter_ns); reports percentiles in microseconds.
Protocols: ``starttls`` (XMPP RFC 6120 prelude then TLS), ``direct-tls``, ``plain``.
``resume`` (handshake mode): ``"id"`` offers the saved TLS session by session ID only (client
``OP_NO_TICKET``), ``"ticket"`` offers it with the session ticket extension as well (the server
resumes by ticket if it issues them, else by session ID); the session comes from an unmeasured
priming session before ``ready`` and is replaced by any session that was not resumed. The result
counts the sessions that did resume (``resumed``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import select
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any

import _path  # noqa: F401  (files/bbproxy on sys.path)
from tests import kit
from tests.kit import STARTTLS, STREAM_ERROR_RE, stream_header

R = select.EPOLLIN
W = select.EPOLLOUT
Wait = Generator[tuple[int, int], None, Any]

# What BlackBerry 10 class clients offer at TLS 1.0/1.1; @SECLEVEL=0 for MD5+SHA-1 handshake signatures.
BB10_SUITES = (
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:@SECLEVEL=0"
)
FEATURES_END = re.compile(rb"</stream:features>")
PROCEED = re.compile(rb"<proceed\b[^>]*/>")


# What the first TLS session of this process negotiated, for the report.
NEGOTIATED: dict[str, str] = {}
# Resumption (cfg "resume"): the TLS session offered by every new session, and how many resumed.
RESUME: dict[str, Any] = {"session": None, "resumed": 0}


class SessionError(Exception):
    """A session failed in a way worth its own line in the failure histogram."""


def make_stanza(size: int) -> bytes:
    """A <message/> of exactly `size` bytes (b"" for 0: the session ends after the handshake)."""
    if size <= 0:
        return b""
    head, tail = b"<message to='bench@example.test' id='b'><body>", b"</body></message>"
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def client_context(version: str) -> ssl.SSLContext:
    """One TLS version exactly, no certificate checks (the client's CPU is not what we measure)."""
    return kit.client_context(version, None, ciphers=BB10_SUITES if version in ("1.0", "1.1") else None)


# -- generator building blocks: each yields (fd, events) when it would block -------------


def send_all(sock: socket.socket, data: bytes) -> Wait:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except (BlockingIOError, ssl.SSLWantWriteError):
            yield sock.fileno(), W
            continue
        except ssl.SSLWantReadError:
            yield sock.fileno(), R
            continue
        view = view[n:]


def recv_into_buffer(sock: socket.socket, buf: bytearray) -> Wait:
    """Append at least one chunk to buf; raise on EOF."""
    while True:
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            yield sock.fileno(), R
            continue
        except ssl.SSLWantWriteError:
            yield sock.fileno(), W
            continue
        if not chunk:
            raise SessionError("closed by server")
        buf += chunk
        return


def recv_until(sock: socket.socket, pattern: re.Pattern[bytes], limit: int = 65536) -> Wait:
    """Read until pattern matches; a stream error or EOF raises. Returns (buffer, match end).

    Not kit.recv_until: this one is a step of a non-blocking session that yields to the epoll
    loop whenever the socket would block."""
    buf = bytearray()
    while True:
        match = pattern.search(buf)
        if match:
            return buf, match.end()
        error = STREAM_ERROR_RE.search(buf)
        if error:
            raise SessionError(f"stream error {error.group(1).decode()}")
        if len(buf) > limit:
            raise SessionError("pre-TLS reply too long")
        yield from recv_into_buffer(sock, buf)


def recv_echo(sock: socket.socket, sent: bytes) -> Wait:
    """Read back len(sent) bytes; anything but the same bytes (e.g. the proxy's stream error when
    its backend is down, which can be just as long) fails the session."""
    buf = bytearray()
    while len(buf) < len(sent):
        try:
            chunk = sock.recv(len(sent) - len(buf))
        except (BlockingIOError, ssl.SSLWantReadError):
            yield sock.fileno(), R
            continue
        except ssl.SSLWantWriteError:
            yield sock.fileno(), W
            continue
        if not chunk:
            raise SessionError("closed by server")
        buf += chunk
    if buf != sent:
        error = STREAM_ERROR_RE.search(buf)
        raise SessionError(f"stream error {error.group(1).decode()}" if error else "echo differs")


def establish(cfg: dict[str, Any], ctx: ssl.SSLContext | None, holder: list[socket.socket]) -> Wait:
    """Connect, STARTTLS prelude, TLS handshake. The current socket is kept in holder[0]."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.append(sock)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex((cfg["host"], cfg["port"]))
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, os.strerror(err))
    if err:
        yield sock.fileno(), W
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    if cfg["proto"] == "starttls":
        yield from send_all(sock, stream_header(cfg["domain"]))
        yield from recv_until(sock, FEATURES_END)
        yield from send_all(sock, STARTTLS)
        buf, end = yield from recv_until(sock, PROCEED)
        if end != len(buf):
            raise SessionError("bytes after <proceed/>")
    if ctx is not None:
        sock = ctx.wrap_socket(
            sock, server_hostname=cfg["domain"], do_handshake_on_connect=False, session=RESUME["session"]
        )
        holder[0] = sock
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                yield sock.fileno(), R
            except ssl.SSLWantWriteError:
                yield sock.fileno(), W
        if cfg.get("resume"):
            if sock.session_reused:
                RESUME["resumed"] += 1
            else:
                RESUME["session"] = sock.session  # a full handshake: offer its session from now on
        if not NEGOTIATED:
            cipher = sock.cipher()
            NEGOTIATED.update(version=sock.version() or "?", cipher=cipher[0] if cipher else "?")
    return sock


def session(cfg: dict[str, Any], ctx: ssl.SSLContext | None, stanza: bytes, keep: bool) -> Wait:
    """One client session: establish, one round trip through the backend, close unless kept."""
    holder: list[socket.socket] = []
    try:
        sock = yield from establish(cfg, ctx, holder)
        if stanza:
            yield from send_all(sock, stanza)
            yield from recv_echo(sock, stanza)
    except BaseException:
        if holder:
            holder[0].close()
        raise
    if not keep:
        sock.close()
        return None
    return sock


def stream(
    sock: socket.socket, deadline: float, counters: list[int], idx: int, window: int, chunk: int
) -> Wait:
    """Keep about `window` bytes in flight to the echo; counters[idx] = bytes echoed back."""
    payload = b"x" * chunk
    rbuf = bytearray(256 * 1024)
    fd = sock.fileno()
    sent = received = 0
    while True:
        while True:
            try:
                n = sock.recv_into(rbuf)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if n == 0:
                raise SessionError("closed by server during stream")
            received += n
        counters[idx] = received
        if time.monotonic() >= deadline:
            return received
        write_blocked = False
        while sent - received < window:
            try:
                sent += sock.send(payload)
            except (BlockingIOError, ssl.SSLWantWriteError):
                write_blocked = True
                break
            except ssl.SSLWantReadError:
                break
        yield fd, (R | W) if write_blocked else R


# -- the driver ---------------------------------------------------------------------------


class Task:
    __slots__ = ("deadline", "fd", "gen", "mask", "started")

    def __init__(self, gen: Wait, deadline: float) -> None:
        self.gen = gen
        self.deadline = deadline
        self.started = time.monotonic()
        self.fd = -1
        self.mask = 0


class Driver:
    """Runs session generators on one epoll; every wait is bounded by the task's deadline."""

    def __init__(
        self, on_done: Callable[[Task, Any], None], on_fail: Callable[[Task, BaseException], None]
    ) -> None:
        self.epoll = select.epoll()
        self.tasks: dict[int, Task] = {}
        self.on_done = on_done
        self.on_fail = on_fail
        self._next_sweep = 0.0

    def spawn(self, gen: Wait, timeout: float) -> None:
        self._advance(Task(gen, time.monotonic() + timeout), None)

    def _forget(self, task: Task) -> None:
        if task.fd >= 0:
            self.tasks.pop(task.fd, None)
            with contextlib.suppress(OSError):  # closed by the generator already: epoll dropped it
                self.epoll.unregister(task.fd)
            task.fd = -1

    def _advance(self, task: Task, exc: BaseException | None) -> None:
        try:
            fd, mask = task.gen.throw(exc) if exc is not None else task.gen.send(None)
        except StopIteration as stop:
            self._forget(task)
            self.on_done(task, stop.value)
            return
        except Exception as error:
            self._forget(task)
            self.on_fail(task, error)
            return
        if fd != task.fd:
            self._forget(task)
            self.epoll.register(fd, mask)
            task.fd, task.mask = fd, mask
            self.tasks[fd] = task
        elif mask != task.mask:
            self.epoll.modify(fd, mask)
            task.mask = mask

    def poll(self, timeout: float) -> None:
        for fd, _events in self.epoll.poll(timeout):
            task = self.tasks.get(fd)
            if task is not None:
                self._advance(task, None)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 0.2
            for task in [t for t in self.tasks.values() if t.deadline <= now]:
                if task.fd in self.tasks:
                    self._advance(task, TimeoutError("session timeout"))


def describe(exc: BaseException) -> str:
    if isinstance(exc, SessionError):
        return str(exc)
    if isinstance(exc, ssl.SSLError):
        return f"ssl: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return f"os: {errno.errorcode.get(exc.errno, exc.errno)}"
    return exc.__class__.__name__


# -- modes --------------------------------------------------------------------------------


def emit(**record: Any) -> None:
    if record.get("event") == "result":
        record["negotiated"] = NEGOTIATED
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def wait_command(expected: str, timeout: float) -> bool:
    """Block until run.py writes `expected` on stdin (False on timeout or EOF)."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return False
    return sys.stdin.readline().strip() == expected


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def run_sessions(cfg: dict[str, Any], keep: bool) -> tuple[list[Any], Counter[str], list[float], float]:
    """Run `count` sessions, `concurrency` at a time, within `time_limit`. Returns
    (kept sockets, failures, session durations in ms, elapsed seconds)."""
    ctx = client_context(cfg["tls"]) if cfg["proto"] != "plain" else None
    if ctx is not None and cfg.get("resume"):  # a session resumes only through its own context
        ctx = RESUME.setdefault("ctx", ctx)
        if cfg["resume"] == "id":
            ctx.options |= ssl.OP_NO_TICKET
    stanza = make_stanza(cfg["stanza_size"])
    kept: list[Any] = []
    failures: Counter[str] = Counter()
    durations: list[float] = []

    def done(task: Task, sock: Any) -> None:
        durations.append((time.monotonic() - task.started) * 1000)
        if sock is not None:
            kept.append(sock)

    def fail(task: Task, exc: BaseException) -> None:
        failures[describe(exc)] += 1

    driver = Driver(done, fail)
    start = time.monotonic()
    stop_starting = start + cfg["time_limit"]
    hard_stop = stop_starting + cfg["session_timeout"] + 1
    started = 0
    while time.monotonic() < hard_stop:
        now = time.monotonic()
        while started < cfg["count"] and len(driver.tasks) < cfg["concurrency"] and now < stop_starting:
            started += 1
            driver.spawn(session(cfg, ctx, stanza, keep), cfg["session_timeout"])
        if not driver.tasks and (started >= cfg["count"] or now >= stop_starting):
            break
        driver.poll(0.05)
    for task in list(driver.tasks.values()):  # only if hard_stop passed
        failures["unfinished at time limit"] += 1
        driver._forget(task)
        task.gen.close()
    failures["not started (time limit)"] += cfg["count"] - started
    failures = Counter({k: v for k, v in failures.items() if v})
    return kept, failures, durations, time.monotonic() - start


def summary_ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": values[-1] if values else 0.0,
    }


def mode_handshake(cfg: dict[str, Any]) -> None:
    if cfg.get("resume"):  # one unmeasured full handshake, whose session the others offer
        _, failures, _, _ = run_sessions(cfg | {"count": 1, "concurrency": 1}, keep=False)
        if failures or RESUME["session"] is None:
            emit(event="result", ok=0, failed=1, failures=dict(failures) or {"no session to resume": 1})
            return
        RESUME["resumed"] = 0
    emit(event="ready")
    if not wait_command("go", 60):
        return
    cpu0 = cpu_seconds()
    _, failures, durations, elapsed = run_sessions(cfg, keep=False)
    emit(
        event="result",
        resumed=RESUME["resumed"],
        ok=len(durations),
        failed=sum(failures.values()),
        failures=dict(failures),
        elapsed_s=elapsed,
        session_ms=summary_ms(durations),
        durations_ms=[round(d, 2) for d in durations],
        client_cpu_s=cpu_seconds() - cpu0,
    )


def mode_hold(cfg: dict[str, Any]) -> None:
    emit(event="ready")
    if not wait_command("go", 60):
        return
    kept, failures, _durations, elapsed = run_sessions(cfg, keep=True)
    emit(
        event="established",
        ok=len(kept),
        failed=sum(failures.values()),
        failures=dict(failures),
        elapsed_s=elapsed,
    )
    wait_command("close", cfg["hold_limit"])
    # Still alive = no EOF/RST/unexpected bytes waiting on the socket.
    poller = select.epoll()
    for sock in kept:
        poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    dead = len(poller.poll(0))
    poller.close()
    for sock in kept:
        sock.close()
    emit(event="result", held=len(kept), dead_at_close=dead)


def mode_stream(cfg: dict[str, Any]) -> None:
    emit(event="ready")
    if not wait_command("go", 60):
        return
    kept, failures, _, _ = run_sessions(cfg | {"count": cfg["concurrency"]}, keep=True)
    if failures:
        for sock in kept:
            sock.close()
        emit(event="result", failed=sum(failures.values()), failures=dict(failures))
        return
    counters = [0] * len(kept)
    stream_failures: Counter[str] = Counter()
    driver = Driver(lambda task, value: None, lambda task, exc: stream_failures.update([describe(exc)]))
    start = time.monotonic()
    warm_at, end_at = start + cfg["warmup"], start + cfg["warmup"] + cfg["duration"]
    for i, sock in enumerate(kept):
        driver.spawn(
            stream(sock, end_at, counters, i, cfg["window"], cfg["chunk"]),
            cfg["warmup"] + cfg["duration"] + 10,
        )
    emit(event="streaming")
    marks: dict[str, tuple[float, int, float]] = {}
    while driver.tasks and time.monotonic() < end_at + 10:
        driver.poll(0.02)
        now = time.monotonic()
        if "warm" not in marks and now >= warm_at:
            marks["warm"] = (now, sum(counters), cpu_seconds())
            emit(event="warm")
        if "end" not in marks and now >= end_at:
            marks["end"] = (now, sum(counters), cpu_seconds())
            emit(event="end")
    for sock in kept:
        sock.close()
    if "end" not in marks or "warm" not in marks:
        emit(event="result", failed=len(kept), failures={"stream did not finish": len(kept)})
        return
    (t0, b0, c0), (t1, b1, c1) = marks["warm"], marks["end"]
    emit(
        event="result",
        failed=sum(stream_failures.values()),
        failures=dict(stream_failures),
        bytes=b1 - b0,
        seconds=t1 - t0,
        client_cpu_s=c1 - c0,
    )


def mode_latency(cfg: dict[str, Any]) -> None:
    emit(event="ready")
    if not wait_command("go", 60):
        return
    kept, failures, _, _ = run_sessions(cfg | {"count": 1, "concurrency": 1}, keep=True)
    if not kept:
        emit(event="result", failed=1, failures=dict(failures))
        return
    sock = kept[0]
    sock.setblocking(True)
    sock.settimeout(5.0)
    stanza = make_stanza(cfg["stanza_size"])
    size = len(stanza)
    buf = bytearray(size)
    samples: list[float] = []
    deadline = time.monotonic() + cfg["time_limit"]
    failure = ""
    try:
        for i in range(cfg["warmup"] + cfg["samples"]):
            if time.monotonic() > deadline:
                failure = "time limit"
                break
            t0 = time.perf_counter_ns()
            sock.sendall(stanza)
            got = 0
            while got < size:
                n = sock.recv_into(memoryview(buf)[got:])
                if n == 0:
                    raise SessionError("closed by server")
                got += n
            if i >= cfg["warmup"]:
                samples.append((time.perf_counter_ns() - t0) / 1000)
    except (OSError, SessionError) as exc:
        failure = describe(exc)
    finally:
        sock.close()
    samples.sort()
    emit(
        event="result",
        failed=1 if failure else 0,
        failures={failure: 1} if failure else {},
        samples_us=[round(x, 1) for x in samples],
    )


def main() -> int:
    defaults = {
        "host": "127.0.0.1",
        "domain": "example.test",
        "proto": "starttls",
        "tls": "1.3",
        "stanza_size": 200,
        "count": 100,
        "concurrency": 10,
        "time_limit": 60.0,
        "session_timeout": 30.0,
        "hold_limit": 600.0,
        "duration": 3.0,
        "warmup": 0.5,
        "window": 256 * 1024,
        "chunk": 16 * 1024,
        "samples": 1000,
    }
    cfg = defaults | json.loads(sys.argv[1])
    if cfg["host"] not in ("127.0.0.1", "::1", "localhost"):
        print("loadgen: loopback targets only", file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    modes = {"handshake": mode_handshake, "hold": mode_hold, "stream": mode_stream, "latency": mode_latency}
    modes[cfg["mode"]](cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
