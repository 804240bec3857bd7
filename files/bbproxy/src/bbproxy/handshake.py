"""A session's TLS handshake: read the ClientHello, route on it, then run our TLS engine to the end.

HELLO reads the client's ClientHello (sans-IO, bounded in bytes and by the handshake timeout)
before any TLS state exists, and routes on it (routing.py, issue 7): a legacy client (highest
offered version below TLS 1.2) gets this proxy's TLS and the plaintext backend; with
``tls.routing = "legacy-only"`` everyone else is spliced, still encrypted, to Prosody's own
direct-TLS port (relay.py). A terminated handshake runs on a fresh TLS engine (tlsengine.py) fed
with the bytes already read; once it is complete the session hands over to its relay.

Every handshake that ends (done, refused, failed, timed out, abandoned) writes one fingerprint
line: what the client offered, so an operator can tell which device it was.

The handshake acts for its session (session.py's ClientSession, a :class:`HandshakeHost`);
this module imports nothing of the session.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from typing import TYPE_CHECKING, Final

from . import logsink
from .clienthello import TLS_1_2, ClientHello, ClientHelloError, ClientHelloParser, ClientHelloRefused
from .closing import Close, describe
from .fingerprints import identify
from .host import State
from .routing import ALERT_HANDSHAKE_FAILURE, LEGACY_NOT_ALLOWED, Refusal, Route, route
from .tlsengine import TlsEngine

if TYPE_CHECKING:
    from .host import HandshakeHost

# The session's logger: the fingerprint lines are the session's (same name, same format as ever).
log = logging.getLogger("bbproxy.session")

_LEGACY_VERSIONS: Final = frozenset({"TLSv1", "TLSv1.1"})


class Handshake:
    """From the first byte of the ClientHello to TLS up (or a refusal, or a failure)."""

    __slots__ = ("_ctx", "_hello", "session")

    def __init__(self, session: HandshakeHost, ctx: ssl.SSLContext, skip_whitespace: bool) -> None:
        self.session = session
        self._ctx: ssl.SSLContext | None = ctx  # chosen at STARTTLS; used if we terminate
        # The client's ClientHello while it is being read, then what it offered, until the
        # handshake ends: legacy and failed handshakes are logged with a fingerprint.
        # After <starttls/> the client's XML whitespace (go-sendxmpp's newline) is not TLS.
        self._hello: ClientHelloParser | ClientHello | str | None = ClientHelloParser(
            skip_whitespace=skip_whitespace
        )

    @property
    def unlogged(self) -> bool:
        """Whether the fingerprint line is still to be written."""
        return self._hello is not None

    def hello_data(self, data: bytes) -> None:
        """Bytes of the ClientHello (HELLO): once it is whole, it is routed."""
        session = self.session
        parser = self._hello
        assert isinstance(parser, ClientHelloParser)
        try:
            hello = parser.feed(data)
        except ClientHelloRefused as exc:
            self._hello = str(exc)
            self._refuse(Refusal(ALERT_HANDSHAKE_FAILURE, "fragmented-hello", "handshake refused", str(exc)))
            return
        except ClientHelloError as exc:
            if not parser.buffered:  # only whitespace, and too much of it: no TLS to answer
                session.handshake_failed("not-tls")
                session.end(Close.TLS_FAILED, str(exc))
                return
            # Not ours to judge: OpenSSL answers it with the right alert, and it is logged. (The
            # legacy allow-list still holds: the negotiated version is checked after the handshake.)
            # Both policies in one context (no hello read, no class): a device is not lost to a
            # parser limit, and only a client's own unreadable hello can get it there.
            assert self._ctx is not None
            self._ctx = session.server.contexts.choose(self._ctx, None, legacy_chain=False)
            self._hello = f"unparsable ClientHello ({exc})"
            self.terminate(parser.buffered)
            return
        if hello is not None:
            self._hello = hello
            self._route(hello, parser.buffered)

    def _route(self, hello: ClientHello, raw: bytes) -> None:
        """Carry out routing.route()'s decision for this ClientHello."""
        session = self.session
        server = session.server
        decision = route(hello, server.settings.tls, lambda: server.legacy_allowed(session.peer_ip))
        # Which TLS policy, should we terminate (here or after a failed splice): legacy only
        # for a hello that cannot use the modern one; the legacy chain for legacy clients.
        assert self._ctx is not None
        self._ctx = server.contexts.choose(self._ctx, hello, legacy_chain=decision.legacy)
        if decision.refusal is not None:
            self._refuse(decision.refusal, legacy=decision.legacy)
        elif decision.route is Route.TERMINATE:
            self.terminate(raw)
        else:
            session.splice(raw, hello.sni)

    def _refuse(self, refusal: Refusal, legacy: bool = False) -> None:
        """End the handshake with a fatal alert (before any TLS state exists, or before our last
        flight) and a fingerprint line."""
        session = self.session
        assert session.transport is not None
        session.route = "refused"
        # The line first: whoever sees the alert (an operator's test client) finds it logged.
        self.log_fingerprint(refusal.what, legacy=legacy)
        session.transport.write(refusal.alert)
        session.handshake_failed(refusal.failure)
        session.end(Close.TLS_REFUSED, refusal.reason)

    def terminate(self, raw: bytes) -> None:
        """Our own TLS: replay what was read into a fresh TLS engine and go on from there."""
        session = self.session
        ctx = self._ctx
        assert ctx is not None
        self._ctx = None
        session.route = "terminate"
        session.state = State.HANDSHAKE
        session.tls = TlsEngine(ctx, raw)
        self.step()

    def log_fingerprint(self, what: str, legacy: bool = False) -> None:
        """The fingerprint line, once per session; a legacy hello (offered, or negotiated with
        ``legacy``) is also counted by family, whatever became of it."""
        session = self.session
        hello = self._hello
        if isinstance(hello, ClientHello):
            who = identify(hello)
            logsink.info(log, "conn=%d %s: %s", session.conn_id, what, who.summary)
            if legacy or hello.max_version < TLS_1_2:
                outcome = "refused" if session.route == "refused" else "served" if legacy else "failed"
                session.server.legacy_client(hello.family(who.name), outcome, who.known)
        elif isinstance(hello, str):
            logsink.info(log, "conn=%d %s: %s", session.conn_id, what, hello)
        self._hello = None

    def passed_through(self) -> None:
        """Prosody's TLS port took the ClientHello: the handshake is no longer ours to log."""
        self._hello = None

    def step(self) -> None:
        """Go on with our handshake on what the client sent (HANDSHAKE)."""
        session = self.session
        tls = session.tls
        assert tls is not None
        try:
            done = tls.handshake()
        except (ssl.SSLError, OSError) as exc:
            session.flush_tls()  # the alert tells the client why
            self.log_fingerprint(f"handshake failed ({describe(exc)})")
            session.handshake_failed(describe(exc))
            session.end(Close.TLS_FAILED, describe(exc))
            return
        if not done:
            session.flush_tls()
            return
        session.tls_version = tls.version
        if session.tls_version in _LEGACY_VERSIONS and not session.server.legacy_allowed(session.peer_ip):
            # The ClientHello looked modern (or could not be read) and OpenSSL still settled on
            # TLS < 1.2: the allow-list is about what is negotiated, not what the client claims.
            # Our last flight (its Finished) is dropped, so the client never completes.
            tls.data_to_send()
            negotiated = session.tls_version
            what = f"legacy TLS refused after negotiating {negotiated}: address not in tls.legacy_networks"
            self._refuse(dataclasses.replace(LEGACY_NOT_ALLOWED, what=what), legacy=True)
            return
        session.flush_tls()  # last flight, TLS 1.3 session tickets
        session.cancel_timer()
        session.cipher = tls.cipher
        if session.tls_version in _LEGACY_VERSIONS:
            self.log_fingerprint(f"legacy client {session.tls_version}", legacy=True)
        self._hello = None
        session.tls_up()
