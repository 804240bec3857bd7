#!/usr/bin/env python3
"""Memory BIO or socket BIO (issue 19): one minimal relay three ways, against bbproxy and haproxy.

What would a socket-BIO TLS engine save bbproxy? The same minimal relay on uvloop runs with
OpenSSL on memory BIOs driven from Python (bbproxy's design), on the socket itself, and in uvloop's
own TLS, against bbproxy and haproxy in the same run.

    .venv/bin/python bench/socket_bio.py               # 3 rounds, 4 000 idle, 3 000 handshakes: ~6 min
    .venv/bin/python bench/socket_bio.py --cert rsa    # the RSA chain (a bigger first flight)

An experiment, not a design: the three servers here are the smallest direct-TLS relays that do
what the benchmark's session asks (TLS 1.0 ECDSA handshake, a 200 B stanza relayed to the echo
backend and back, then idle or close), with the benchmark's TLS policy:

``memory-bio``  an ``asyncio.BufferedProtocol`` on a uvloop transport feeds an ``ssl.SSLObject``
                through two ``ssl.MemoryBIO``s, as bbproxy's engine does; the backend is a uvloop
                transport opened by ``loop.create_connection``.
``socket-bio``  ``ssl.SSLSocket`` (non-blocking) on the accepted socket, driven by
                ``loop.add_reader``/``add_writer``: OpenSSL reads and writes the socket itself, as
                haproxy's does; the backend is a plain non-blocking socket on the same callbacks.
``uvloop-tls``  ``loop.create_server(ssl=...)``: uvloop's own memory-BIO engine (Cython), no TLS
                code in Python; the backend as in ``memory-bio``.

They run as this file's ``server`` mode. Each round starts every peer afresh, in an order reversed
every other round, holds ``--idle-sessions`` idle sessions (RSS growth per session), runs
``--handshakes`` sessions at 200 in flight (server CPU per session), relays for 3 s at 1 and 16
connections (CPU per GB) and 200 B stanzas one at a time on one connection (CPU per round trip):
run.py's idle, handshake, throughput and latency scenarios. Then, started afresh, it holds 300
sessions that each relayed 256 KiB each way first (run.py's idle_burst). Loopback only, every
loop bounded, every process stopped by PID.

    .venv/bin/python bench/socket_bio.py --bursts 2,8,32    # idle after a 2, 8 or 32 KiB burst: ~2.5 min

``--bursts`` measures only what an idle session keeps after it once relayed a stanza of each size
each way (a roster, a vCard with its avatar, offline messages at login): every peer started afresh
for each size, ``BURST_SIZED_SESSIONS`` sessions held, rounds and peers ordered as above.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import shutil
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import HOST, BenchError, Cert, make_certs
from peers import BBProxyDirect, Env, HAProxy, Peer, running, start_echo
from procstat import Processes, ignore_signals, interrupt_on_signals, raise_nofile, run_script, settle
from scenarios import BURST_STANZA, PROFILES, loadgens, percentile, run_handshakes, run_idle, run_stream
from servers import server_context

READ_SIZE = 256 * 1024  # bbproxy's receive buffer, shared by every session of the process
RECORD = 16384


# -- the three servers (this file's server mode) -----------------------------------------------


class Relay:
    """What the two transport-based sessions share: the backend connect's end, and the close
    (on an error, the client's EOF or the connection's loss)."""

    __slots__ = ()
    closed: bool
    pending: list[bytes] | None
    to_backend: asyncio.Transport | None
    transport: asyncio.Transport | None

    def connected(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None or self.closed:
            if not task.cancelled() and task.exception() is None:
                task.result()[0].close()
            self.close()
            return
        self.to_backend = task.result()[0]  # type: ignore[assignment]
        if self.pending:
            self.to_backend.writelines(self.pending)  # type: ignore[union-attr]
        self.pending = None

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.to_backend is not None:
            self.to_backend.close()


class MemoryBioSession(Relay, asyncio.BufferedProtocol):
    """Client side on a uvloop transport, TLS through two memory BIOs, backend on another transport."""

    __slots__ = (
        "closed",
        "done",
        "incoming",
        "outgoing",
        "pending",
        "server",
        "tls",
        "to_backend",
        "transport",
    )

    def __init__(self, server: MemoryBioServer) -> None:
        self.server = server
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = server.ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.transport: asyncio.Transport | None = None
        self.to_backend: asyncio.Transport | None = None
        self.pending: list[bytes] | None = []
        self.done = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.view

    def buffer_updated(self, nbytes: int) -> None:
        self.incoming.write(self.server.view[:nbytes])
        self.pump()

    def pump(self) -> None:
        if not self.done:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                return
            except (ssl.SSLError, OSError):
                self.flush()
                self.close()
                return
            self.done = True
            self.flush()
            task = asyncio.ensure_future(
                self.server.loop.create_connection(lambda: BackendProtocol(self), HOST, self.server.backend)
            )
            task.add_done_callback(self.connected)
        chunks = []
        while True:
            try:
                data = self.tls.read(RECORD)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLError, OSError):
                data = b""
            if not data:
                self.close()
                return
            chunks.append(data)
        if chunks:
            if self.to_backend is not None:
                self.to_backend.writelines(chunks)
            elif self.pending is not None:
                self.pending.extend(chunks)
        self.flush()

    def from_backend(self, data: bytes) -> None:
        try:
            self.tls.write(data)
        except (ssl.SSLError, OSError):
            self.close()
            return
        self.flush()

    def flush(self) -> None:
        data = self.outgoing.read()
        if data and self.transport is not None:
            self.transport.write(data)


class BackendProtocol(asyncio.Protocol):
    __slots__ = ("session",)

    def __init__(self, session: MemoryBioSession | UvloopTlsSession) -> None:
        self.session = session

    def data_received(self, data: bytes) -> None:
        self.session.from_backend(data)

    def eof_received(self) -> bool:
        self.session.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close()


class MemoryBioServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: ssl.SSLContext, backend: int) -> None:
        self.loop, self.ctx, self.backend = loop, ctx, backend
        self.view = memoryview(bytearray(READ_SIZE))

    async def start(self, port: int) -> int:
        server = await self.loop.create_server(lambda: MemoryBioSession(self), HOST, port, backlog=4096)
        return int(server.sockets[0].getsockname()[1])


class UvloopTlsSession(Relay, asyncio.Protocol):
    """The loop's own TLS (``create_server(ssl=...)``: uvloop's memory-BIO engine, in Cython) and the
    same backend as ``memory-bio``: the relay with no TLS glue in Python at all."""

    __slots__ = ("closed", "pending", "server", "to_backend", "transport")

    def __init__(self, server: UvloopTlsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.to_backend: asyncio.Transport | None = None
        self.pending: list[bytes] | None = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # after the handshake
        self.transport = transport  # type: ignore[assignment]
        task = asyncio.ensure_future(
            self.server.loop.create_connection(lambda: BackendProtocol(self), HOST, self.server.backend)
        )
        task.add_done_callback(self.connected)

    def data_received(self, data: bytes) -> None:
        if self.to_backend is not None:
            self.to_backend.write(data)
        elif self.pending is not None:
            self.pending.append(data)

    def from_backend(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


class UvloopTlsServer(MemoryBioServer):
    async def start(self, port: int) -> int:
        server = await self.loop.create_server(
            lambda: UvloopTlsSession(self), HOST, port, backlog=4096, ssl=self.ctx, ssl_handshake_timeout=30.0
        )
        return int(server.sockets[0].getsockname()[1])


class SocketBioSession:
    """OpenSSL on the client's socket (``SSLSocket``), the backend a plain socket; both driven by
    the loop's reader and writer callbacks, each with at most one pending write."""

    __slots__ = ("backend", "closed", "done", "linked", "server", "tls", "to_backend", "to_client")

    def __init__(self, server: SocketBioServer, tls: ssl.SSLSocket) -> None:
        self.server = server
        self.tls = tls
        self.backend: socket.socket | None = None
        self.to_backend = bytearray()  # bytes the backend has not taken yet (or before its connect)
        self.to_client = b""  # a record OpenSSL must be given again (SSLWantWriteError)
        self.done = False
        self.linked = False  # the backend's connect has completed
        self.closed = False

    def client_readable(self) -> None:
        if not self.done:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self.server.loop.add_writer(self.tls.fileno(), self.client_writable)
                return
            except (ssl.SSLError, OSError):
                self.close()
                return
            self.done = True
            self.connect_backend()
        view = self.server.view
        while not self.closed:
            try:
                n = self.tls.recv_into(view, RECORD)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLError, OSError):
                n = 0
            if not n:
                self.close()
                return
            self.send_backend(view[:n])

    def client_writable(self) -> None:
        self.server.loop.remove_writer(self.tls.fileno())
        if not self.done:
            self.client_readable()
        elif self.to_client:
            data, self.to_client = self.to_client, b""
            self.send_client(data)

    def connect_backend(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.backend = sock
        err = sock.connect_ex((HOST, self.server.backend))
        if err not in (0, errno.EINPROGRESS):
            self.close()
            return
        self.server.loop.add_writer(sock.fileno(), self.backend_connected)

    def backend_connected(self) -> None:
        assert self.backend is not None
        self.server.loop.remove_writer(self.backend.fileno())
        if self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.close()
            return
        self.linked = True
        self.server.loop.add_reader(self.backend.fileno(), self.backend_readable)
        self.flush_backend()

    def send_backend(self, data: memoryview) -> None:
        idle = not self.to_backend  # else a flush is already waiting for the socket
        self.to_backend += data
        if self.linked and idle:
            self.flush_backend()

    def flush_backend(self) -> None:
        assert self.backend is not None
        if self.to_backend:
            try:
                sent = self.backend.send(self.to_backend)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            del self.to_backend[:sent]
        if self.to_backend:
            self.server.loop.add_writer(self.backend.fileno(), self.flush_backend)
        else:
            self.server.loop.remove_writer(self.backend.fileno())

    def backend_readable(self) -> None:
        assert self.backend is not None
        view = self.server.view
        try:
            n = self.backend.recv_into(view)  # OpenSSL cuts it into records
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            self.close()
            return
        self.send_client(bytes(view[:n]))

    def send_client(self, data: bytes) -> None:
        try:
            sent = self.tls.send(data)
        except ssl.SSLWantWriteError:
            sent = 0
        except (ssl.SSLError, OSError):
            self.close()
            return
        if sent < len(data):  # a slow client: stop reading the backend until it drains
            self.to_client = data[sent:] if sent else data
            assert self.backend is not None
            self.server.loop.remove_reader(self.backend.fileno())
            self.server.loop.add_writer(self.tls.fileno(), self.client_writable_resume)

    def client_writable_resume(self) -> None:
        self.client_writable()
        if not self.to_client and not self.closed and self.backend is not None:
            self.server.loop.add_reader(self.backend.fileno(), self.backend_readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.server.loop
        for sock in (self.tls, self.backend):
            if sock is not None and sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
                loop.remove_writer(sock.fileno())
                sock.close()


class SocketBioServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: ssl.SSLContext, backend: int) -> None:
        self.loop, self.ctx, self.backend = loop, ctx, backend
        self.view = memoryview(bytearray(READ_SIZE))
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    async def start(self, port: int) -> int:
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.loop.add_reader(self.listener.fileno(), self.accept)
        return int(self.listener.getsockname()[1])

    def accept(self) -> None:
        for _ in range(64):  # bounded per loop turn, like uvloop's own accept loop
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            session = SocketBioSession(self, tls)
            self.loop.add_reader(tls.fileno(), session.client_readable)


SERVERS: dict[str, Callable[[asyncio.AbstractEventLoop, ssl.SSLContext, int], Any]] = {
    "memory-bio": MemoryBioServer,
    "socket-bio": SocketBioServer,
    "uvloop-tls": UvloopTlsServer,
}


def server_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="socket_bio.py server")
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    import uvloop

    raise_nofile()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = SERVERS[args.kind](loop, server_context(args.cert, args.key), args.backend)
        port = await server.start(args.port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"ready {port} uvloop", flush=True)
        await stop.wait()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    return 0


