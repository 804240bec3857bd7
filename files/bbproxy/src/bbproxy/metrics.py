"""What the proxy counts for Prometheus: one :class:`Recorder` interface, two implementations.

Off by default. With ``metrics_listen`` set the proxy creates a :class:`Metrics`, otherwise
a :class:`NullMetrics` whose methods do nothing; both are a :class:`Recorder`, so the session
code calls them unconditionally. ``prometheus-client`` is an optional extra
(``pip install 'bbproxy[metrics]'``); it is imported only when a :class:`Metrics` is created,
which raises :class:`MetricsUnavailable` if it is missing. This module imports without it.

Cheap on the hot path: the methods add to plain ints and dicts (no locks, no label lookups
in the client library: 0.5-2 µs a call), once per connection event, never per relayed chunk.
Bytes relayed and open connections are read from the proxy only when Prometheus scrapes
(:meth:`Metrics.set_live_source`). Everything, scrapes included, runs on the event loop
thread, so each scrape sees one consistent state and no thread is started.

The metrics, their labels and PromQL for common questions: docs/metrics.md. The label
vocabularies are :mod:`bbproxy.metric_labels`; the HTTP endpoint is :mod:`bbproxy.metrics_http`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from . import __version__, expiry_metrics
from .closing import Close
from .metric_labels import (
    DURATION_BUCKETS,
    DURATION_LABELS,
    LEGACY_UNKNOWN,
    MAX_CIPHERS,
    MAX_LEGACY_SERIES,
    MAX_LISTENERS,
    FirstValues,
    handshake_failure_reason,
    refuse_reason,
    tls_route,
    tls_version,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

UNAVAILABLE_MESSAGE: Final = "metrics need prometheus-client: pip install 'bbproxy[metrics]'"


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


# -- the interface the proxy calls -------------------------------------------------------


class Recorder(Protocol):
    """What the proxy calls on every connection event; :class:`NullMetrics` and :class:`Metrics`
    subclass it, so mypy checks that each has every method with this signature."""

    __slots__ = ()

    def accepted(self, listener: str) -> None:
        """A connection was accepted on ``listener`` (refused ones too)."""

    def refused(self, listener: str, reason: str) -> None:
        """An accepted connection was turned away at once (limits, shutting down)."""

    def handshake(self, listener: str, version: str, cipher: str, seconds: float) -> None:
        """A TLS handshake completed after ``seconds``."""

    def routed(self, listener: str, route: str) -> None:
        """A ClientHello was routed: our TLS (terminate), Prosody's (passthrough), or refused."""

    def legacy_client(self, family: str, outcome: str) -> None:
        """A legacy hello (``TLSv1/<family>``, or ``unknown``) was ``served``, ``refused`` or
        ``failed``; the caller bounds the families (metric_labels.MAX_FAMILIES)."""

    def handshake_failed(self, listener: str, reason: str) -> None:
        """A TLS handshake failed; ``reason`` is the OpenSSL reason or ``timeout``."""

    def backend_failed(self) -> None:
        """A connection to the backend failed."""

    def closed(self, reason: Close, bytes_up: int = 0, bytes_down: int = 0) -> None:
        """A session ended; its bytes move from the live totals to the closed ones."""

    def set_live_source(self, source: Callable[[], LiveTotals]) -> None:
        """Use ``source()`` at scrape time for the sessions still open."""

    def certificates(self, expiries: tuple[expiry_metrics.CertExpiry, ...]) -> None:
        """The chains served now (at start and after each reload), replacing the previous ones."""


class NullMetrics(Recorder):
    """What the proxy uses when metrics are off: every call does nothing."""

    __slots__ = ()

    def accepted(self, listener: str) -> None:
        pass

    def refused(self, listener: str, reason: str) -> None:
        pass

    def handshake(self, listener: str, version: str, cipher: str, seconds: float) -> None:
        pass

    def routed(self, listener: str, route: str) -> None:
        pass

    def legacy_client(self, family: str, outcome: str) -> None:
        pass

    def handshake_failed(self, listener: str, reason: str) -> None:
        pass

    def backend_failed(self) -> None:
        pass

    def closed(self, reason: Close, bytes_up: int = 0, bytes_down: int = 0) -> None:
        pass

    def set_live_source(self, source: Callable[[], LiveTotals]) -> None:
        pass

    def certificates(self, expiries: tuple[expiry_metrics.CertExpiry, ...]) -> None:
        pass


class Metrics(Recorder):
    """The real thing: counts in plain ints, exposed through a registry of its own.

    Call every method from the event loop thread (the proxy has no other).
    """

    __slots__ = (
        "_accepted",
        "_backend_failures",
        "_bytes_down",
        "_bytes_up",
        "_certificates",
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
        self._certificates: tuple[expiry_metrics.CertExpiry, ...] = ()
        self._listeners = FirstValues(MAX_LISTENERS)
        self._ciphers = FirstValues(MAX_CIPHERS)
        self._routes: dict[tuple[str, str], int] = {}
        self._legacy_clients: dict[tuple[str, str], int] = {}
        self._family_labels = FirstValues(MAX_LEGACY_SERIES, (LEGACY_UNKNOWN,))
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
        key = (self._listeners(listener), tls_route(route))
        self._routes[key] = self._routes.get(key, 0) + 1

    def legacy_client(self, family: str, outcome: str) -> None:
        key = (self._family_labels(family), outcome)
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

    def certificates(self, expiries: tuple[expiry_metrics.CertExpiry, ...]) -> None:
        self._certificates = tuple(expiries)

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
            "Legacy (below TLS 1.2) hellos by highest version/fingerprint family and outcome (served, "
            "refused, failed); unnamed ones as TLSv1/unknown:<JA4> if served, else as 'unknown'.",
            ("family", "outcome"),
            self._legacy_clients.items(),
        )
        duration = HistogramMetricFamily(
            "bbproxy_handshake_duration_seconds", "Time to complete a TLS handshake.", labels=()
        )
        if live is not None:
            cumulative, buckets = 0, []
            for bound, count in zip(DURATION_LABELS, self._duration_buckets, strict=True):
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
        yield from expiry_metrics.families(None if live is None else self._certificates)
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
