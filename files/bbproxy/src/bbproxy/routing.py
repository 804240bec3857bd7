"""Who gets which TLS: a pure decision from the ClientHello and the policy (sans-IO).

``route(hello, policy, legacy_allowed)`` says what happens to a client whose ClientHello has just
been read, before any TLS state exists: refuse it with an alert, terminate its TLS here, or splice
it, still encrypted, to Prosody's own TLS port. No socket, no loop, no clock: the session carries
out the decision (session.py), and tests/test_route.py checks the whole table with Hypothesis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from .clienthello import TLS_1_2, ClientHello
from .config import TlsPolicy
from .fingerprints import identify

# Fatal alerts (RFC 5246 §7.2) sent before any TLS state exists: protocol_version ("not at this
# version, not from here"), illegal_parameter (an SNI host name that is not ASCII) and
# handshake_failure (a hello this proxy refuses to read: clienthello.ClientHelloRefused).
ALERT_PROTOCOL_VERSION: Final = bytes((0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46))
ALERT_ILLEGAL_PARAMETER: Final = bytes((0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x2F))
ALERT_HANDSHAKE_FAILURE: Final = bytes((0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28))


class Route(Enum):
    TERMINATE = "terminate"  # our TLS, then a plaintext backend connection
    PASSTHROUGH = "passthrough"  # the hello replayed to Prosody's TLS port, bytes spliced
    REFUSED = "refused"  # an alert, before any TLS state exists


@dataclass(frozen=True, slots=True)
class Refusal:
    alert: bytes
    failure: str  # bbproxy_handshake_failures_total's reason (metrics: LEGACY_NOT_ALLOWED, ...)
    what: str  # the fingerprint line's lead
    reason: str  # the close reason's detail


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    legacy: bool  # the client needs legacy TLS (and gets the legacy chain if there is one)
    refusal: Refusal | None = None


SNI_NOT_ASCII: Final = Refusal(
    ALERT_ILLEGAL_PARAMETER,
    "sni-not-ascii",
    "handshake refused: SNI host name is not ASCII",
    "SNI host name is not ASCII",
)
LEGACY_NOT_ALLOWED: Final = Refusal(
    ALERT_PROTOCOL_VERSION,
    "legacy-not-allowed",
    "legacy TLS refused: address not in tls.legacy_networks",
    "legacy TLS not allowed from this address",
)


def is_legacy(hello: ClientHello, policy: TlsPolicy) -> bool:
    """Offers nothing from TLS 1.2 up (versions it does not know ignored), or is named in
    ``tls.legacy_ja3``."""
    if hello.max_version < TLS_1_2:
        return True
    return bool(policy.legacy_ja3) and identify(hello).ja3 in policy.legacy_ja3


def route(hello: ClientHello, policy: TlsPolicy, legacy_allowed: Callable[[], bool]) -> Decision:
    """What to do with a client whose ClientHello is ``hello``.

    ``legacy_allowed()`` says whether the client's address is in ``tls.legacy_networks``; it is
    asked only for legacy clients.
    """
    legacy = is_legacy(hello, policy)
    if hello.sni is not None and not hello.sni.isascii():
        # RFC 6066 host names are ASCII (IDNs as A-labels). CPython's SNI callback cannot even
        # decode such a name and prints a traceback, so it is refused here, with a reason.
        return Decision(Route.REFUSED, legacy, SNI_NOT_ASCII)
    if legacy and not legacy_allowed():
        return Decision(Route.REFUSED, legacy, LEGACY_NOT_ALLOWED)
    if legacy or policy.routing == "terminate-all":
        return Decision(Route.TERMINATE, legacy)
    return Decision(Route.PASSTHROUGH, legacy)