# -- the measurement ---------------------------------------------------------------------------


class PythonRelay(Peer):
    """One of this file's servers, direct TLS in front of the echo backend."""

    proto = "direct-tls"
    fds_per_session = 2

    def __init__(self, env: Env, kind: str) -> None:
        super().__init__(env)
        self.name = kind

    def argv(self, cert: Cert | None) -> list[str]:
        assert cert is not None
        return [
            self.env.args.python, str(Path(__file__).resolve()), "server", self.name,
            "--port", str(self.port), "--backend", str(self.env.echo_port),
            "--cert", str(cert.chain), "--key", str(cert.key),
        ]  # fmt: skip


COLUMNS: list[tuple[str, str, int]] = [
    ("idle", "idle KiB/session", 2),
    ("burst", "idle KiB/session after a burst", 1),
    ("cpu", "handshake CPU ms/session", 3),
    ("gb1", "relay CPU s/GB, 1 conn", 2),
    ("gb16", "relay CPU s/GB, 16 conns", 2),
    ("rt", "200 B round trip, CPU us", 1),
    ("p50", "200 B round trip p50 us", 1),
]  # key, title, decimals

BURST_SESSIONS = 300  # run.py's quick idle_burst: each sends and gets back BURST_STANZA, then idles
BURST_SIZED_SESSIONS = 1000  # --bursts: fewer sessions mostly reuse the heap the warm-up freed
ROUND_TRIPS = 20000  # one connection, one 200 B stanza at a time: ~1 s, so 10 ms CPU ticks are ~1 %
WARMUP_TRIPS = 500  # before the timed ones, on the same connection (its CPU is counted too)


