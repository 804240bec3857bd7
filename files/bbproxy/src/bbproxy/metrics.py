"""Prometheus metrics: what the proxy counts, and a small asyncio ``/metrics`` endpoint.

Off by default. With ``metrics_listen`` set the proxy creates a :class:`Metrics`, otherwise
a :class:`NullMetrics` whose methods do nothing; both have the same methods, so the session
code calls them unconditionally. ``prometheus-client`` is an optional extra
(``pip install 'bbproxy[metrics]'``); it is imported only when a :class:`Metrics` is created,
which raises :class:`MetricsUnavailable` if it is missing. This module imports without it.

Cheap on the hot path: the methods add to plain ints and dicts (no locks, no label lookups
in the client library: 0.5-2 µs a call), once per connection event, never per relayed chunk.
Bytes relayed and open connections are read from the proxy only when Prometheus scrapes
(:meth:`Metrics.set_live_source`). Everything, scrapes included, runs on the event loop
thread, so each scrape sees one consistent state and no thread is started.

Metrics (a custom collector on a registry of its own, not the client's global one):

======================================================  =========  ======================================
name                                                    type       meaning
======================================================  =========  ======================================
``bbproxy_connections_accepted_total{listener}``        counter    TCP connections accepted (refused too)
``bbproxy_connections_refused_total{listener,reason}``  counter    turned away at accept, by reason
``bbproxy_connections_active``                          gauge      client connections open now
``bbproxy_handshakes_total{listener,version,cipher}``   counter    TLS handshakes completed
``bbproxy_handshake_failures_total{listener,reason}``   counter    TLS handshakes failed, by cause
``bbproxy_handshake_duration_seconds``                  histogram  handshake time, 1 ms .. 30 s buckets
``bbproxy_tls_routes_total{listener,route}``            counter    ClientHellos: ``terminate`` (our TLS),
                                                                   ``passthrough`` (Prosody's), ``refused``
``bbproxy_legacy_clients_total{family}``                counter    legacy handshakes by ``TLSv1/<name>``;
                                                                   refused as ``refused``, failed ``failed``
``bbproxy_relayed_bytes_total{direction}``              counter    bytes, ``client_to_backend`` and
                                                                   ``backend_to_client`` (plaintext; TLS
                                                                   records for passed-through sessions)
``bbproxy_backend_connect_failures_total``              counter    failed connections to Prosody
``bbproxy_connections_closed_total{reason}``            counter    closed connections, by reason
``bbproxy_build_info{version}``                         gauge      always 1; the running version
``process_*``                                           various    CPU, memory, open fds of the process
======================================================  =========  ======================================

Every label has a bounded set of values, so a flood of odd clients cannot grow the number
of series: raw reasons are mapped to the fixed vocabularies below and anything else
becomes ``other``; ``version`` is ``TLSv1``, ``TLSv1.1``, ``TLSv1.2``, ``TLSv1.3`` or
``other``; ``listener`` and ``cipher`` keep the first 32/64 distinct values (ciphers come
from the server's own list, so that is never reached in practice); ``family`` is
``refused`` for every refused legacy ClientHello (a refusal costs the sender no handshake, so
varying the cipher order would otherwise make a new series per hello), and for completed
legacy handshakes the first 64 fingerprints, then ``other`` (a device kind is one family;
each new one costs a full handshake from an address in ``tls.legacy_networks``);
``route`` is one of :data:`ROUTES`. Handshakes, their duration and failures count only the
TLS this proxy does: a passed-through session's handshake is Prosody's.

* refused ``reason``: :data:`REFUSE_REASONS` (the proxy's admission reasons).
* handshake failure ``reason``: ``timeout``, ``eof`` (the client left), ``legacy-not-allowed``
  (a legacy ClientHello from outside ``tls.legacy_networks``), ``bad-sni`` (an SNI host name
  that is not ASCII), ``fragmented-hello`` (a ClientHello split over more than 512 records),
  ``protocol-version``
  (no TLS version in common: SSLv3-only clients, or a client below ``min_tls``),
  ``no-shared-cipher``, ``certificate-rejected`` (the client did not accept our
  certificate), ``not-tls`` (plain text or HTTP on a TLS port), ``client-alert`` (another
  alert from the client), ``other``. The input is an OpenSSL reason such as
  ``WRONG_VERSION_NUMBER``, optionally behind ``tls-failed:``.
* close ``reason``: :class:`bbproxy.closing.Close`, one label per way a session ends (the
  session passes the enum, so every reason it can produce has its own label).

Questions and their PromQL:

* How many users still need TLS 1.0? Handshakes per day by version, and TLS 1.0's share::

      sum by (version) (increase(bbproxy_handshakes_total[1d]))
      sum(rate(bbproxy_handshakes_total{version="TLSv1"}[1d])) / sum(rate(bbproxy_handshakes_total[1d]))

  These count connections, not people (a phone that reconnects ten times counts ten); the
  one log line per connection has the peer address and TLS version when distinct clients
  matter. Labels never carry addresses or JIDs: they would make series without bound.
* Why do handshakes fail? ``sum by (reason) (increase(bbproxy_handshake_failures_total[1h]))``
* Handshake latency, 95th percentile::

      histogram_quantile(0.95, sum by (le) (rate(bbproxy_handshake_duration_seconds_bucket[5m])))

* Throughput: ``sum by (direction) (rate(bbproxy_relayed_bytes_total[5m]))``
* Is Prosody reachable? ``increase(bbproxy_backend_connect_failures_total[5m]) > 0``
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

from . import __version__
from .closing import Close

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("bbproxy.metrics")

UNAVAILABLE_MESSAGE: Final = "metrics need prometheus-client: pip install 'bbproxy[metrics]'"

OTHER: Final = "other"

# Buckets for handshake durations: a LAN handshake takes ~1 ms, a BlackBerry on a slow
# mobile link seconds; handshake_timeout (default 30 s) ends the rest.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_BUCKET_LABELS: Final = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")  # the "le" values

TLS_VERSIONS: Final = frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"})

REFUSE_REASONS: Final = frozenset({"max-connections", "shutting-down", "per-ip-connections", "per-ip-rate"})

# bbproxy_connections_closed_total's labels: closing.Close, one value each (commented there).
CLOSE_REASONS: Final = frozenset(close.value for close in Close)

_HANDSHAKE_FAILURES: Final = {
    "TIMEOUT": "timeout",
    "EOF": "eof",
    "UNEXPECTED_EOF_WHILE_READING": "eof",
    "CLIENT_EOF": "eof",
    "CLIENT_CLOSED": "eof",
    "CONNECTION_RESET_BY_PEER": "eof",
    "BROKEN_PIPE": "eof",
    "UNSUPPORTED_PROTOCOL": "protocol-version",
    "VERSION_TOO_LOW": "protocol-version",
    "VERSION_TOO_HIGH": "protocol-version",
    "WRONG_SSL_VERSION": "protocol-version",
    "NO_PROTOCOLS_AVAILABLE": "protocol-version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol-version",
    "INAPPROPRIATE_FALLBACK": "protocol-version",
    "TLSV1_ALERT_INAPPROPRIATE_FALLBACK": "protocol-version",
    "NO_SHARED_CIPHER": "no-shared-cipher",
    "NO_CIPHERS_AVAILABLE": "no-shared-cipher",
    "NO_SHARED_SIGNATURE_ALGORITHMS": "no-shared-cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no-shared-cipher",
    "NO_SUITABLE_KEY_SHARE": "no-shared-cipher",
    "NO_SHARED_GROUPS": "no-shared-cipher",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "no-shared-cipher",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": "no-shared-cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate-rejected",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate-rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate-rejected",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate-rejected",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate-rejected",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "certificate-rejected",
    "WRONG_VERSION_NUMBER": "not-tls",
    "HTTP_REQUEST": "not-tls",
    "HTTPS_PROXY_REQUEST": "not-tls",
    "UNKNOWN_PROTOCOL": "not-tls",
    "PACKET_LENGTH_TOO_LONG": "not-tls",
    "RECORD_LENGTH_MISMATCH": "not-tls",
    "LEGACY_NOT_ALLOWED": "legacy-not-allowed",
    "SNI_NOT_ASCII": "bad-sni",
    "FRAGMENTED_HELLO": "fragmented-hello",
}
_ALERT_PREFIXES: Final = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")

HANDSHAKE_FAILURE_REASONS: Final = frozenset(_HANDSHAKE_FAILURES.values()) | {"client-alert"}

_LABEL_VALUE_RE: Final = re.compile(r"[\w.:/\[\]@+-]{1,64}\Z", re.ASCII)
MAX_LISTENERS: Final = 32
MAX_CIPHERS: Final = 64
MAX_FAMILIES: Final = 64  # distinct legacy ClientHello fingerprints with their own series
# The families of every refused and every failed legacy ClientHello: neither gets a series of its own.
LEGACY_REFUSED: Final = "refused"
LEGACY_FAILED: Final = "failed"
ROUTES: Final = frozenset({"terminate", "passthrough", "refused"})

# The scrape endpoint's bounds: a request head fits in 8 KiB and arrives in 10 s.
MAX_REQUEST_BYTES: Final = 8192
REQUEST_TIMEOUT: Final = 10.0
MAX_SCRAPERS: Final = 8  # concurrent scrape connections; more are closed at once
_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest() writes


class MetricsUnavailable(RuntimeError):
    """Metrics were enabled but prometheus-client is not installed."""

    def __init__(self) -> None:
        super().__init__(UNAVAILABLE_MESSAGE)


@dataclass(frozen=True, slots=True)
class LiveTotals:
    """The sessions still open, as the proxy sees them at scrape time."""

    active: int = 0
    bytes_up: int = 0  # client -> backend, plaintext after TLS
    bytes_down: int = 0  # backend -> client


def _no_live_sessions() -> LiveTotals:
    return LiveTotals()


# -- label normalisation (pure functions, so tests and the README can rely on them) --------


def refuse_reason(raw: str) -> str:
    """``max-connections``, ``refused-per-ip-rate``, ... -> a :data:`REFUSE_REASONS` value or ``other``."""
    key = raw.partition(":")[0].strip().lower().removeprefix("refused-")
    return key if key in REFUSE_REASONS else OTHER


def handshake_failure_reason(raw: str) -> str:
    """An OpenSSL reason (``WRONG_VERSION_NUMBER``, ``tls-failed: timeout``) -> its category."""
    detail = raw.partition(":")[2] if ":" in raw else raw
    key = detail.strip().upper().replace(" ", "_").replace("-", "_")
    category = _HANDSHAKE_FAILURES.get(key)
    if category is not None:
        return category
    if key.startswith(_ALERT_PREFIXES):
        return "client-alert"
    return OTHER


def tls_version(raw: str) -> str:
    """``ssl.SSLObject.version()`` -> itself if it is a TLS version, else ``other``."""
    return raw if raw in TLS_VERSIONS else OTHER


class FirstValues:
    """Keep the first ``limit`` distinct well-formed values; later new ones are ``other``.

    ``reserved`` values (and ``other``) pass through without taking a place.
    """

    __slots__ = ("_limit", "_reserved", "_seen")

    def __init__(self, limit: int, reserved: Iterable[str] = ()) -> None:
        self._limit = limit
        self._reserved = frozenset((OTHER, *reserved))
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen or value in self._reserved:
            return value
        if len(self._seen) >= self._limit or not _LABEL_VALUE_RE.match(value):
            return OTHER
        self._seen.add(value)
        return value


# -- the interface the proxy calls -------------------------------------------------------


class NullMetrics:
    """What the proxy uses when metrics are off: every call does nothing."""

    __slots__ = ()

    def accepted(self, listener: str) -> None:
        """A connection was accepted on ``listener`` (refused ones too)."""

    def refused(self, listener: str, reason: str) -> None:
        """An accepted connection was turned away at once (limits, shutting down)."""

    def handshake(self, listener: str, version: str, cipher: str, seconds: float) -> None:
        """A TLS handshake completed after ``seconds``."""

    def routed(self, listener: str, route: str) -> None:
        """A ClientHello was routed: our TLS (terminate), Prosody's (passthrough), or refused."""

    def legacy_client(self, family: str) -> None:
        """A legacy handshake completed (``TLSv1/<family>``), was refused (``refused``) or failed
        (``failed``)."""

    def handshake_failed(self, listener: str, reason: str) -> None:
        """A TLS handshake failed; ``reason`` is the OpenSSL reason or ``timeout``."""

    def backend_failed(self) -> None:
        """A connection to the backend failed."""

    def closed(self, reason: Close, bytes_up: int = 0, bytes_down: int = 0) -> None:
        """A session ended; its bytes move from the live totals to the closed ones."""

    def set_live_source(self, source: Callable[[], LiveTotals]) -> None:
        """Use ``source()`` at scrape time for the sessions still open."""


