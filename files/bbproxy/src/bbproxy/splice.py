"""Getting a spliced session (``tls.routing = "legacy-only"``, a modern ClientHello) to Prosody's TLS.

SPLICING: connect to ``tls.backend`` (bounded by ``backend_connect_timeout``); with ``tls.splice =
"starttls"`` send the PROXY header (``send_proxy_protocol``) and do STARTTLS with Prosody first
(backend.py's :func:`~bbproxy.backend.starttls`, bounded by ``backend_answer_timeout``); then
replay the client's ClientHello (and whatever came after it while waiting) and hand the session
to its relay's SPLICE state. If any step fails, the session falls back to this proxy's TLS: never
worse than terminate-all. The handshake timeout runs through all of it (session.py).

The splice acts for its relay (relay.py's Relay, a :class:`SpliceRelay`); it imports nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .backend import BackendConnection, proxy_header, starttls
from .closing import describe
from .host import State

if TYPE_CHECKING:
    from .config import Address
    from .host import RelayHost

# The session's logger: the splice's lines are the session's (same name, same format as ever).
log = logging.getLogger("bbproxy.session")


class SpliceRelay(Protocol):
    """What the splice needs of its relay (relay.Relay)."""

    session: RelayHost
    backend: BackendConnection | None
    bytes_up: int

    async def open_backend(
        self, address: Address, waiting: State, failed: Callable[[Exception], None]
    ) -> BackendConnection | None: ...


class Splice:
    """SPLICING, from the routed ClientHello to SPLICE (or to our own TLS, if Prosody's fails)."""

    __slots__ = ("_early", "relay")

    def __init__(self, relay: SpliceRelay, hello: bytes) -> None:
        self.relay = relay
        self._early = hello  # the ClientHello, and anything after it, until Prosody can take it

    def early(self, data: bytes | memoryview) -> None:
        self._early += data

    def start(self, sni: str | None) -> None:
        """Connect (a task of the session). For Prosody's STARTTLS, the domain the client asked
        for (Prosody picks its certificate by it): its stream's, else its SNI if served, else the
        first served domain."""
        session = self.relay.session
        assert session.transport is not None
        session.transport.pause_reading()  # until Prosody's TLS can take the bytes
        domains = session.server.settings.domains
        sni = sni.rstrip(".").lower() if sni else None
        session.start_task(self._connect(session.domain or (sni if sni in domains else domains[0])))

    async def _connect(self, domain: str) -> None:
        relay = self.relay
        session = relay.session
        settings = session.server.settings
        backend = await relay.open_backend(settings.tls.backend, State.SPLICING, self._failed)
        if backend is None:
            return
        # The handshake timer goes on: the handshake is Prosody's now, but until it is under way
        # (see Relay.from_backend) a stalled client is still ours to end.
        relay.backend = backend  # closed with the session from here on
        if settings.tls.splice == "starttls":
            version = settings.send_proxy_protocol
            header = proxy_header(session.transport, version) if version != "off" else b""
            limits = settings.limits
            failure = await starttls(
                backend, header, domain, limits.backend_answer_timeout, limits.pre_tls_max_bytes
            )
            if failure is not None:
                relay.backend = None
                backend.close()
                if session.state is State.SPLICING:
                    self._failed(failure)
                return
        session.state = State.SPLICE
        session.spliced()
        early, self._early = self._early, b""
        relay.bytes_up += len(early)
        backend.write(early)
        if session.transport is not None:
            session.transport.resume_reading()

    def _failed(self, why: Exception | str) -> None:
        """Never worse than terminate-all: do the TLS here and relay in plaintext."""
        session = self.relay.session
        session.server.backend_failed()
        log.warning(
            "conn=%d Prosody's TLS port %s unavailable (%s): terminating this client's TLS here",
            session.conn_id,
            session.server.settings.tls.backend,
            describe(why) if isinstance(why, Exception) else why,
        )
        early, self._early = self._early, b""
        session.terminate(early)
        transport = session.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
