"""What happens to a byte after TLS: the relay between the client and a NEW connection to Prosody.

A terminated session's records are decrypted by the session's TLS engine (tlsengine.py) and
:meth:`Relay.client_records` sends their plaintext to Prosody in one write; Prosody's bytes arrive
in backend.py's BackendConnection and :meth:`Relay.from_backend` encrypts them for the client.
Backpressure goes both ways (a slow side stops the other's reading). The backend connection is
opened only after the client's TLS is up, in one bounded connect (:meth:`Relay.open_backend`), with a
PROXY protocol header first if ``send_proxy_protocol`` says so.

A spliced session (``tls.routing = "legacy-only"``, a modern ClientHello) is relayed still
encrypted to Prosody, the ClientHello replayed first, so Prosody terminates its TLS (channel
binding, its own TLS policy): on its direct-TLS port (``tls.splice = "direct-tls"``, no PROXY
header possible), or on a plaintext port after a PROXY header and a STARTTLS of our own
(``"starttls"``), so Prosody sees the client's address: splice.py. If that port is down or does
not get to ``<proceed/>`` (each step bounded), the session falls back to terminating.
The handshake timeout still runs through the splice: it ends once Prosody has answered a second
flight of the client (ClientHello, then Finished in a full handshake), so a client that sends a
hello and stalls is closed like one that stalls on our own TLS.

UNAVAILABLE (the backend could not be reached) waits, bounded, for the client's post-TLS stream
header and answers it with ``remote-connection-failed``: a stream error must follow a header that
answers the client's (RFC 6120 §4.2), or clients such as slixmpp never see it.

The relay acts for its session (session.py's ClientSession, a :class:`RelayHost`), whose state,
one timer and close it uses; this module imports nothing of the session.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .backend import BackendConnection, proxy_header
from .closing import Close, CloseReason, describe
from .framing import NEED_DATA, PreTlsParser
from .host import RelayHost, State
from .negotiation import STREAM_CLOSE, stream_error, stream_header
from .splice import Splice

if TYPE_CHECKING:
    from .config import Address

# The session's logger: the relay's lines are the session's (same name, same format as ever).
log = logging.getLogger("bbproxy.session")

_GT: Final = 0x3E  # ">"
# Splice progress, counted in flights (a run of bytes from one side): the handshake timeout ends
# when Prosody answers the client's second flight (its first is the ClientHello).
_SPLICE_HELLO_SENT, _SPLICE_SERVER_SPOKE, _SPLICE_CLIENT_ANSWERED, _SPLICE_DONE = range(4)


class Relay:
    """A session from the moment its TLS is up (ours, or Prosody's through a splice) to its close."""

    __slots__ = (
        "_backend_ended",
        "_down_at_boundary",
        "_splice",
        "_splice_progress",
        "_unavailable",
        "_up_at_boundary",
        "backend",
        "bytes_down",
        "bytes_up",
        "half_closed",
        "session",
    )

    def __init__(self, session: RelayHost) -> None:
        self.session = session
        self.backend: BackendConnection | None = None
        self.bytes_up = 0  # client -> backend, after TLS
        self.bytes_down = 0  # backend -> client
        self.half_closed = False  # the client ended its side: nothing more is read from it
        self._splice: Splice | None = None  # getting a spliced session to Prosody's TLS
        self._splice_progress = _SPLICE_HELLO_SENT
        self._unavailable: PreTlsParser | None = None
        # Whether the last byte relayed each way closed a tag: only then may a stream-level
        # element (our </stream:stream> or <stream:error/>) be added without splitting a stanza.
        self._up_at_boundary = True
        self._down_at_boundary = True
        self._backend_ended = False  # the backend's last bytes were its </stream:stream>

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's transport (BackendConnection's backpressure pauses its reading)."""
        return self.session.transport

    def relaying(self) -> bool:
        """Bytes flow both ways (relay or splice): the backend side may resume our reading."""
        state = self.session.state
        return state is State.RELAY or state is State.SPLICE

    # -- client -> backend ----------------------------------------------------------------

    def client_records(self, data: bytes | memoryview) -> None:
        """TLS records from the client (RELAY, UNAVAILABLE): decrypted and relayed."""
        tls = self.session.tls
        if tls is not None and not self.half_closed:
            tls.receive(data)
            self.read_tls()

    def client_raw(self, data: bytes | memoryview) -> None:
        """Spliced bytes from the client (SPLICE): passed on as they are."""
        if not self.half_closed:
            assert self.backend is not None
            self.bytes_up += len(data)
            self.backend.write(bytes(data))
            if self._splice_progress == _SPLICE_SERVER_SPOKE:
                self._splice_progress = _SPLICE_CLIENT_ANSWERED

    def client_early(self, data: bytes | memoryview) -> None:
        """Bytes while the splice connects: kept (a copy; reading is paused: at most one read)."""
        assert self._splice is not None
        self._splice.early(data)

    def read_tls(self) -> None:
        """Decrypt everything buffered and relay it to the backend, in one write."""
        session = self.session
        tls = session.tls
        assert tls is not None
        plain: list[bytes] = []  # the records' plaintext: one write (writev) for all of them
        while session.state is State.RELAY or session.state is State.UNAVAILABLE:
            try:
                chunk = tls.read()
            except ssl.SSLZeroReturnError:
                self._relay_up(plain)
                session.end(Close.CLIENT_EOF)
                return
            except (ssl.SSLError, OSError) as exc:
                self._relay_up(plain)
                session.end(Close.TLS_ERROR, describe(exc))
                return
            if chunk is None:
                break
            if session.state is State.UNAVAILABLE:
                self._unavailable_data(chunk)
            elif not chunk:  # the client's close_notify
                self._relay_up(plain)
                self.half_close(Close.CLIENT_CLOSE_NOTIFY)
                return
            else:
                plain.append(chunk)
        self._relay_up(plain)
        session.flush_tls()

    def _relay_up(self, plain: list[bytes]) -> None:
        if not plain:
            return
        assert self.backend is not None
        if self.bytes_up == 0 and self.bytes_down == 0:
            # The client's stream header: Prosody answers it at once, or it never will.
            limits = self.session.server.settings.limits
            self.session.arm_timer(limits.backend_answer_timeout, self._backend_silent)
        self.bytes_up += sum(map(len, plain))
        self._up_at_boundary = plain[-1][-1] == _GT
        self.backend.writelines(plain)

    def half_close(self, kind: Close) -> None:
        """The client is done sending: tell the backend, and relay its answer for a while."""
        assert self.backend is not None
        session = self.session
        session.close_reason = session.close_reason or CloseReason(kind)
        if self.half_closed:
            return  # close_notify, then the TCP FIN: one half-close, one timer
        self.half_closed = True
        self.backend.write_eof()
        session.cancel_timer()
        session.arm_timer(session.server.settings.limits.half_close_timeout, session.end, kind)

    # -- backend -> client ----------------------------------------------------------------

    def from_backend(self, data: bytes | memoryview) -> None:
        """Backend bytes: ``data`` is a view of the shared read buffer, valid only now."""
        session = self.session
        if session.state is State.SPLICE:
            assert session.transport is not None
            self.bytes_down += len(data)
            session.transport.write(bytes(data))
            if self._splice_progress != _SPLICE_DONE:
                if self._splice_progress == _SPLICE_CLIENT_ANSWERED:
                    self._splice_progress = _SPLICE_DONE
                    if not self.half_closed:  # a half-close has its own timer
                        session.cancel_timer()
                else:
                    self._splice_progress = _SPLICE_SERVER_SPOKE
        elif session.state is State.RELAY:
            if self.bytes_down == 0 and not self.half_closed:
                session.cancel_timer()  # the backend answered (a half-close has its own timer)
            self.bytes_down += len(data)
            self._down_at_boundary = data[-1] == _GT
            self._backend_ended = data[-len(STREAM_CLOSE) :] == STREAM_CLOSE
            self._send_tls(data)

    def _send_tls(self, data: bytes | memoryview, flush: bool = True) -> None:
        """Encrypt ``data`` for the client; ``flush=False`` when the session's close follows and
        sends it together with our close_notify, in one write."""
        tls = self.session.tls
        assert tls is not None
        try:
            tls.write(data)
        except (ssl.SSLError, OSError) as exc:
            self.session.end(Close.TLS_ERROR, describe(exc))
            return
        if flush:
            self.session.flush_tls()

    def backend_closed(self, kind: Close, detail: str = "") -> None:
        session = self.session
        if (
            session.state is State.RELAY
            and not self._backend_ended
            and self._down_at_boundary
            and not self.half_closed
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
        if session.state is not State.CLOSED:
            session.end(kind, detail)

    def _backend_silent(self) -> None:
        session = self.session
        if session.state is State.RELAY and self.bytes_down == 0:
            timeout = session.server.settings.limits.backend_answer_timeout
            backend = session.server.settings.backend
            log.warning(
                "conn=%d backend %s accepted, said nothing in %.0fs", session.conn_id, backend, timeout
            )
            session.server.backend_failed()
            reason = CloseReason(Close.BACKEND_SILENT, f"no answer in {timeout:.0f}s")
            self._fail_unanswered("the XMPP service did not answer", reason)

    def _fail_unanswered(self, text: str, reason: CloseReason) -> None:
        """remote-connection-failed to a client Prosody never answered: our own stream header opens
        the stream the error ends, sent with our close_notify in one write."""
        header = stream_header(self.session.domain)
        self._send_tls(header + stream_error("remote-connection-failed", text), flush=False)
        self.session.end(reason.kind, reason.detail)

    # -- connecting -----------------------------------------------------------------------

    async def open_backend(
        self, address: Address, waiting: State, failed: Callable[[Exception], None]
    ) -> BackendConnection | None:
        """The one bounded connect to Prosody (plaintext port, or its TLS port for a splice),
        made while the session is ``waiting``. None if it failed (``failed`` is told why, if the
        session still waits) or the client left meanwhile (the late connection is closed)."""
        session = self.session
        server = session.server
        try:
            async with asyncio.timeout(server.settings.limits.backend_connect_timeout):
                _, backend = await server.loop.create_connection(
                    lambda: BackendConnection(self), address.host, address.port
                )
        except asyncio.CancelledError:
            return None
        except (OSError, TimeoutError) as exc:
            if session.state is waiting:
                failed(exc)
            return None
        if session.state is not waiting:  # the client left while we were connecting
            backend.close()
            return None
        return backend

    def connect(self) -> None:
        """Our TLS is up (CONNECTING): open the plaintext connection to Prosody."""
        self.session.start_task(self._connect_backend())

    async def _connect_backend(self) -> None:
        session = self.session
        settings = session.server.settings
        backend = await self.open_backend(settings.backend, State.CONNECTING, self._backend_unavailable)
        if backend is None:
            return
        self.backend = backend
        session.state = State.RELAY
        if settings.send_proxy_protocol != "off":
            backend.write(proxy_header(session.transport, settings.send_proxy_protocol))
        self.read_tls()  # records that arrived while connecting
        if session.state is State.RELAY and session.transport is not None:
            session.transport.resume_reading()

    def _backend_unavailable(self, exc: Exception) -> None:
        """UNAVAILABLE: wait (bounded) for the client's stream header, to answer it."""
        session = self.session
        settings = session.server.settings
        session.server.backend_failed()
        log.warning("conn=%d backend %s unavailable: %s", session.conn_id, settings.backend, describe(exc))
        session.close_reason = CloseReason(Close.BACKEND_UNAVAILABLE, describe(exc))
        session.state = State.UNAVAILABLE
        self._unavailable = PreTlsParser(settings.limits.pre_tls_max_bytes)
        session.arm_timer(settings.limits.pre_tls_timeout, self._refuse_unavailable)
        self.read_tls()  # the client's header may be here already
        if session.state is State.UNAVAILABLE and session.transport is not None:
            session.transport.resume_reading()

    def splice(self, raw: bytes, sni: str | None) -> None:
        """A modern client under ``legacy-only`` (SPLICING): connect to Prosody's TLS port and
        replay ``raw`` (the ClientHello, naming ``sni``) there (splice.py)."""
        self._splice = Splice(self, raw)
        self._splice.start(sni)

    # -- UNAVAILABLE ----------------------------------------------------------------------

    def _unavailable_data(self, chunk: bytes) -> None:
        assert self._unavailable is not None
        self._unavailable.receive_data(chunk)
        if not chunk or self._unavailable.next_event() is not NEED_DATA:
            self._refuse_unavailable()  # a header (or anything that ends the wait)

    def _refuse_unavailable(self) -> None:
        session = self.session
        if session.state is State.UNAVAILABLE:
            assert session.close_reason is not None
            self._fail_unanswered("the XMPP service is unavailable, try again", session.close_reason)

    # -- ending ---------------------------------------------------------------------------

    def end_streams(self, condition: str, text: str) -> None:
        """A server stop (RELAY): Prosody ends its side cleanly (it answers </stream:stream> and
        stores what it must); the client is told to reconnect. Each only between two elements,
        and the backend only if the client has not already ended its side (half-close)."""
        if self.backend is not None and self._up_at_boundary and not self.half_closed:
            self.backend.write(STREAM_CLOSE)
        if self._down_at_boundary:
            self._send_tls(stream_error(condition, text), flush=False)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()  # flushes what the client sent before it left
