"""The metrics' label vocabularies: every raw value mapped to a bounded set (docs/metrics.md).

Pure functions and constants, no prometheus-client: a flood of odd clients cannot grow the
number of series, because whatever is not in a vocabulary becomes ``other``, and labels that
take free text (listener, cipher, legacy family) keep only their first distinct values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from .closing import Close

OTHER: Final = "other"

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
# bbproxy_legacy_clients_total{family, outcome}. A family named by the fingerprint table has its own
# series whatever the outcome (the table is finite: clients cannot mint names). An unnamed one has its
# own series only for a served handshake, and only the first MAX_FAMILIES of them; a refused or failed
# unnamed hello costs the client no handshake, so it counts under "unknown" (the log line has it).
MAX_FAMILIES: Final = 64
MAX_LEGACY_SERIES: Final = 1024  # the recorder's own guard, far above what the server hands it
LEGACY_SERVED: Final = "served"
LEGACY_REFUSED: Final = "refused"
LEGACY_FAILED: Final = "failed"
LEGACY_UNKNOWN: Final = "unknown"
ROUTES: Final = frozenset({"terminate", "passthrough", "refused"})

# Buckets for handshake durations: a LAN handshake takes ~1 ms, a BlackBerry on a slow
# mobile link seconds; handshake_timeout (default 30 s) ends the rest.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

DURATION_LABELS: Final = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")  # the "le" values


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


def tls_route(raw: str) -> str:
    """``terminate``, ``passthrough``, ``refused`` -> itself, anything else ``other``."""
    return raw if raw in ROUTES else OTHER


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
