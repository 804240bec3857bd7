"""One client connection: pre-TLS dialogue, TLS handshake, then a relay to a NEW backend connection.

Life of a STARTTLS session (a direct-TLS session starts at HELLO)::

    PRE_TLS --<starttls/>--> HELLO --legacy, or terminate-all--> HANDSHAKE --TLS up--> CONNECTING
                               |                                     ^          backend up: RELAY
                               |                                     |        backend down: UNAVAILABLE
                               |--modern, legacy-only--> SPLICING ---' Prosody's TLS port down
                               |                            `--connected--> SPLICE (raw bytes;
                               |                       handshake_timeout until Prosody answered
                               |                       the client's second flight)
                               `--legacy, address not allowed--> CLOSED (protocol_version alert)

HELLO reads the client's ClientHello (sans-IO, bounded in bytes and by the handshake
timeout) before any TLS state exists, and routes on it (issue 7): a legacy client (highest
offered version below TLS 1.2) gets this proxy's TLS and the plaintext backend; with
``tls.routing = "legacy-only"`` everyone else is spliced, still encrypted, to Prosody's own
direct-TLS port, the ClientHello replayed first, so Prosody terminates their TLS (channel
binding, its own TLS policy). No PROXY header goes there: Prosody 0.12 cannot read one in front
of TLS (LuaSocket reads past the header, into the ClientHello, which OpenSSL then never sees).
If that port is down the session falls back to terminating. The handshake timeout still runs
through the splice: it ends once Prosody has answered a second flight of the client
(ClientHello, then Finished in a full handshake), so a client that sends a hello and stalls is
closed like one that stalls on our own TLS.

UNAVAILABLE waits (bounded) for the client's post-TLS stream header and answers it with
``remote-connection-failed``: a stream error must follow a header that answers the client's
(RFC 6120 §4.2), or clients such as slixmpp never see it.

TLS runs over ``ssl.MemoryBIO`` (tlsengine.py) on the one plain transport the session has from accept
to close, instead of ``loop.start_tls()``:

* no hand-off race: a ClientHello that arrives the instant ``<proceed/>`` leaves simply
  goes into the BIO, on asyncio and uvloop alike (``start_tls`` needs reading paused at
  the right moment, and uvloop ignores a pause made inside ``connection_made``);
* memory: asyncio's and uvloop's SSL protocols allocate a 256 KiB read buffer per
  connection; an idle session here holds only OpenSSL's state;
* the bytes of the handshake are ours to see (fingerprints, routing: issue 7).

Every callback checks the state first: once a session is CLOSED, late callbacks (a
timer, a backend that finishes connecting) do nothing. That is the lesson of the
Node.js prototype, whose stale close handler aborted its own handshakes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import ssl
import time
from enum import Enum
from typing import TYPE_CHECKING, Final, Protocol, cast

from . import logsink, proxy_protocol
from .clienthello import TLS_1_2, ClientHello, ClientHelloError, ClientHelloParser, ClientHelloRefused
from .closing import Close, CloseReason, describe
from .fingerprints import identify
from .framing import NEED_DATA, PreTlsParser
from .negotiation import STREAM_CLOSE, Action, Negotiation, stream_error, stream_header
from .relay import RECV_BUFFER, BackendConnection
from .routing import ALERT_HANDSHAKE_FAILURE, LEGACY_NOT_ALLOWED, Refusal, Route, route
from .tlsengine import TlsEngine

if TYPE_CHECKING:
    from .config import Address, Settings
    from .tls import TlsContexts

log = logging.getLogger("bbproxy.session")

# Splice progress, counted in flights (a run of bytes from one side): the handshake timeout ends
# when Prosody answers the client's second flight (its first is the ClientHello).
_SPLICE_HELLO_SENT, _SPLICE_SERVER_SPOKE, _SPLICE_CLIENT_ANSWERED, _SPLICE_DONE = range(4)
_ids = itertools.count(1)
_GT: Final = 0x3E  # ">"
_LEGACY_VERSIONS: Final = frozenset({"TLSv1", "TLSv1.1"})
# Why a connection is refused at accept -> the stream error that says so (RFC 6120 §4.9.3).
_REFUSALS: Final = {
    "max-connections": ("resource-constraint", "the server is full, try again later"),
    "shutting-down": ("system-shutdown", "the server is restarting, please reconnect"),
    "per-ip-connections": ("policy-violation", "too many connections from your address"),
    "per-ip-rate": ("policy-violation", "too many new connections from your address, slow down"),
}


class Listener(Protocol):
    """The listener a session came in on (listeners.Listener)."""

    @property
    def starttls(self) -> bool: ...

    @property
    def name(self) -> str: ...


class SessionHost(Protocol):
    """What a session needs of the server it belongs to (server.ProxyServer): settings, the loop,
    the TLS contexts, admission and the accounting calls. Nothing else of the server is used."""

    settings: Settings
    loop: asyncio.AbstractEventLoop
    contexts: TlsContexts
    domains: frozenset[str]

    def admit(self, session: ClientSession) -> str | None: ...

    def release(self, session: ClientSession) -> None: ...

    def legacy_allowed(self, ip: str) -> bool: ...

    def legacy_client(self, family: str, outcome: str = "served") -> None: ...

    def handshake_done(self, session: ClientSession) -> None: ...

    def handshake_failed(self, session: ClientSession, reason: str) -> None: ...

    def backend_failed(self) -> None: ...


class State(Enum):
    PRE_TLS = 1
    HELLO = 2
    HANDSHAKE = 3
    CONNECTING = 4
    RELAY = 5
    UNAVAILABLE = 6
    SPLICING = 7
    SPLICE = 8
    CLOSED = 9


class ClientSession(asyncio.BufferedProtocol):
    """The client side; owns the TLS state and, once it exists, the backend side."""

    __slots__ = (
        "_backend_ended",
        "_ctx",
        "_down_at_boundary",
        "_early",
        "_finished",
        "_half_closed",
        "_hello",
        "_splice_progress",
        "_task",
        "_timer",
        "_tls",
        "_unavailable",
        "_up_at_boundary",
        "backend",
        "bytes_down",
        "bytes_up",
        "cipher",
        "close_reason",
        "conn_id",
        "listener",
        "negotiation",
        "peer",
        "peer_ip",
        "route",
        "server",
        "started",
        "state",
        "tls_started",
        "tls_version",
        "transport",
    )

    def __init__(self, server: SessionHost, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.conn_id = next(_ids)
        self.state = State.PRE_TLS
        self.transport: asyncio.Transport | None = None
        self.backend: BackendConnection | None = None
        self.negotiation: Negotiation | None = None
        self.peer = "-"
        self.peer_ip = ""
        self.started = time.monotonic()
        self.tls_started = self.started
        self.bytes_up = 0  # client -> backend, after TLS
        self.bytes_down = 0  # backend -> client
        self.tls_version = "-"
        self.cipher = "-"
        self.close_reason: CloseReason | None = None  # the first reason the session ended for
        self.route = "-"  # "terminate", "passthrough" or "refused", once the ClientHello is read
        self._ctx: ssl.SSLContext | None = None  # chosen at STARTTLS; used if we terminate
        self._early = b""  # the ClientHello (and anything after it) while splicing connects
        self._splice_progress = _SPLICE_HELLO_SENT
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._tls: TlsEngine | None = None  # once this proxy terminates the client's TLS
        self._finished = False
        self._half_closed = False
        # The client's ClientHello while it is being read, then what it offered, until the
        # handshake ends: legacy and failed handshakes are logged with a fingerprint.
        self._hello: ClientHelloParser | ClientHello | str | None = None
        self._unavailable: PreTlsParser | None = None
        # Whether the last byte relayed each way closed a tag: only then may a stream-level
        # element (our </stream:stream> or <stream:error/>) be added without splitting a stanza.
        self._up_at_boundary = True
        self._down_at_boundary = True
        self._backend_ended = False  # the backend's last bytes were its </stream:stream>

    # -- asyncio.Protocol (client side) --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer[0]
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        server = self.server
        limits = server.settings.limits
        refused = server.admit(self)
        if refused is not None:
            if self.listener.starttls:  # direct TLS cannot say why before a handshake
                condition, text = _REFUSALS.get(refused, _REFUSALS["max-connections"])
                self.transport.write(stream_header(None) + stream_error(condition, text))
            self._close(Close.REFUSED, refused)
            return
        if self.listener.starttls:
            self.negotiation = Negotiation(server.domains, limits.pre_tls_max_bytes)
            self._timer = server.loop.call_later(limits.pre_tls_timeout, self._on_timeout)
        else:
            self._begin_tls(server.contexts.default)

    def get_buffer(self, sizehint: int) -> memoryview:
        return RECV_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(RECV_BUFFER[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """``data`` is a view of the shared read buffer, valid only now: copied where it is kept
        or parsed, handed to OpenSSL (one copy, into its buffer) where it is TLS."""
        state = self.state
        if state is State.SPLICE:
            if not self._half_closed:
                assert self.backend is not None
                self.bytes_up += len(data)
                self.backend.write(bytes(data))
                if self._splice_progress == _SPLICE_SERVER_SPOKE:
                    self._splice_progress = _SPLICE_CLIENT_ANSWERED
        elif state is State.PRE_TLS:
            self._pre_tls_data(bytes(data))
        elif state is State.HELLO:
            self._hello_data(bytes(data))
        elif state is State.SPLICING:
            self._early += data  # a copy; reading is paused while connecting: at most one read
        elif state is not State.CLOSED and self._tls is not None and not self._half_closed:
            self._tls.receive(data)
            if state is State.HANDSHAKE:
                self._continue_handshake()
            elif state is State.RELAY or state is State.UNAVAILABLE:
                self._read_tls()
            elif state is State.CONNECTING:
                # Records that arrive while the backend connects wait here, still encrypted,
                # and reading stops until it is up: at most one read's worth, nothing grows.
                # (Pausing only now spares two syscalls when nothing comes meanwhile.)
                assert self.transport is not None
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.state is State.RELAY or self.state is State.SPLICE:
            self._half_close(Close.CLIENT_EOF)
            return True  # keep our write side open for the backend's answer
        self._close(Close.CLIENT_EOF)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._close(Close.CLIENT_ERROR, describe(exc))
        else:
            self._close(Close.CLIENT_CLOSED)
        self._finish()

    def pause_writing(self) -> None:
        # The client is slower than the backend: stop reading the backend until it drains.
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.resume_reading()

    def relaying(self) -> bool:
        """Bytes flow both ways (relay or splice): the backend side may resume our reading."""
        return self.state is State.RELAY or self.state is State.SPLICE

    # -- pre-TLS ---------------------------------------------------------------------

    def _pre_tls_data(self, data: bytes) -> None:
        assert self.negotiation is not None and self.transport is not None
        outcome = self.negotiation.receive_data(data)
        if outcome.send:
            self.transport.write(outcome.send)
        if outcome.action is Action.STARTTLS:
            self._cancel_timer()
            self._begin_tls(self.server.contexts.for_domain(self.negotiation.domain))
        elif outcome.action is Action.CLOSE:
            reason = CloseReason.of_negotiation(outcome.reason)
            self._close(reason.kind, reason.detail)

    def _on_timeout(self) -> None:
        self._timer = None
        if self.state is State.PRE_TLS and self.transport is not None and self.negotiation is not None:
            self.transport.write(self.negotiation.refuse("connection-timeout", "no <starttls/> in time"))
            self._close(Close.PRE_TLS_TIMEOUT)
        elif self.state in (State.HELLO, State.HANDSHAKE, State.SPLICING):
            self._log_fingerprint("handshake timed out")
            self.server.handshake_failed(self, "timeout")
            self._close(Close.TLS_FAILED, "timeout")
        elif self.state is State.SPLICE:
            # Prosody's handshake, not ours (not a handshake failure of this proxy's TLS), but
            # the client stalled in it: no session may sit in a handshake without a deadline.
            self._close(Close.TLS_FAILED, "timeout (passed through)")

    # -- TLS -------------------------------------------------------------------------------

    def _begin_tls(self, ctx: ssl.SSLContext) -> None:
        """Wait for the ClientHello; no TLS state exists until it is routed."""
        self.state = State.HELLO
        self._ctx = ctx
        # After <starttls/> the client's XML whitespace (go-sendxmpp's newline) is not TLS.
        self._hello = ClientHelloParser(skip_whitespace=self.listener.starttls)
        self.tls_started = time.monotonic()
        self._timer = self.server.loop.call_later(
            self.server.settings.limits.handshake_timeout, self._on_timeout
        )

    def _hello_data(self, data: bytes) -> None:
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
                self.server.handshake_failed(self, "not-tls")
                self._close(Close.TLS_FAILED, str(exc))
                return
            # Not ours to judge: OpenSSL answers it with the right alert, and it is logged. (The
            # legacy allow-list still holds: the negotiated version is checked after the handshake.)
            # Both policies in one context (no hello read, no class): a device is not lost to a
            # parser limit, and only a client's own unreadable hello can get it there.
            assert self._ctx is not None
            self._ctx = self.server.contexts.choose(self._ctx, None, legacy_chain=False)
            self._hello = f"unparsable ClientHello ({exc})"
            self._terminate(parser.buffered)
            return
        if hello is not None:
            self._hello = hello
            self._route(hello, parser.buffered)

    def _route(self, hello: ClientHello, raw: bytes) -> None:
        """Carry out routing.route()'s decision for this ClientHello."""
        decision = route(hello, self.server.settings.tls, lambda: self.server.legacy_allowed(self.peer_ip))
        # Which TLS policy, should we terminate (here or after a failed splice): legacy only
        # for a hello that cannot use the modern one; the legacy chain for legacy clients.
        assert self._ctx is not None
        self._ctx = self.server.contexts.choose(self._ctx, hello, legacy_chain=decision.legacy)
        if decision.refusal is not None:
            self._refuse(decision.refusal, legacy=decision.legacy)
        elif decision.route is Route.TERMINATE:
            self._terminate(raw)
        else:
            self._splice(raw)

    def _refuse(self, refusal: Refusal, legacy: bool = False) -> None:
        """End the handshake with a fatal alert (before any TLS state exists, or before our last
        flight) and a fingerprint line."""
        assert self.transport is not None
        self.route = "refused"
        # The line first: whoever sees the alert (an operator's test client) finds it logged.
        self._log_fingerprint(refusal.what, legacy=legacy)
        self.transport.write(refusal.alert)
        self.server.handshake_failed(self, refusal.failure)
        self._close(Close.TLS_REFUSED, refusal.reason)

    def _terminate(self, raw: bytes) -> None:
        """Our own TLS: replay what was read into a fresh SSLObject and go on from there."""
        ctx = self._ctx
        assert ctx is not None
        self._ctx = None
        self.route = "terminate"
        self.state = State.HANDSHAKE
        self._tls = TlsEngine(ctx, raw)
        self._continue_handshake()

    def _log_fingerprint(self, what: str, legacy: bool = False) -> None:
        """The fingerprint line, once per session; a legacy hello (offered, or negotiated with
        ``legacy``) is also counted by family, whatever became of it."""
        hello = self._hello
        if isinstance(hello, ClientHello):
            who = identify(hello)
            logsink.info(log, "conn=%d %s: %s", self.conn_id, what, who.summary)
            if legacy or hello.max_version < TLS_1_2:
                outcome = "refused" if self.route == "refused" else "served" if legacy else "failed"
                self.server.legacy_client(hello.family(who.name), outcome)
        elif isinstance(hello, str):
            logsink.info(log, "conn=%d %s: %s", self.conn_id, what, hello)
        self._hello = None

    def _continue_handshake(self) -> None:
        tls = self._tls
        assert tls is not None
        try:
            done = tls.handshake()
        except (ssl.SSLError, OSError) as exc:
            self._flush_tls()  # the alert tells the client why
            self._log_fingerprint(f"handshake failed ({describe(exc)})")
            self.server.handshake_failed(self, describe(exc))
            self._close(Close.TLS_FAILED, describe(exc))
            return
        if not done:
            self._flush_tls()
            return
        self.tls_version = tls.version
        if self.tls_version in _LEGACY_VERSIONS and not self.server.legacy_allowed(self.peer_ip):
            # The ClientHello looked modern (or could not be read) and OpenSSL still settled on
            # TLS < 1.2: the allow-list is about what is negotiated, not what the client claims.
            # Our last flight (its Finished) is dropped, so the client never completes.
            tls.data_to_send()
            what = (
                f"legacy TLS refused after negotiating {self.tls_version}: address not in tls.legacy_networks"
            )
            self._refuse(dataclasses.replace(LEGACY_NOT_ALLOWED, what=what), legacy=True)
            return
        self._flush_tls()  # last flight, TLS 1.3 session tickets
        self._cancel_timer()
        self.cipher = tls.cipher
        if self.tls_version in _LEGACY_VERSIONS:
            self._log_fingerprint(f"legacy client {self.tls_version}", legacy=True)
        self._hello = None
        self.server.handshake_done(self)
        self.state = State.CONNECTING
        self._task = self.server.loop.create_task(self._connect_backend())

    def _read_tls(self) -> None:
        """Decrypt everything buffered and relay it to the backend, in one write."""
        tls = self._tls
        assert tls is not None
        plain: list[bytes] = []  # the records' plaintext: one write (writev) for all of them
        while self.state is State.RELAY or self.state is State.UNAVAILABLE:
            try:
                chunk = tls.read()
            except ssl.SSLZeroReturnError:
                self._relay_up(plain)
                self._close(Close.CLIENT_EOF)
                return
            except (ssl.SSLError, OSError) as exc:
                self._relay_up(plain)
                self._close(Close.TLS_ERROR, describe(exc))
                return
            if chunk is None:
                break
            if self.state is State.UNAVAILABLE:
                self._unavailable_data(chunk)
            elif not chunk:  # the client's close_notify
                self._relay_up(plain)
                self._half_close(Close.CLIENT_CLOSE_NOTIFY)
                return
            else:
                plain.append(chunk)
        self._relay_up(plain)
        self._flush_tls()

    def _relay_up(self, plain: list[bytes]) -> None:
        if not plain:
            return
        assert self.backend is not None
        if self.bytes_up == 0 and self.bytes_down == 0:
            # The client's stream header: Prosody answers it at once, or it never will.
            self._timer = self.server.loop.call_later(
                self.server.settings.limits.backend_answer_timeout, self._backend_silent
            )
        self.bytes_up += sum(map(len, plain))
        self._up_at_boundary = plain[-1][-1] == _GT
        self.backend.writelines(plain)

    def _half_close(self, kind: Close) -> None:
        """The client is done sending: tell the backend, and relay its answer for a while."""
        assert self.backend is not None
        self.close_reason = self.close_reason or CloseReason(kind)
        if self._half_closed:
            return  # close_notify, then the TCP FIN: one half-close, one timer
        self._half_closed = True  # nothing more is read from the client
        self.backend.write_eof()
        self._cancel_timer()
        grace = self.server.settings.limits.half_close_timeout
        self._timer = self.server.loop.call_later(grace, self._close, kind)

    def _flush_tls(self) -> None:
        if self._tls is not None and self.transport is not None:
            data = self._tls.data_to_send()
            if data:
                self.transport.write(data)

    def _send_tls(self, data: bytes | memoryview, flush: bool = True) -> None:
        """Encrypt ``data`` for the client; ``flush=False`` when _close() follows and sends it
        together with our close_notify, in one write."""
        assert self._tls is not None
        try:
            self._tls.write(data)
        except (ssl.SSLError, OSError) as exc:
            self._close(Close.TLS_ERROR, describe(exc))
            return
        if flush:
            self._flush_tls()

    # -- pass-through to Prosody's own TLS ----------------------------------------------------

    def _splice(self, raw: bytes) -> None:
        assert self.transport is not None
        self.route = "passthrough"
        self.state = State.SPLICING
        self._early = raw
        self.transport.pause_reading()  # until Prosody's TLS port can take the bytes
        self._task = self.server.loop.create_task(self._connect_splice())

    async def _connect_splice(self) -> None:
        server = self.server
        address = server.settings.tls.backend
        try:
            backend = await self._open(address)
        except asyncio.CancelledError:
            return
        except (OSError, TimeoutError) as exc:
            if self.state is State.SPLICING:
                # Never worse than terminate-all: do the TLS here and relay in plaintext.
                server.backend_failed()
                log.warning(
                    "conn=%d Prosody's TLS port %s unavailable (%s): terminating this client's TLS here",
                    self.conn_id,
                    address,
                    describe(exc),
                )
                early, self._early = self._early, b""
                self._terminate(early)
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.resume_reading()
            return
        if self.state is not State.SPLICING:  # the client left while we were connecting
            backend.close()
            return
        # The handshake timer goes on: the handshake is Prosody's now, but until it is under way
        # (see from_backend) a stalled client is still ours to end.
        self.backend = backend
        self.state = State.SPLICE
        self.tls_version = "passthrough"
        self._hello = None
        server.handshake_done(self)
        early, self._early = self._early, b""
        self.bytes_up += len(early)
        backend.write(early)
        if self.transport is not None:
            self.transport.resume_reading()

    # -- backend ---------------------------------------------------------------------------

    async def _open(self, address: Address) -> BackendConnection:
        """A new connection to Prosody (plaintext port, or its TLS port for a splice), bounded."""
        async with asyncio.timeout(self.server.settings.limits.backend_connect_timeout):
            _, backend = await self.server.loop.create_connection(
                lambda: BackendConnection(self), address.host, address.port
            )
        return backend

    async def _connect_backend(self) -> None:
        server = self.server
        backend_addr = server.settings.backend
        try:
            backend = await self._open(backend_addr)
        except asyncio.CancelledError:
            return
        except (OSError, TimeoutError) as exc:
            if self.state is State.CONNECTING:
                server.backend_failed()
                log.warning("conn=%d backend %s unavailable: %s", self.conn_id, backend_addr, describe(exc))
                self.close_reason = CloseReason(Close.BACKEND_UNAVAILABLE, describe(exc))
                self.state = State.UNAVAILABLE
                limits = server.settings.limits
                self._unavailable = PreTlsParser(limits.pre_tls_max_bytes)
                self._timer = server.loop.call_later(limits.pre_tls_timeout, self._refuse_unavailable)
                self._read_tls()  # the client's header may be here already
                if self.state is State.UNAVAILABLE and self.transport is not None:
                    self.transport.resume_reading()
            return
        if self.state is not State.CONNECTING:  # the client left while we were connecting
            backend.close()
            return
        self.backend = backend
        self.state = State.RELAY
        if server.settings.send_proxy_protocol != "off":
            backend.write(self._proxy_header(server.settings.send_proxy_protocol))
        self._read_tls()  # records that arrived while connecting
        if self.state is State.RELAY and self.transport is not None:
            self.transport.resume_reading()

    def _proxy_header(self, version: str) -> bytes:
        """PROXY protocol header naming the client, so Prosody logs and limits the real address."""
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        local = self.transport.get_extra_info("sockname")
        src = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        dst = (str(local[0]), int(local[1])) if local else ("", 0)
        return proxy_protocol.encode(version, src, dst)

    def _unavailable_data(self, chunk: bytes) -> None:
        assert self._unavailable is not None
        self._unavailable.receive_data(chunk)
        if not chunk or self._unavailable.next_event() is not NEED_DATA:
            self._refuse_unavailable()  # a header (or anything that ends the wait)

    def _refuse_unavailable(self) -> None:
        self._timer = None
        if self.state is State.UNAVAILABLE:
            assert self.close_reason is not None
            self._fail_unanswered("the XMPP service is unavailable, try again", self.close_reason)

    def _fail_unanswered(self, text: str, reason: CloseReason) -> None:
        """remote-connection-failed to a client Prosody never answered: our own stream header opens
        the stream the error ends, sent with our close_notify in one write."""
        domain = self.negotiation.domain if self.negotiation else None
        self._send_tls(stream_header(domain) + stream_error("remote-connection-failed", text), flush=False)
        self._close(reason.kind, reason.detail)

    # -- relay, called by the backend side ----------------------------------------------

    def from_backend(self, data: bytes | memoryview) -> None:
        """Backend bytes: ``data`` is a view of the shared read buffer, valid only now."""
        if self.state is State.SPLICE:
            assert self.transport is not None
            self.bytes_down += len(data)
            self.transport.write(bytes(data))
            if self._splice_progress != _SPLICE_DONE:
                if self._splice_progress == _SPLICE_CLIENT_ANSWERED:
                    self._splice_progress = _SPLICE_DONE
                    if not self._half_closed:  # a half-close has its own timer
                        self._cancel_timer()
                else:
                    self._splice_progress = _SPLICE_SERVER_SPOKE
        elif self.state is State.RELAY:
            if self.bytes_down == 0 and not self._half_closed:
                self._cancel_timer()  # the backend answered (a half-close has its own timer)
            self.bytes_down += len(data)
            self._down_at_boundary = data[-1] == _GT
            self._backend_ended = data[-len(STREAM_CLOSE) :] == STREAM_CLOSE
            self._send_tls(data)

    def _backend_silent(self) -> None:
        self._timer = None
        if self.state is State.RELAY and self.bytes_down == 0:
            timeout = self.server.settings.limits.backend_answer_timeout
            backend = self.server.settings.backend
            log.warning("conn=%d backend %s accepted, said nothing in %.0fs", self.conn_id, backend, timeout)
            self.server.backend_failed()
            reason = CloseReason(Close.BACKEND_SILENT, f"no answer in {timeout:.0f}s")
            self._fail_unanswered("the XMPP service did not answer", reason)

    def backend_closed(self, kind: Close, detail: str = "") -> None:
        if (
            self.state is State.RELAY
            and not self._backend_ended
            and self._down_at_boundary
            and not self._half_closed
        ):
            # Prosody went away without </stream:stream> (a crash, a kill, a lost stream error):
            # say so, so the client reconnects knowingly instead of seeing a bare TLS close.
            # Not after the client ended its side (close_notify or FIN): then the backend's
            # close is the answer to that, and the client expects our close_notify, no data.
            text = "the XMPP service closed the connection"
            if self.bytes_down == 0:  # nothing opened the client's stream yet: our header does
                self._fail_unanswered(text, CloseReason(kind, detail))
                return
            self._send_tls(stream_error("remote-connection-failed", text), flush=False)
        if self.state is not State.CLOSED:
            self._close(kind, detail)

    # -- closing -------------------------------------------------------------------------

    def shutdown(self, condition: str, text: str) -> None:
        """Close this session for a server stop: a stream error where we speak XMPP."""
        if self.state is State.CLOSED or self.transport is None:
            return
        if self.state is State.PRE_TLS and self.negotiation is not None:
            self.transport.write(self.negotiation.refuse(condition, text))
        elif self.state is State.RELAY:
            # Prosody ends its side cleanly (it answers </stream:stream> and stores what it
            # must); the client is told to reconnect. Each only between two elements, and the
            # backend only if the client has not already ended its side (half-close).
            if self.backend is not None and self._up_at_boundary and not self._half_closed:
                self.backend.write(STREAM_CLOSE)
            if self._down_at_boundary:
                self._send_tls(stream_error(condition, text), flush=False)
        self._close(Close.SERVER_SHUTDOWN)

    def _finish(self) -> None:
        """Release the connection slot and write the one log line, exactly once."""
        if not self._finished:
            self._finished = True
            self.server.release(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self, kind: Close, detail: str = "") -> None:
        """End the session (once); the first reason given is the one logged and counted."""
        if self.state is State.CLOSED:
            return
        reason = CloseReason(kind, detail)
        if self.state is State.HANDSHAKE and self._hello is not None:
            # The client hung up in the middle of our handshake (a device that does not trust
            # the certificate often just leaves): a failed handshake, logged with its fingerprint.
            self._log_fingerprint(f"handshake abandoned ({reason})")
            self.server.handshake_failed(self, "eof")
        self.close_reason = self.close_reason or reason
        tls_up = self.state in (State.CONNECTING, State.RELAY, State.UNAVAILABLE)
        self.state = State.CLOSED
        self._cancel_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.backend is not None:
            self.backend.close()  # flushes what the client sent before it left
        if tls_up and self._tls is not None:
            self._tls.close()  # queue our close_notify
            self._flush_tls()
        if self.transport is not None:
            self.transport.close()  # flushes what is queued, then closes

    def log_close(self) -> None:
        logsink.info(
            log,
            "conn=%d peer=%s listener=%s domain=%s tls=%s cipher=%s up=%d down=%d duration=%.3fs close=%s",
            self.conn_id,
            self.peer,
            self.listener.name,
            (self.negotiation.domain if self.negotiation else None) or "-",
            self.tls_version,
            self.cipher,
            self.bytes_up,
            self.bytes_down,
            time.monotonic() - self.started,
            self.close_reason or "-",  # str(CloseReason): the same text as before the enum
        )
