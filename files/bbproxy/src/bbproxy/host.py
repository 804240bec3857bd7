"""What the pieces of a session need of each other, and the states they move it through.

The server (server.py) is a :class:`SessionHost` to each session; the session (session.py)
orchestrates, and its handshake (handshake.py) and its relay (relay.py) act for it through
:class:`HandshakeHost` and :class:`RelayHost`, so none of them imports another's class.

Life of a STARTTLS session (a direct-TLS session starts at HELLO)::

    PRE_TLS --<starttls/>--> HELLO --legacy, or terminate-all--> HANDSHAKE --TLS up--> CONNECTING
                               |                                     ^          backend up: RELAY
                               |                                     |        backend down: UNAVAILABLE
                               |--modern, legacy-only--> SPLICING ---' Prosody's TLS port down
                               |                            `--connected--> SPLICE (raw bytes;
                               |                       handshake_timeout until Prosody answered
                               |                       the client's second flight)
                               `--legacy, address not allowed--> CLOSED (protocol_version alert)

The session moves itself up to HANDSHAKE and SPLICING; the relay moves it on from CONNECTING and
SPLICING. Every callback checks the state first: once a session is CLOSED, late callbacks (a
timer, a backend that finishes connecting) do nothing. That is the lesson of the Node.js
prototype, whose stale close handler aborted its own handshakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .closing import Close, CloseReason
    from .config import Settings
    from .tls import TlsContexts
    from .tlsengine import TlsEngine

# The server's side of the contract is typed with the session class (session.ClientSession) as a
# parameter, so that this module does not import it.
_Session = TypeVar("_Session", contravariant=True)


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


class Listener(Protocol):
    """The listener a session came in on (listeners.Listener)."""

    @property
    def starttls(self) -> bool: ...

    @property
    def name(self) -> str: ...


class SessionHost(Protocol[_Session]):
    """What a session needs of the server it belongs to (server.ProxyServer): settings, the loop,
    the TLS contexts, admission and the accounting calls. Nothing else of the server is used."""

    settings: Settings
    loop: asyncio.AbstractEventLoop
    contexts: TlsContexts
    domains: frozenset[str]

    def admit(self, session: _Session) -> str | None: ...

    def release(self, session: _Session) -> None: ...

    def legacy_allowed(self, ip: str) -> bool: ...

    def legacy_client(self, family: str, outcome: str, named: bool) -> None: ...

    def handshake_done(self, session: _Session) -> None: ...

    def handshake_failed(self, session: _Session, reason: str) -> None: ...

    def backend_failed(self) -> None: ...


class RelayServer(Protocol):
    """What the relay needs of the server (server.ProxyServer, through the session)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def backend_failed(self) -> None: ...


class RelayHost(Protocol):
    """What the relay needs of its session (session.ClientSession)."""

    state: State
    close_reason: CloseReason | None

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def tls(self) -> TlsEngine | None: ...

    @property
    def server(self) -> RelayServer: ...

    @property
    def conn_id(self) -> int: ...

    @property
    def domain(self) -> str | None: ...

    def arm_timer(self, delay: float, callback: Callable[..., object], *args: Any) -> None:
        """Replace the session's one timer."""

    def cancel_timer(self) -> None: ...

    def start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` for the session; cancelled if the session closes first."""

    def flush_tls(self) -> None: ...

    def spliced(self) -> None:
        """Prosody's TLS port took the ClientHello: the handshake is Prosody's."""

    def terminate(self, raw: bytes) -> None:
        """Prosody's TLS port is down: terminate the TLS that starts with ``raw`` here."""

    def end(self, kind: Close, detail: str = "") -> None:
        """Close the session (once; the first reason is the one logged)."""


class HandshakeServer(Protocol):
    """What the handshake needs of the server (server.ProxyServer, through the session)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def contexts(self) -> TlsContexts: ...

    def legacy_allowed(self, ip: str) -> bool: ...

    def legacy_client(self, family: str, outcome: str, named: bool) -> None: ...


class HandshakeHost(Protocol):
    """What the handshake needs of its session (session.ClientSession)."""

    state: State
    route: str
    tls: TlsEngine | None
    tls_version: str
    cipher: str

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def server(self) -> HandshakeServer: ...

    @property
    def conn_id(self) -> int: ...

    @property
    def peer_ip(self) -> str: ...

    def flush_tls(self) -> None: ...

    def cancel_timer(self) -> None: ...

    def splice(self, raw: bytes, sni: str | None) -> None:
        """Route the client, still encrypted, to Prosody's TLS port (``raw``: its ClientHello,
        ``sni``: the server name in it)."""

    def handshake_failed(self, reason: str) -> None: ...

    def tls_up(self) -> None:
        """Our handshake is complete: on to the backend."""

    def end(self, kind: Close, detail: str = "") -> None: ...
