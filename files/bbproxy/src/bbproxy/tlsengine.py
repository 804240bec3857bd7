"""The TLS engine of a terminated session: an ``ssl.SSLObject`` over two ``ssl.MemoryBIO`` (sans-IO).

Records from the client go in with :meth:`TlsEngine.receive`; what OpenSSL has for the client
(handshake flights, alerts, records, close_notify) comes out of :meth:`TlsEngine.data_to_send`.
No socket, no asyncio: the session owns the one plain transport and decides when to write, which
is why a ClientHello that arrives the instant ``<proceed/>`` leaves cannot be lost (session.py's
docstring says why ``loop.start_tls()`` is not used). Neither BIO is given more than a slice at a
time, in either direction: what a BIO once held, the session keeps. A slice is ``SMALL_SLICE``, a
TCP segment's record, unless a bulk transfer is on (``BIO_SLICE``).

Errors are OpenSSL's own (``ssl.SSLError``, ``OSError``) and go to the caller, who knows what they
end; only "want more input" is answered here (False from :meth:`handshake`, None from :meth:`read`).
"""

from __future__ import annotations

import contextlib
import ssl
from time import monotonic
from typing import Final

# One TLS record carries at most 16 KiB of plaintext.
READ_SIZE: Final = 16384

# The most either memory BIO is given at a time. An ``ssl.MemoryBIO`` keeps its buffer at the
# biggest size ever written to it until the session ends (OpenSSL's BUF_MEM grows, never shrinks).
# One read of up to 256 KiB from the client, or one write of that much from Prosody, put into a BIO
# at once would leave the session holding about 4/3 of it per direction once idle again (a roster,
# offline messages or a history sync at login): 266 KiB per idle session after one 256 KiB burst
# each way, against 20 KiB without (bench/run.py --only idle,idle_burst). In slices of this size, a
# session keeps at most about 4/3 of a slice per direction: 68 KiB after that burst. A slice is one
# record's plaintext; 4 KiB slices kept less but cost 40-75 % more relay CPU in a bulk transfer.
BIO_SLICE: Final = 16384

# The slice for everything but bulk. What XMPP moves is stanzas: a roster, a vCard with its avatar,
# offline messages, from one to a few tens of KiB, and with 16 KiB slices every session that once
# relayed a few KiB kept twice haproxy's memory, idle (38.7 against 18.7 KiB after an 8 KiB stanza
# each way, 58.4 against 18.4 after 32 KiB: bench/socket_bio.py --bursts). In slices that fit one
# TCP segment as a record (1 369 bytes of plaintext, where Cloudflare's dynamic TLS record patch
# for nginx starts) the outgoing BIO never outgrows the server's first flight, and neither BIO keeps
# more than about 2 KiB. Records that small cost a few per cent more bytes and CPU: 4.7 us more per
# KiB at TLS 1.0, 1.5 at TLS 1.2 (0.15 ms once for a 32 KiB vCard, against 17-37 KiB held for the
# session's life), and 60-70 % more relay CPU in a bulk transfer. So, as in dynamic record sizing,
# a burst (bytes one way with no pause of BURST_GAP seconds: records from the client, plaintext to
# it) goes in small slices for its first BULK bytes and in BIO_SLICE slices after. BULK
# is Prosody's default c2s_stanza_size_limit: a session that never moved more than one stanza's
# worth at once keeps small BIOs, and a bulk transfer pays for small records only at its start.
SMALL_SLICE: Final = 1369
BULK: Final = 256 * 1024
BURST_GAP: Final = 1.0


def _burst(size: int, last: float, nbytes: int, now: float) -> int:
    """A burst of ``size`` bytes, the last of them at ``last``, after ``nbytes`` more at ``now``:
    a pause of more than BURST_GAP starts a new one."""
    return (size if now - last <= BURST_GAP else 0) + nbytes


def _slice(burst: int) -> int:
    """How much a BIO is given at a time ``burst`` bytes into a burst."""
    return BIO_SLICE if burst > BULK else SMALL_SLICE


