"""One client connection: pre-TLS dialogue, TLS handshake, then a relay to a NEW backend connection.

The session orchestrates: it is the client's asyncio protocol, speaks the pre-TLS dialogue
(negotiation.py), then hands the connection to its handshake (handshake.py: the ClientHello read
and routed, our TLS engine run), then to its relay (relay.py), which opens the backend connection
and moves every byte after TLS. It owns the one transport, the one timer, the close and the log
line. Its states and their order: host.py.

TLS runs over ``ssl.MemoryBIO`` (tlsengine.py) on the one plain transport the session has from accept
to close, instead of ``loop.start_tls()``:

* no hand-off race: a ClientHello that arrives the instant ``<proceed/>`` leaves simply
  goes into the BIO, on asyncio and uvloop alike (``start_tls`` needs reading paused at
  the right moment, and uvloop ignores a pause made inside ``connection_made``);
* memory: asyncio's and uvloop's SSL protocols allocate a 256 KiB read buffer per
  connection; an idle session here holds only OpenSSL's state, and its memory BIOs at most
  a slice each however much it relayed at once (tlsengine.py);
* the bytes of the handshake are ours to see (fingerprints, routing: issue 7).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

from . import logsink
from .backend import RECV_BUFFER, BackendConnection
from .closing import Close, CloseReason, describe
from .handshake import Handshake
from .host import Listener, SessionHost, State
from .negotiation import Action, Negotiation, stream_error, stream_header
from .relay import Relay
from .tlsengine import TlsEngine

log = logging.getLogger("bbproxy.session")

_ids = itertools.count(1)
# Why a connection is refused at accept -> the stream error that says so (RFC 6120 §4.9.3).
_REFUSALS: Final = {
    "max-connections": ("resource-constraint", "the server is full, try again later"),
    "shutting-down": ("system-shutdown", "the server is restarting, please reconnect"),
    "per-ip-connections": ("policy-violation", "too many connections from your address"),
    "per-ip-rate": ("policy-violation", "too many new connections from your address, slow down"),
}


class ClientSession(asyncio.BufferedProtocol):
    """One client connection from accept to close: its transport, timer, close and log line; the
    pre-TLS dialogue here, the rest in its Handshake and then its Relay."""

    __slots__ = (
        "_finished",
        "_task",
        "_timer",
        "cipher",
        "close_reason",
        "conn_id",
        "domain",
        "handshake",
        "listener",
        "negotiation",
        "peer",
        "peer_ip",
        "relay",
        "route",
        "server",
        "started",
        "state",
        "tls",
        "tls_started",
        "tls_version",
        "transport",
    )

    def __init__(self, server: SessionHost[ClientSession], listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.conn_id = next(_ids)
        self.state = State.PRE_TLS
        self.transport: asyncio.Transport | None = None
        self.negotiation: Negotiation | None = None  # the pre-TLS dialogue, dropped at STARTTLS
        self.domain: str | None = None  # the domain the client's pre-TLS stream header named
        self.peer = "-"
        self.peer_ip = ""
        self.started = time.monotonic()
        self.tls_started = self.started
        self.tls_version = "-"
        self.cipher = "-"
        self.close_reason: CloseReason | None = None  # the first reason the session ended for
        self.route = "-"  # "terminate", "passthrough" or "refused", once the ClientHello is read
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.handshake: Handshake | None = None  # from the first byte of TLS on
        self.tls: TlsEngine | None = None  # once this proxy terminates the client's TLS
        self.relay: Relay | None = None  # once TLS is up (ours, or Prosody's through a splice)
        self._finished = False

    @property
    def bytes_up(self) -> int:
        """Client -> backend, after TLS."""
        return self.relay.bytes_up if self.relay is not None else 0

    @property
    def bytes_down(self) -> int:
        """Backend -> client."""
        return self.relay.bytes_down if self.relay is not None else 0

    @property
    def backend(self) -> BackendConnection | None:
        return self.relay.backend if self.relay is not None else None

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
            self.end(Close.REFUSED, refused)
            return
        if self.listener.starttls:
            self.negotiation = Negotiation(server.domains, limits.pre_tls_max_bytes)
            self.arm_timer(limits.pre_tls_timeout, self._on_timeout)
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
        if state is State.RELAY or state is State.UNAVAILABLE:
            assert self.relay is not None
            self.relay.client_records(data)
        elif state is State.SPLICE:
            assert self.relay is not None
            self.relay.client_raw(data)
        elif state is State.PRE_TLS:
            self._pre_tls_data(bytes(data))
        elif state is State.HELLO:
            assert self.handshake is not None
            self.handshake.hello_data(bytes(data))
        elif state is State.SPLICING:
            assert self.relay is not None
            self.relay.client_early(data)
        elif state is State.HANDSHAKE or state is State.CONNECTING:
            assert self.tls is not None
            self.tls.receive(data)
            if state is State.HANDSHAKE:
                assert self.handshake is not None
                self.handshake.step()
            else:
                # Records that arrive while the backend connects wait here, still encrypted,
                # and reading stops until it is up: at most one read's worth, nothing grows.
                # (Pausing only now spares two syscalls when nothing comes meanwhile.)
                assert self.transport is not None
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.state is State.RELAY or self.state is State.SPLICE:
            assert self.relay is not None
            self.relay.half_close(Close.CLIENT_EOF)
            return True  # keep our write side open for the backend's answer
        self.end(Close.CLIENT_EOF)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.end(Close.CLIENT_ERROR, describe(exc))
        else:
            self.end(Close.CLIENT_CLOSED)
        self._finish()

    def pause_writing(self) -> None:
        # The client is slower than the backend: stop reading the backend until it drains.
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.resume_reading()

    # -- pre-TLS ---------------------------------------------------------------------

    def _pre_tls_data(self, data: bytes) -> None:
        assert self.negotiation is not None and self.transport is not None
        outcome = self.negotiation.receive_data(data)
        if outcome.send:
            self.transport.write(outcome.send)
        if outcome.action is Action.STARTTLS:
            self.cancel_timer()
            # The dialogue is over: keep its domain, not its parser (an idle session's memory).
            self.domain, self.negotiation = self.negotiation.domain, None
            self._begin_tls(self.server.contexts.for_domain(self.domain))
        elif outcome.action is Action.CLOSE:
            reason = CloseReason.of_negotiation(outcome.reason)
            self.end(reason.kind, reason.detail)

    def _on_timeout(self) -> None:
        if self.state is State.PRE_TLS and self.transport is not None and self.negotiation is not None:
            self.transport.write(self.negotiation.refuse("connection-timeout", "no <starttls/> in time"))
            self.end(Close.PRE_TLS_TIMEOUT)
        elif self.state in (State.HELLO, State.HANDSHAKE, State.SPLICING):
            assert self.handshake is not None
            self.handshake.log_fingerprint("handshake timed out")
            self.handshake_failed("timeout")
            self.end(Close.TLS_FAILED, "timeout")
        elif self.state is State.SPLICE:
            # Prosody's handshake, not ours (not a handshake failure of this proxy's TLS), but
            # the client stalled in it: no session may sit in a handshake without a deadline.
            self.end(Close.TLS_FAILED, "timeout (passed through)")

    # -- TLS -------------------------------------------------------------------------------

    def _begin_tls(self, ctx: ssl.SSLContext) -> None:
        """Wait for the ClientHello; no TLS state exists until it is routed."""
        self.state = State.HELLO
        # After <starttls/> the client's XML whitespace (go-sendxmpp's newline) is not TLS.
        self.handshake = Handshake(self, ctx, skip_whitespace=self.listener.starttls)
        self.tls_started = time.monotonic()
        self.arm_timer(self.server.settings.limits.handshake_timeout, self._on_timeout)

    # -- what the handshake and the relay use (host.HandshakeHost, host.RelayHost) -----------

    def handshake_failed(self, reason: str) -> None:
        self.server.handshake_failed(self, reason)

    def tls_up(self) -> None:
        """Our handshake is complete: the relay connects to the backend."""
        self.server.handshake_done(self)
        self.state = State.CONNECTING
        self._relay().connect()

    def terminate(self, raw: bytes) -> None:
        assert self.handshake is not None
        self.handshake.terminate(raw)

    def flush_tls(self) -> None:
        if self.tls is not None and self.transport is not None:
            records = self.tls.records_to_send()
            if len(records) == 1:
                self.transport.write(records[0])
            elif records:  # a burst encrypted slice by slice: one writev, no join
                self.transport.writelines(records)

    def splice(self, raw: bytes, sni: str | None) -> None:
        self.route = "passthrough"
        self.state = State.SPLICING
        self._relay().splice(raw, sni)

    def _relay(self) -> Relay:
        """The relay, made once TLS is up (or on its way to Prosody): a session that fails its
        handshake never has one. A splice that falls back to our TLS keeps the one it had."""
        if self.relay is None:
            self.relay = Relay(self)
        return self.relay

    def arm_timer(self, delay: float, callback: Callable[..., object], *args: Any) -> None:
        """The session's one timer (pre-TLS, handshake, backend answer, half-close), replaced."""
        self._timer = self.server.loop.call_later(delay, self._fire, callback, args)

    def _fire(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._timer = None
        callback(*args)

    def start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self._task = task = self.server.loop.create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A finished task is not kept (with its coroutine) for the life of the session."""
        if self._task is task:
            self._task = None

    def spliced(self) -> None:
        self.tls_version = "passthrough"
        assert self.handshake is not None
        self.handshake.passed_through()
        self.server.handshake_done(self)

    # -- closing -------------------------------------------------------------------------

    def shutdown(self, condition: str, text: str) -> None:
        """Close this session for a server stop: a stream error where we speak XMPP."""
        if self.state is State.CLOSED or self.transport is None:
            return
        if self.state is State.PRE_TLS and self.negotiation is not None:
            self.transport.write(self.negotiation.refuse(condition, text))
        elif self.state is State.RELAY:
            assert self.relay is not None
            self.relay.end_streams(condition, text)
        self.end(Close.SERVER_SHUTDOWN)

    def _finish(self) -> None:
        """Release the connection slot and write the one log line, exactly once."""
        if not self._finished:
            self._finished = True
            self.server.release(self)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def end(self, kind: Close, detail: str = "") -> None:
        """End the session (once); the first reason given is the one logged and counted."""
        if self.state is State.CLOSED:
            return
        reason = CloseReason(kind, detail)
        if self.state is State.HANDSHAKE and self.handshake is not None and self.handshake.unlogged:
            # The client hung up in the middle of our handshake (a device that does not trust
            # the certificate often just leaves): a failed handshake, logged with its fingerprint.
            self.handshake.log_fingerprint(f"handshake abandoned ({reason})")
            self.handshake_failed("eof")
        self.close_reason = self.close_reason or reason
        tls_up = self.state in (State.CONNECTING, State.RELAY, State.UNAVAILABLE)
        self.state = State.CLOSED
        self.cancel_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.relay is not None:
            self.relay.close()
        if tls_up and self.tls is not None:
            self.tls.close()  # queue our close_notify
            self.flush_tls()
        if self.transport is not None:
            self.transport.close()  # flushes what is queued, then closes

    def log_close(self) -> None:
        logsink.info(
            log,
            "conn=%d peer=%s listener=%s domain=%s tls=%s cipher=%s up=%d down=%d duration=%.3fs close=%s",
            self.conn_id,
            self.peer,
            self.listener.name,
            self.domain or "-",
            self.tls_version,
            self.cipher,
            self.bytes_up,
            self.bytes_down,
            time.monotonic() - self.started,
            self.close_reason or "-",  # str(CloseReason): the same text as before the enum
        )
