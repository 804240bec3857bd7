"""Why a session ended: one typed reason from the place it ends to the log line and the metric.

:class:`Close` is the vocabulary: its value is the label of
``bbproxy_connections_closed_total{reason}``. :class:`CloseReason` adds the detail (an OpenSSL
reason, the refusal, the RFC 6120 condition), and renders it as the log line's ``close=...``.
The rendering is unchanged from the strings the proxy wrote before, so log readers and
``bbproxy census`` see the same text. No module imports this one's dependents: no cycles.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import Enum


class Close(Enum):
    CLIENT_EOF = "client-eof"  # the client closed its side (TCP FIN)
    CLIENT_CLOSED = "client-closed"  # the connection went away without an error
    CLIENT_CLOSE_NOTIFY = "client-close-notify"  # the client ended TLS cleanly
    CLIENT_CLOSED_STREAM = "client-closed-stream"  # </stream:stream> before TLS
    CLIENT_ERROR = "client-error"  # a socket error on the client side
    PRE_TLS_TIMEOUT = "pre-tls-timeout"  # no <starttls/> in time
    HOST_UNKNOWN = "host-unknown"  # the stream header named a domain we do not serve
    STREAM_ERROR = "stream-error"  # any other RFC 6120 stream error before TLS (detail: condition)
    STARTTLS_INJECTION = "starttls-injection"  # bytes pipelined behind <starttls/> (CVE-2011-0411)
    TLS_FAILED = "tls-failed"  # the handshake failed (see bbproxy_handshake_failures_total)
    TLS_REFUSED = "tls-refused"  # refused by policy before or at the handshake (an alert)
    TLS_ERROR = "tls-error"  # a TLS error after the handshake
    BACKEND_UNAVAILABLE = "backend-unavailable"  # Prosody could not be reached
    BACKEND_SILENT = "backend-silent"  # Prosody accepted and never answered the client's header
    BACKEND_CLOSED = "backend-closed"  # Prosody closed the stream
    BACKEND_ERROR = "backend-error"  # a socket error on the Prosody side
    SERVER_SHUTDOWN = "server-shutdown"  # stop or drain
    REFUSED = "refused"  # refused at accept (detail: bbproxy_connections_refused_total's reason)


# Pre-TLS outcomes (negotiation.Outcome.reason) with a reason of their own; the other RFC 6120
# conditions are STREAM_ERROR with the condition as detail.
_NEGOTIATION: dict[str, Close] = {
    "host-unknown": Close.HOST_UNKNOWN,
    "starttls-injection": Close.STARTTLS_INJECTION,
    "client-closed-stream": Close.CLIENT_CLOSED_STREAM,
}


@dataclass(frozen=True, slots=True)
class CloseReason:
    kind: Close
    detail: str = ""

    @classmethod
    def of_negotiation(cls, reason: str) -> CloseReason:
        """The reason a pre-TLS dialogue ended with (a condition or one of the outcomes above)."""
        kind = _NEGOTIATION.get(reason)
        return cls(kind) if kind is not None else cls(Close.STREAM_ERROR, reason)

    def __str__(self) -> str:
        if self.kind is Close.REFUSED:
            return f"refused-{self.detail}"
        if self.kind is Close.STREAM_ERROR:
            return self.detail or self.kind.value
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


def describe(exc: BaseException | None) -> str:
    """A short, log-safe detail for an exception: OpenSSL's reason, ``timeout``, an errno text."""
    if exc is None:
        return "-"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return exc.__class__.__name__
