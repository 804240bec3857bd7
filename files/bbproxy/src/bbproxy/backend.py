"""The backend side of a session: the connection to Prosody (its plaintext port, opened only after
the client's TLS is up, or its own TLS for a spliced session), with backpressure both ways, the
PROXY protocol header that names the client to it, and, for a splice through STARTTLS, the
dialogue that gets Prosody to ``<proceed/>`` first (:func:`starttls`). relay.py moves the bytes."""

from __future__ import annotations

import asyncio
from typing import Final, Protocol, cast

from . import proxy_protocol
from .backend_starttls import StartTlsDialogue, opening
from .closing import Close, describe

# Every socket of this process reads into this one buffer (BufferedProtocol): a read is consumed
# (decrypted, encrypted, or copied) before the loop reads again, so one buffer serves all
# sessions, and relayed bytes skip the per-read bytes object a plain Protocol gets.
RECV_BUFFER: Final = memoryview(bytearray(256 * 1024))


class BackendPeer(Protocol):
    """What the backend side needs of the client side (relay.Relay)."""

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's transport."""

    def from_backend(self, data: bytes | memoryview) -> None: ...

    def backend_closed(self, kind: Close, detail: str = "") -> None: ...

    def relaying(self) -> bool:
        """Whether bytes flow both ways now (relay or splice): reading may resume."""
        ...


def proxy_header(transport: asyncio.Transport | None, version: str) -> bytes:
    """PROXY protocol header naming the client, so Prosody logs and limits the real address."""
    assert transport is not None
    peer = transport.get_extra_info("peername")
    local = transport.get_extra_info("sockname")
    src = (str(peer[0]), int(peer[1])) if peer else ("", 0)
    dst = (str(local[0]), int(local[1])) if local else ("", 0)
    return proxy_protocol.encode(version, src, dst)


class BackendConnection(asyncio.BufferedProtocol):
    """The plaintext connection to Prosody, opened only after the client's TLS is up."""

    __slots__ = ("_closed", "_eof_sent", "client", "transport")

    def __init__(self, client: BackendPeer) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self._closed = False
        self._eof_sent = False  # after write_eof() a transport refuses write()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return RECV_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.client.from_backend(RECV_BUFFER[:nbytes])

    def eof_received(self) -> bool:
        self.client.backend_closed(Close.BACKEND_CLOSED)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if exc is not None:
            self.client.backend_closed(Close.BACKEND_ERROR, describe(exc))
        else:
            self.client.backend_closed(Close.BACKEND_CLOSED)

    def pause_writing(self) -> None:
        # Prosody is slower than the client: stop reading the client until it drains.
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self.client.transport
        if transport is not None and not transport.is_closing() and self.client.relaying():
            transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed and not self._eof_sent:
            self.transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        if self.transport is not None and not self._closed and not self._eof_sent:
            self.transport.writelines(chunks)

    def write_eof(self) -> None:
        if (
            self.transport is not None
            and not self._closed
            and not self._eof_sent
            and self.transport.can_write_eof()
        ):
            self._eof_sent = True
            self.transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()


class _DialoguePeer:
    """The backend connection's peer while bbproxy does STARTTLS with Prosody: Prosody's bytes go
    to the dialogue, our answers back to Prosody; the client's bytes wait (reading is paused)."""

    __slots__ = ("_backend", "_dialogue", "done", "transport")

    def __init__(
        self, backend: BackendConnection, dialogue: StartTlsDialogue, done: asyncio.Future[str | None]
    ) -> None:
        self._backend = backend
        self._dialogue = dialogue
        self.done = done  # None once Prosody said <proceed/>, else why not
        self.transport = backend.client.transport

    def from_backend(self, data: bytes | memoryview) -> None:
        step = self._dialogue.receive_data(bytes(data))
        if step.send:
            self._backend.write(step.send)
        if not self.done.done() and (step.ready or step.failure is not None):
            self.done.set_result(step.failure)

    def backend_closed(self, kind: Close, detail: str = "") -> None:
        if not self.done.done():
            self.done.set_result(
                f"Prosody closed the connection ({kind.value}{': ' + detail if detail else ''})"
            )

    def relaying(self) -> bool:
        return False


async def starttls(
    backend: BackendConnection, header: bytes, domain: str, timeout: float, max_bytes: int
) -> str | None:
    """Send ``header`` (a PROXY header, or nothing) and our stream to ``domain``, then STARTTLS, all
    within ``timeout``: None once Prosody said ``<proceed/>`` (its TLS is next), else why not."""
    peer = backend.client
    done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    backend.client = _DialoguePeer(backend, StartTlsDialogue(max_bytes), done)
    backend.write(header + opening(domain))
    try:
        async with asyncio.timeout(timeout):
            failure = await done
    except TimeoutError:
        failure = f"no <proceed/> in {timeout:g}s"
    if failure is None:
        backend.client = peer
    return failure