def run_round_trips(env: Env, peer: Peer) -> dict[str, float]:
    """XMPP's usual traffic: small stanzas, one at a time. The server's CPU per 200 B echoed
    through it and back, and the round trip's median as the client saw it."""
    cfg = {"mode": "latency", "port": peer.port, "proto": peer.proto, "tls": "1.0", "stanza_size": 200,
           "samples": ROUND_TRIPS, "warmup": WARMUP_TRIPS, "time_limit": 60}  # fmt: skip
    with loadgens(env, [cfg], f"rt-{peer.name}") as (gen,):
        cpu0 = settle(peer.pid)
        gen.send("go")
        result = gen.expect("result", 90)
        cpu1 = settle(peer.pid)
    if result["failed"]:
        raise BenchError(f"{peer.name}: round trips failed: {result['failures']}")
    samples = result["samples_us"]
    return {"cpu_us": (cpu1 - cpu0) * 1e6 / (ROUND_TRIPS + WARMUP_TRIPS), "p50_us": percentile(samples, 50)}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_all(env: Env, peer: Peer, cert: Cert, idle: int, handshakes: int) -> dict[str, float]:
    """One round of one peer: every column of COLUMNS."""
    with running(peer, cert):
        held = run_idle(env, peer, idle, cert)
        hs = run_handshakes(env, peer, "1.0", cert, sessions=handshakes)
        streams = [run_stream(env, peer, conns, "1.0") for conns in (1, 16)]
        trips = run_round_trips(env, peer)
    with running(peer, cert):  # afresh: the relay runs above freed big buffers
        burst = run_idle(env, peer, BURST_SESSIONS, cert, stanza_size=BURST_STANZA)
    check_failed(peer, [held, hs, burst, *streams])
    return {
        "idle": held["kib_per_session"],
        "burst": burst["kib_per_session"],
        "cpu": hs["peer_cpu_ms_per_session"],
        "gb1": streams[0]["peer_cpu_s_per_gb"],
        "gb16": streams[1]["peer_cpu_s_per_gb"],
        "rt": trips["cpu_us"],
        "p50": trips["p50_us"],
    }


