"""The server: admission and connection limits, accounting, signals (TERM stop, HUP certificate
reload) and readiness. The listening sockets themselves are listeners.py's."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from . import expiry, fingerprints, memory, notify
from .closing import Close
from .config import Address, Settings
from .limits import PerIpLimiter, covers_everything, in_networks
from .listeners import Listener, ListenError, bind
from .metric_labels import LEGACY_SERVED, LEGACY_UNKNOWN, MAX_FAMILIES, FirstValues
from .metrics import LiveTotals, Metrics, NullMetrics
from .metrics_http import serve as serve_metrics
from .session import ClientSession
from .tls import CertificateError, TlsContexts

log = logging.getLogger("bbproxy")

FLUSH_GRACE = 5.0  # seconds for sessions to flush and close once told to stop
# After a mass close (at least TRIM_MIN_DROP sessions, and half of the peak, gone), freed memory
# is handed back to the OS (memory.trim) once things have settled for TRIM_DELAY seconds.
TRIM_MIN_DROP = 1000
TRIM_DELAY = 5.0


@dataclass(slots=True)
class Stats:
    accepted: int = 0
    refused: int = 0
    handshake_failures: int = 0
    backend_failures: int = 0
    handshakes: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)  # terminate / passthrough / refused
    # (family, outcome) of legacy hellos, bounded however many fingerprints clients make up:
    # ProxyServer.legacy_client.
    legacy_families: Counter[tuple[str, str]] = field(default_factory=Counter)


def load_contexts(settings: Settings) -> TlsContexts:
    s = settings
    return TlsContexts.load(
        s.domains, s.cert, s.certificates, s.min_tls, s.tls.legacy_plain_rsa, s.tls.legacy_cert
    )


class ProxyServer:
    def __init__(
        self,
        settings: Settings,
        contexts: TlsContexts,
        loop: asyncio.AbstractEventLoop,
        reuse_port: bool = False,
        metrics: Metrics | NullMetrics | None = None,
        inherited: list[socket.socket] | None = None,
    ) -> None:
        self.settings = settings
        # Listening sockets systemd holds for us (socket activation): they stay open in systemd
        # while the proxy restarts, so clients queue in the backlog instead of being refused.
        self.inherited = list(inherited or ())
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.metrics.set_live_source(self.live_totals)
        self.reuse_port = reuse_port
        limits = settings.limits
        self.per_ip = PerIpLimiter(
            limits.max_connections_per_ip,
            limits.connect_rate_per_ip,
            limits.exempt_networks,
            ipv6_prefix=limits.ipv6_prefix,
        )
        self.contexts = contexts
        self.loop = loop
        self.domains = frozenset(settings.domains)
        # The default legacy_networks (0.0.0.0/0 and ::/0) admit everyone: no address to parse.
        self._legacy_everywhere = covers_everything(settings.tls.legacy_networks)
        self.sessions: set[ClientSession] = set()
        self.stats = Stats()
        self._unnamed_family = FirstValues(MAX_FAMILIES, (LEGACY_UNKNOWN,))
        self._servers: list[asyncio.base_events.Server] = []
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._peak = 0  # most sessions open at once since the last trim
        self._trim_timer: asyncio.TimerHandle | None = None
        self.trims = 0
        expiry.watch(settings, self.metrics, datetime.now(UTC))

    # -- connection accounting, called by sessions ---------------------------------------

    def admit(self, session: ClientSession) -> str | None:
        """None if the session may go on, else why it is refused."""
        self.stats.accepted += 1
        self.metrics.accepted(session.listener.name)
        if self._stopping.is_set():
            reason: str | None = "shutting-down"
        elif len(self.sessions) >= self.settings.limits.max_connections:
            reason = "max-connections"
        else:
            reason = self.per_ip.admit(session.peer_ip)
        if reason is not None:
            self.stats.refused += 1
            self.metrics.refused(session.listener.name, reason)
            return reason
        self.sessions.add(session)
        self._idle.clear()
        if len(self.sessions) > self._peak:
            self._peak = len(self.sessions)
        return None

    def legacy_allowed(self, ip: str) -> bool:
        """Whether a client at ``ip`` may use TLS below 1.2 (tls.legacy_networks)."""
        return self._legacy_everywhere or in_networks(ip, self.settings.tls.legacy_networks)

    def legacy_client(self, family: str, outcome: str, named: bool) -> None:
        """A legacy hello (``family`` is ``TLSv1/<name>``) was ``served``, ``refused`` or
        ``failed``. A family the fingerprint table names counts as itself, whatever the outcome:
        the table is finite. An unnamed one counts as itself only when served, and only the first
        MAX_FAMILIES of them; a refused or failed unnamed hello cost the client no handshake, so it
        earns no series and counts as ``unknown`` (its log line and ``bbproxy census`` have it)."""
        if named:
            key = family
        elif outcome == LEGACY_SERVED:
            key = self._unnamed_family(family)
        else:
            key = LEGACY_UNKNOWN
        self.stats.legacy_families[key, outcome] += 1
        self.metrics.legacy_client(key, outcome)

    def handshake_done(self, session: ClientSession) -> None:
        """TLS is up: ours (terminate), or handed to Prosody's TLS port (passthrough)."""
        self.stats.handshakes[session.tls_version] += 1
        self.stats.routes[session.route] += 1
        seconds = time.monotonic() - session.tls_started
        self.metrics.routed(session.listener.name, session.route)
        if session.route == "terminate":
            self.metrics.handshake(session.listener.name, session.tls_version, session.cipher, seconds)

    def handshake_failed(self, session: ClientSession, reason: str) -> None:
        self.stats.handshake_failures += 1
        if session.route == "refused":
            self.stats.routes["refused"] += 1
            self.metrics.routed(session.listener.name, "refused")
        self.metrics.handshake_failed(session.listener.name, reason)

    def backend_failed(self) -> None:
        self.stats.backend_failures += 1
        self.metrics.backend_failed()

    def live_totals(self) -> LiveTotals:
        """What the sessions still open have relayed; the metrics add it at scrape time."""
        up = down = 0
        for session in self.sessions:
            up += session.bytes_up
            down += session.bytes_down
        return LiveTotals(len(self.sessions), up, down)

    def release(self, session: ClientSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_ip.release(session.peer_ip)
            kind = session.close_reason.kind if session.close_reason else Close.CLIENT_CLOSED
            self.metrics.closed(kind, session.bytes_up, session.bytes_down)
        session.log_close()
        if not self.sessions:
            self._idle.set()
        open_now = len(self.sessions)
        if (
            self._trim_timer is None
            and self._peak - open_now >= TRIM_MIN_DROP
            and open_now <= self._peak // 2
        ):
            self._trim_timer = self.loop.call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        """After a mass close: give the freed heap back to the OS (glibc keeps it otherwise)."""
        self._trim_timer = None
        before = memory.rss_bytes()
        # Closed sessions are reference cycles (session <-> backend <-> transports): only the
        # cyclic collector frees them, and it may not run for a long while when traffic is low.
        gc.collect()
        if memory.trim():
            self.trims += 1
            log.info(
                "%d sessions closed since the peak of %d: RSS %.0f -> %.0f MiB after returning free memory",
                self._peak - len(self.sessions),
                self._peak,
                before / 2**20,
                memory.rss_bytes() / 2**20,
            )
        self._peak = len(self.sessions)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        listeners = [Listener(a, True) for a in self.settings.listen]
        listeners += [Listener(a, False) for a in self.settings.direct_tls_listen]
        for listener, sock in bind(listeners, self.inherited, self.reuse_port):
            server = await self.loop.create_server(
                partial(ClientSession, self, listener), sock=sock, backlog=1024
            )
            self._servers.append(server)
        log.info(
            "bbproxy ready: %s; backend %s; domains %s; TLS >= %s",
            ", ".join(listener.name for listener in listeners),
            self.settings.backend,
            ", ".join(self.settings.domains),
            self.settings.min_tls,
        )

    def bound_ports(self) -> list[int]:
        """The ports actually bound, in listener order (useful with port 0)."""
        return [int(sock.getsockname()[1]) for server in self._servers for sock in server.sockets]

    def reload(self) -> None:
        """SIGHUP: re-read certificates for new handshakes; keep the old ones if that fails."""
        notify.send("RELOADING=1")
        try:
            self.contexts = load_contexts(self.settings)
        except CertificateError as exc:
            log.error("reload refused, still serving the previous certificates: %s", exc)
        else:
            log.info("certificates reloaded")
            expiry.watch(self.settings, self.metrics, datetime.now(UTC))
        try:
            fingerprints.use(fingerprints.load(self.settings.fingerprints))
        except fingerprints.FingerprintTableError as exc:
            log.error("fingerprint names not reloaded, still using the previous ones: %s", exc)
        notify.send("READY=1")

    async def close_listeners(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve_until_stopped(self) -> None:
        """Drain: stop accepting at once, let sessions go on for a grace period, then end them."""
        await self._stopping.wait()
        notify.send("STOPPING=1")
        for server in self._servers:
            server.close()  # a restarted instance can bind now
        grace = self.settings.limits.shutdown_grace
        if self.sessions:
            log.info(
                "draining: listeners closed, %d session(s) may go on for %.0f s", len(self.sessions), grace
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
        if self.sessions:
            log.info("ending %d session(s) with system-shutdown", len(self.sessions))
            for session in list(self.sessions):
                session.shutdown("system-shutdown", "the server is restarting, please reconnect")
            try:
                async with asyncio.timeout(FLUSH_GRACE):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("%d session(s) did not close in time", len(self.sessions))
        for server in self._servers:
            await server.wait_closed()
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        log.info("stopped")


async def run(
    settings: Settings,
    contexts: TlsContexts,
    on_ready: Callable[[], object] | None = None,
    reuse_port: bool = False,
    metrics: Metrics | NullMetrics | None = None,
    worker: int = 0,
    inherited: list[socket.socket] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; ``on_ready`` (default: sd_notify READY=1) once listening.

    With metrics, worker N serves them on metrics_listen's port + N: each worker process
    has its own counters.
    """
    loop = asyncio.get_running_loop()
    server = ProxyServer(
        settings, contexts, loop, reuse_port=reuse_port, metrics=metrics, inherited=inherited
    )
    await server.start()
    metrics_server = None
    if isinstance(metrics, Metrics) and settings.metrics_listen is not None:
        address = Address(settings.metrics_listen.host, settings.metrics_listen.port + worker)
        try:
            metrics_server = await serve_metrics(metrics, address.host, address.port)
        except OSError as exc:
            await server.close_listeners()
            raise ListenError(
                f"cannot listen on {address} (metrics): {(exc.strerror or str(exc)).lower()}"
            ) from None
        log.info("metrics on http://%s/metrics", address)
    loop.add_signal_handler(signal.SIGTERM, server.request_stop)
    loop.add_signal_handler(signal.SIGINT, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    if on_ready is None:
        notify.send("READY=1")
    else:
        on_ready()
    await server.serve_until_stopped()
    if metrics_server is not None:  # last, so the drain itself can be watched
        metrics_server.close()
        await metrics_server.wait_closed()
