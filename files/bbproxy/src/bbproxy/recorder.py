"""What the proxy calls on every connection event: the :class:`Recorder` interface, and
:class:`NullMetrics`, the recorder that does nothing (metrics off, the default).

The real one is :class:`bbproxy.metrics.Metrics`; this module needs no prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .closing import Close


@dataclass(frozen=True, slots=True)
class LiveTotals:
    """The sessions still open, as the proxy sees them at scrape time."""

    active: int = 0
    bytes_up: int = 0  # client -> backend, plaintext after TLS
    bytes_down: int = 0  # backend -> client


@dataclass(frozen=True, slots=True)
class CertExpiry:
    """When one served chain breaks (Unix times), for the certificate gauges; labels from the
    configuration only: ``chain`` is default, domain or legacy, ``domain`` the name of a
    ``[certificates."DOMAIN"]`` chain (else empty), ``key_type`` rsa, ecdsa, ... (bbproxy.x509)."""

    chain: str
    domain: str
    key_type: str
    leaf_not_after: float  # the leaf's notAfter
    chain_not_after: float  # the earliest notAfter of any certificate served with it


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

    def certificates(self, expiries: tuple[CertExpiry, ...]) -> None:
        """The chains now served (at start and after each reload): replaces the previous ones."""


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

    def legacy_client(self, family: str) -> None:
        pass

    def handshake_failed(self, listener: str, reason: str) -> None:
        pass

    def backend_failed(self) -> None:
        pass

    def closed(self, reason: Close, bytes_up: int = 0, bytes_down: int = 0) -> None:
        pass

    def set_live_source(self, source: Callable[[], LiveTotals]) -> None:
        pass

    def certificates(self, expiries: tuple[CertExpiry, ...]) -> None:
        pass