class Metrics:
    """The real thing: counts in plain ints, exposed through a registry of its own.

    Call every method from the event loop thread (the proxy has no other).
    """

    __slots__ = (
        "_accepted",
        "_backend_failures",
        "_bytes_down",
        "_bytes_up",
        "_ciphers",
        "_closed",
        "_duration_buckets",
        "_duration_sum",
        "_family_labels",
        "_handshake_failures",
        "_handshakes",
        "_legacy_clients",
        "_listeners",
        "_live",
        "_refused",
        "_routes",
        "_version",
        "registry",
    )

    def __init__(self, version: str = __version__) -> None:
        try:
            from prometheus_client import CollectorRegistry, ProcessCollector
        except ImportError:
            raise MetricsUnavailable() from None
        self._version = version
        self._accepted: dict[str, int] = {}
        self._refused: dict[tuple[str, str], int] = {}
        self._handshakes: dict[tuple[str, str, str], int] = {}
        self._handshake_failures: dict[tuple[str, str], int] = {}
        self._duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self._duration_sum = 0.0
        self._backend_failures = 0
        self._closed: dict[str, int] = {}
        self._bytes_up = 0  # of closed sessions
        self._bytes_down = 0
        self._live: Callable[[], LiveTotals] = _no_live_sessions
        self._listeners = FirstValues(MAX_LISTENERS)
        self._ciphers = FirstValues(MAX_CIPHERS)
        self._routes: dict[tuple[str, str], int] = {}
        self._legacy_clients: dict[str, int] = {}
        self._family_labels = FirstValues(MAX_FAMILIES, (LEGACY_REFUSED, LEGACY_FAILED))
        self.registry: CollectorRegistry = CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def accepted(self, listener: str) -> None:
        key = self._listeners(listener)
        self._accepted[key] = self._accepted.get(key, 0) + 1

    def refused(self, listener: str, reason: str) -> None:
        key = (self._listeners(listener), refuse_reason(reason))
        self._refused[key] = self._refused.get(key, 0) + 1

    def handshake(self, listener: str, version: str, cipher: str, seconds: float) -> None:
        key = (self._listeners(listener), tls_version(version), self._ciphers(cipher))
        self._handshakes[key] = self._handshakes.get(key, 0) + 1
        if not 0.0 <= seconds <= 86400.0:  # NaN, negative or absurd: keep the sum usable
            seconds = 0.0 if not seconds > 0.0 else 86400.0
        self._duration_buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._duration_sum += seconds

    def routed(self, listener: str, route: str) -> None:
        key = (self._listeners(listener), route if route in ROUTES else OTHER)
        self._routes[key] = self._routes.get(key, 0) + 1

    def legacy_client(self, family: str) -> None:
        key = self._family_labels(family)
        self._legacy_clients[key] = self._legacy_clients.get(key, 0) + 1

    def handshake_failed(self, listener: str, reason: str) -> None:
        key = (self._listeners(listener), handshake_failure_reason(reason))
        self._handshake_failures[key] = self._handshake_failures.get(key, 0) + 1

    def backend_failed(self) -> None:
        self._backend_failures += 1

    def closed(self, reason: Close, bytes_up: int = 0, bytes_down: int = 0) -> None:
        key = reason.value
        self._closed[key] = self._closed.get(key, 0) + 1
        self._bytes_up += max(bytes_up, 0)
        self._bytes_down += max(bytes_down, 0)

    def set_live_source(self, source: Callable[[], LiveTotals]) -> None:
        self._live = source

    def _families(self, live: LiveTotals | None) -> Iterator[Metric]:
        """Every family; with ``live`` None only their names and types (for describe())."""
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def counter(
            name: str, doc: str, labels: tuple[str, ...], values: Iterable[tuple[tuple[str, ...], int]]
        ) -> Metric:
            family = CounterMetricFamily(name, doc, labels=labels)
            if live is not None:
                for key, value in values:
                    family.add_metric(key, value)
            return family

        yield counter(
            "bbproxy_connections_accepted",
            "TCP connections accepted, including those then refused.",
            ("listener",),
            (((k,), v) for k, v in self._accepted.items()),
        )
        yield counter(
            "bbproxy_connections_refused",
            "Connections turned away at accept, by reason.",
            ("listener", "reason"),
            self._refused.items(),
        )
        active = GaugeMetricFamily("bbproxy_connections_active", "Client connections open now.")
        if live is not None:
            active.add_metric((), live.active)
        yield active
        yield counter(
            "bbproxy_handshakes",
            "TLS handshakes completed, by TLS version and cipher suite.",
            ("listener", "version", "cipher"),
            self._handshakes.items(),
        )
        yield counter(
            "bbproxy_handshake_failures",
            "TLS handshakes that failed, by cause.",
            ("listener", "reason"),
            self._handshake_failures.items(),
        )
        yield counter(
            "bbproxy_tls_routes",
            "ClientHellos routed: terminated here, passed through to Prosody's TLS, or refused.",
            ("listener", "route"),
            self._routes.items(),
        )
        yield counter(
            "bbproxy_legacy_clients",
            "Legacy (below TLS 1.2) handshakes by highest version/fingerprint family (or unknown:<JA4>); "
            "every refused one as 'refused', every failed one as 'failed'.",
            ("family",),
            (((k,), v) for k, v in self._legacy_clients.items()),
        )
        duration = HistogramMetricFamily(
            "bbproxy_handshake_duration_seconds", "Time to complete a TLS handshake.", labels=()
        )
        if live is not None:
            cumulative, buckets = 0, []
            for bound, count in zip(_BUCKET_LABELS, self._duration_buckets, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            duration.add_metric((), buckets, self._duration_sum)
        yield duration
        yield counter(
            "bbproxy_relayed_bytes",
            "Bytes relayed between clients and the backend (TLS records when passed through).",
            ("direction",),
            ()
            if live is None
            else (
                (("client_to_backend",), self._bytes_up + live.bytes_up),
                (("backend_to_client",), self._bytes_down + live.bytes_down),
            ),
        )
        yield counter(
            "bbproxy_backend_connect_failures",
            "Connections to the backend that failed.",
            (),
            [((), self._backend_failures)],
        )
        yield counter(
            "bbproxy_connections_closed",
            "Connections closed, by reason.",
            ("reason",),
            (((k,), v) for k, v in self._closed.items()),
        )
        info = GaugeMetricFamily("bbproxy_build_info", "The running bbproxy version.", labels=("version",))
        if live is not None:
            info.add_metric((self._version,), 1)
        yield info


class _Collector:
    """Reads a :class:`Metrics` at scrape time (the registry's Collector protocol)."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        live = self._metrics._live()
        return self._metrics._families(live)

    def describe(self) -> Iterator[Metric]:
        return self._metrics._families(None)


def render(metrics: Metrics) -> bytes:
    """The text exposition of ``metrics`` (what ``GET /metrics`` answers)."""
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry)


# -- the HTTP endpoint ---------------------------------------------------------------------


async def serve(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Listen for scrapes on ``host:port`` (port 0 picks one); close the server to stop.

    A deliberately small HTTP/1.x server: ``GET``/``HEAD /metrics``, 404 elsewhere, one
    request per connection, the request head bounded to :data:`MAX_REQUEST_BYTES` and
    :data:`REQUEST_TIMEOUT`, at most :data:`MAX_SCRAPERS` connections at once. It runs on
    the proxy's own loop (asyncio or uvloop), so no thread is needed.
    """
    state = _ScrapeState()
    return await asyncio.start_server(
        partial(_answer, metrics, state), host, port, limit=MAX_REQUEST_BYTES, reuse_address=True
    )


class _ScrapeState:
    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


async def _answer(
    metrics: Metrics, state: _ScrapeState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if state.active >= MAX_SCRAPERS:
        writer.close()
        return
    state.active += 1
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                response = _response(431, b"request header too large\n")
            else:
                response = _route(metrics, head)
            writer.write(response)
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass  # the scraper went away or was too slow: nothing to answer
    finally:
        state.active -= 1
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.wait_closed()


def _route(metrics: Metrics, head: bytes) -> bytes:
    request_line = head.split(b"\r\n", 1)[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"bad request\n")
    method, target = parts[0], parts[1]
    if target.split(b"?", 1)[0] != b"/metrics":
        return _response(404, b"not found; metrics are at /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n")
    try:
        body = render(metrics)
    except Exception as exc:  # a failing live source must not take the endpoint down
        log.error("metrics scrape failed: %s: %s", exc.__class__.__name__, exc)
        return _response(500, b"metrics collection failed\n")
    return _response(200, body, content_type=_CONTENT_TYPE, head_only=method == b"HEAD")


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def _response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode("ascii")
    return header + extra + b"\r\n" + (b"" if head_only else body)