class TlsEngine:
    """Server-side TLS for one client, from its ClientHello on."""

    __slots__ = (
        "_encrypted",
        "_in_at",
        "_in_burst",
        "_incoming",
        "_out_at",
        "_out_burst",
        "_outgoing",
        "_sslobj",
        "_unfed",
        "_unfed_at",
    )

    def __init__(self, ctx: ssl.SSLContext, received: bytes = b"") -> None:
        """``received``: what the client already sent (its ClientHello, read before routing)."""
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = ctx.wrap_bio(self._incoming, self._outgoing, server_side=True)
        # What was received but not yet given to the incoming BIO (a read bigger than a slice),
        # from _unfed_at on.
        self._unfed: bytes | None = None
        self._unfed_at = 0
        # Records taken out of the outgoing BIO slice by slice, not yet asked for (data_to_send).
        self._encrypted: list[bytes] | None = None
        # Each way, the current burst's bytes and when the last of them passed (the slice size).
        self._in_burst = self._out_burst = 0
        self._in_at = self._out_at = 0.0
        self.receive(received)

    def receive(self, data: bytes | memoryview) -> None:
        """Bytes from the client: copied (into OpenSSL's buffer, or kept here until it wants more),
        so a view may be reused after."""
        now = monotonic()
        self._in_burst = burst = _burst(self._in_burst, self._in_at, len(data), now)
        self._in_at = now
        if self._unfed is not None:
            self._unfed = self._unfed[self._unfed_at :] + data
            self._unfed_at = 0
            return
        room = max(_slice(burst) - self._incoming.pending, 0)
        if len(data) <= room:
            self._incoming.write(data)
            return
        with memoryview(data) as view:
            if room:
                self._incoming.write(view[:room])
            self._unfed = bytes(view[room:])
        self._unfed_at = 0

    def _feed(self) -> bool:
        """Give the incoming BIO the next slice of what was kept back; False if nothing was."""
        unfed = self._unfed
        if unfed is None:
            return False
        at = self._unfed_at
        size = _slice(self._in_burst)
        with memoryview(unfed) as view:
            self._incoming.write(view[at : at + size])
        at += size
        if at >= len(unfed):
            self._unfed = None
        self._unfed_at = at
        return True

    def handshake(self) -> bool:
        """One handshake step on what was received: True once the handshake is complete, False
        while it needs more from the client. A failure raises; its alert is in data_to_send()."""
        while True:
            try:
                self._sslobj.do_handshake()
            except ssl.SSLWantReadError:
                if not self._feed():
                    return False
            else:
                return True

    def read(self) -> bytes | None:
        """The plaintext of what was received, at most one record's worth; None when a whole record
        is not there yet; ``b""`` for the client's close_notify (over a MemoryBIO, read() returns
        ``b""`` for it)."""
        while True:
            try:
                return self._sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                # OpenSSL took every byte the BIO had (a partial record waits in its own buffer).
                if not self._feed():
                    return None

    def write(self, data: bytes | memoryview) -> None:
        """Encrypt ``data`` for the client, a slice at a time; the records wait for
        records_to_send() (or data_to_send())."""
        now = monotonic()
        self._out_burst = burst = _burst(self._out_burst, self._out_at, len(data), now)
        self._out_at = now
        size = _slice(burst)
        if len(data) <= size:
            self._sslobj.write(data)
            return
        encrypted = self._encrypted
        if encrypted is None:
            encrypted = self._encrypted = []
        with memoryview(data) as view:
            for start in range(0, len(view), size):
                self._sslobj.write(view[start : start + size])
                encrypted.append(self._outgoing.read())

    def records_to_send(self) -> list[bytes]:
        """Everything queued for the client, in order, as the pieces it was taken out in (a
        transport's writelines() sends them without joining them first); ``[]`` if nothing is."""
        records = self._encrypted
        if records is None:
            return [self._outgoing.read()] if self._outgoing.pending else []
        self._encrypted = None
        if self._outgoing.pending:
            records.append(self._outgoing.read())
        return records

    def data_to_send(self) -> bytes:
        """Everything queued for the client, in one piece (``b""`` if nothing is)."""
        return b"".join(self.records_to_send())

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