def measure_bursts(env: Env, peer: Peer, cert: Cert, sizes: list[int]) -> dict[str, float]:
    """One round of one peer for --bursts: idle KiB per session after one burst of each size (KiB)
    each way, the peer started afresh for each, so no size inherits another's freed heap."""
    row: dict[str, float] = {}
    for size in sizes:
        with running(peer, cert):
            held = run_idle(env, peer, BURST_SIZED_SESSIONS, cert, stanza_size=size * 1024)
        check_failed(peer, [held])
        row[f"{size}k"] = held["kib_per_session"]
    return row


def check_failed(peer: Peer, runs: list[dict[str, Any]]) -> None:
    if failed := sum(r["failed"] for r in runs):
        why = " ".join(str(r["failures"]) for r in runs if r["failed"])
        raise BenchError(f"{peer.name}: {failed} sessions failed: {why}")


def burst_sizes(text: str) -> list[int]:
    """--bursts: sizes in KiB, 1..256 each, at most five."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of KiB sizes: {text!r}") from None
    if not sizes or len(sizes) > 5 or not all(1 <= size <= 256 for size in sizes):
        raise argparse.ArgumentTypeError("one to five sizes, each 1..256 KiB")
    return sizes


def print_table(rows: dict[str, dict[str, list[float]]], columns: list[tuple[str, str, int]]) -> None:
    """Medians, each with its ratio to haproxy's (to memory-bio's without haproxy)."""
    ref = "haproxy" if "haproxy" in rows else "memory-bio"
    print(f"x = ratio to {ref}")
    print("| server | " + " | ".join(f"{title} | x" for _key, title, _digits in columns) + " |")
    print("| --- |" + " --- | --- |" * len(columns))
    for name, row in rows.items():
        cells = []
        for key, _title, digits in columns:
            value, base = median(row[key]), median(rows[ref][key])
            cells.append(f"{value:.{digits}f} | {value / base:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (1..5), each peer once per round")
    parser.add_argument("--idle-sessions", type=int, default=4000, help="idle sessions held (1000..5000)")
    parser.add_argument("--handshakes", type=int, default=3000, help="sessions per handshake run (100..5000)")
    parser.add_argument("--cert", choices=["ecdsa", "rsa"], default="ecdsa", help="key type of the chain")
    parser.add_argument(
        "--bursts", type=burst_sizes, metavar="KIB[,KIB...]",
        help="only idle memory after one burst of each size each way (1..256 KiB, up to five sizes)",
    )  # fmt: skip
    parser.add_argument("--python", default=sys.executable, help="interpreter that can import bbproxy")
    args = parser.parse_args(argv)
    rounds = max(1, min(args.rounds, 5))
    # Fewer sessions mostly reuse the heap the warm-up freed, and say little (bench/README).
    idle = max(1000, min(args.idle_sessions, 5000))
    handshakes = max(100, min(args.handshakes, 5000))
    if args.bursts:
        columns = [(f"{size}k", f"idle KiB/session after {size} KiB", 1) for size in args.bursts]
    else:
        columns = COLUMNS
    raise_nofile()
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="bbproxy-socket-bio-"))
    ns = argparse.Namespace(python=args.python, loop="uvloop", proxy_args="", skip_peers=set(), clients=2)
    env = Env(ns, dict(PROFILES["quick"]) | {"stream_s": 3.0}, workdir, Processes())
    env.deadline = time.monotonic() + 900
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        env.certs = make_certs(workdir)
        cert = env.certs[args.cert]
        start_echo(env)
        peers: list[Peer] = [
            PythonRelay(env, "memory-bio"),
            PythonRelay(env, "socket-bio"),
            PythonRelay(env, "uvloop-tls"),
            BBProxyDirect(env),
        ]
        if HAProxy.path() is not None:
            peers.append(HAProxy(env))
        for round_ in range(rounds):
            for peer in peers if round_ % 2 == 0 else peers[::-1]:
                if env.remaining() < 0:
                    raise BenchError("over the 900 s budget")
                if args.bursts:
                    result = measure_bursts(env, peer, cert, args.bursts)
                else:
                    result = measure_all(env, peer, cert, idle, handshakes)
                row = rows.setdefault(peer.name, {key: [] for key, _title, _digits in columns})
                for key, value in result.items():
                    row[key].append(value)
                print(f"round {round_ + 1} {peer.name:15} " + describe(result, bool(args.bursts)), flush=True)
    finally:
        ignore_signals()
        env.procs.stop_all()
    if args.bursts:
        sizes = ", ".join(map(str, args.bursts))
        print(
            f"\nTLS 1.0 {args.cert.upper()}, direct TLS, relay to the echo; medians of {rounds} round(s); "
            f"{BURST_SIZED_SESSIONS} idle sessions, each after one stanza of {sizes} KiB echoed through it"
        )
    else:
        print(f"\nTLS 1.0 {args.cert.upper()}, direct TLS, relay to the echo; medians of {rounds} round(s); "
              f"{idle} idle sessions ({BURST_SESSIONS} after {BURST_STANZA // 1024} KiB each way), "
              f"{handshakes} handshakes at 200 in flight, "
              f"{env.profile['stream_s']} s of relay at 1 and 16 connections, {ROUND_TRIPS} round trips of "
              f"200 B on one connection")  # fmt: skip
    print_table(rows, columns)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def describe(result: dict[str, float], bursts: bool) -> str:
    """One round's line for one peer."""
    if bursts:
        kept = ", ".join(f"after {key[:-1]} KiB {value:.1f}" for key, value in result.items())
        return f"{kept} KiB/session idle"
    return (
        f"idle {result['idle']:6.2f} KiB/session ({result['burst']:.1f} after a burst), "
        f"handshake {result['cpu']:.3f} ms CPU/session, relay "
        f"{result['gb1']:.2f} / {result['gb16']:.2f} s CPU/GB at 1 / 16 connections, "
        f"200 B round trip {result['rt']:.1f} us CPU, p50 {result['p50']:.1f} us"
    )


if __name__ == "__main__":
    run_script("socket_bio.py", main, server=server_main)
