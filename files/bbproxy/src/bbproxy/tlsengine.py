"""The TLS engine of a terminated session: an ``ssl.SSLObject`` over two ``ssl.MemoryBIO`` (sans-IO).

Records from the client go in with :meth:`TlsEngine.receive`; what OpenSSL has for the client
(handshake flights, alerts, records, close_notify) comes out of :meth:`TlsEngine.data_to_send`.
No socket, no asyncio: the session owns the one plain transport and decides when to write, which
is why a ClientHello that arrives the instant ``<proceed/>`` leaves cannot be lost (session.py's
docstring says why ``loop.start_tls()`` is not used).

Errors are OpenSSL's own (``ssl.SSLError``, ``OSError``) and go to the caller, who knows what they
end; only "want more input" is answered here (False from :meth:`handshake`, None from :meth:`read`).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final

# One TLS record carries at most 16 KiB of plaintext.
READ_SIZE: Final = 16384


class TlsEngine:
    """Server-side TLS for one client, from its ClientHello on."""

    __slots__ = ("_incoming", "_outgoing", "_sslobj")

    def __init__(self, ctx: ssl.SSLContext, received: bytes = b"") -> None:
        """``received``: what the client already sent (its ClientHello, read before routing)."""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = ctx.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._incoming.write(received)

    def receive(self, data: bytes | memoryview) -> None:
        """Bytes from the client: copied into OpenSSL's buffer, so a view may be reused after."""
        self._incoming.write(data)

    def handshake(self) -> bool:
        """One handshake step on what was received: True once the handshake is complete, False
        while it needs more from the client. A failure raises; its alert is in data_to_send()."""
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def read(self) -> bytes | None:
        """The plaintext of what was received, at most one record's worth; None when a whole record
        is not there yet; ``b""`` for the client's close_notify (over a MemoryBIO, read() returns
        ``b""`` for it)."""
        try:
            return self._sslobj.read(READ_SIZE)
        except ssl.SSLWantReadError:
            return None

    def write(self, data: bytes | memoryview) -> None:
        """Encrypt ``data`` for the client; the records wait in data_to_send()."""
        self._sslobj.write(data)

    def data_to_send(self) -> bytes:
        """Everything queued for the client (``b""`` if nothing is)."""
        return self._outgoing.read() if self._outgoing.pending else b""

    def close(self) -> None:
        """Queue our close_notify; errors are ignored, the connection is ending anyway."""
        with contextlib.suppress(ssl.SSLError, OSError):
            self._sslobj.unwrap()

    @property
    def version(self) -> str:
        """The negotiated protocol ("TLSv1", ..., "TLSv1.3"), "-" before the handshake ends."""
        return self._sslobj.version() or "-"

    @property
    def cipher(self) -> str:
        """The negotiated cipher suite's OpenSSL name, "-" before the handshake ends."""
        cipher = self._sslobj.cipher()
        return cipher[0] if cipher else "-"
