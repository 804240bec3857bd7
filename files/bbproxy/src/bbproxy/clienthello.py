"""Sans-IO parser for a TLS ClientHello: device fingerprints and routing.

This module reassembles the hello from the records a client sends (bounded, linear, with the
SSLv2-compatible form and STARTTLS whitespace); :mod:`bbproxy.hello_message` decodes the
message into a :class:`ClientHello` and renders its fingerprints.

The proxy sees the handshake bytes before OpenSSL does (its TLS runs over MemoryBIOs), so
it can say, per legacy or failed handshake, what the device offered: versions, suites,
SNI, ALPN, groups and a JA3 hash. That is how an operator finds out which devices still
need TLS 1.0, and why one fails; and the proxy decides from it who gets its own TLS and
who is passed through to Prosody's. Bounded in size; any malformed input is a
:class:`ClientHelloError`, never another exception.
"""

from __future__ import annotations

import struct
from typing import Final

from .hello_message import CLIENT_HELLO, parse_client_hello, parse_sslv2_client_hello

# Re-exported (`X as X`): session.py, routing.py and tests import these from here.
from .hello_message import TLS_1_2 as TLS_1_2
from .hello_message import VERSION_NAMES as VERSION_NAMES
from .hello_message import ClientHello as ClientHello
from .hello_message import ClientHelloError as ClientHelloError

MAX_BYTES: Final = 16384  # a ClientHello larger than this is not one we need to read
_RECORD_HEADER: Final = struct.Struct("!BHH")  # content type, version, length
_HANDSHAKE: Final = 0x16
# A ClientHello split over more records than this is refused with an alert. Real clients use one
# record (two past 16 KiB); tlsfuzzer's fragmentation cases use at most a few hundred.
MAX_RECORDS: Final = 512
_XML_WHITESPACE: Final = b" \t\r\n"  # XML's S production (XML 1.0 §2.3)


class ClientHelloRefused(ClientHelloError):
    """A ClientHello this proxy refuses to read at all (a documented decision, docs/security.md):
    split over more than ``max_records`` records. Real clients send one; passed on, OpenSSL
    would spend ~0.3 µs a record on a 16 KiB hello cut into 16 000 of them."""


class ClientHelloParser:
    """Feed the first bytes of a TLS connection; ``feed`` returns the ClientHello once complete.

    Linear in what it is fed: each record is walked once, when it is whole, and its payload
    appended once to the handshake message being reassembled (a hello sent as thousands of
    one-byte records costs no more than the bytes it takes). Bounded: ``max_bytes`` of records,
    ``max_records`` records.

    ``skip_whitespace``: on a STARTTLS connection, XML whitespace that the client sent after
    ``<starttls/>`` (a newline, a keepalive) is still part of its XML stream, not of TLS: it is
    dropped before the first record, counted against ``max_bytes``, and never replayed.
    """

    __slots__ = (
        "_body",
        "_buf",
        "_max",
        "_max_records",
        "_needed",
        "_pos",
        "_records",
        "_skip_whitespace",
        "_skipped",
        "_sslv2",
    )

    def __init__(
        self, max_bytes: int = MAX_BYTES, *, max_records: int = MAX_RECORDS, skip_whitespace: bool = False
    ) -> None:
        self._buf = bytearray()  # every byte since the first record's, exactly as received
        self._max = max_bytes
        self._body = bytearray()  # the handshake message, from the whole records so far
        self._pos = 0  # where the next record header starts in _buf
        self._records = 0
        self._max_records = max_records
        self._needed = 0  # the handshake message's length with its header, once known
        self._skip_whitespace = skip_whitespace
        self._skipped = 0
        self._sslv2 = False  # an SSLv2-compatible hello (Java 6, IE 6): one record of its own format

    @property
    def buffered(self) -> bytes:
        """Every byte fed so far (less leading whitespace), exactly as received: what to replay to
        whoever does the TLS."""
        return bytes(self._buf)

    @property
    def skipped(self) -> int:
        """How many bytes of XML whitespace were dropped before the first record."""
        return self._skipped

    def feed(self, data: bytes) -> ClientHello | None:
        if self._skip_whitespace and not self._buf:
            stripped = data.lstrip(_XML_WHITESPACE)
            self._skipped += len(data) - len(stripped)
            if self._skipped > self._max:
                raise ClientHelloError("too much whitespace before the ClientHello")
            data = stripped
            if not data:
                return None
        buf = self._buf
        if not buf:
            if not data:
                return None
            if data[0] & 0x80:
                self._sslv2 = True
            elif data[0] != _HANDSHAKE:
                raise ClientHelloError("not a TLS handshake record")
        buf += data
        if self._sslv2:
            return self._sslv2_record()
        while self._pos + 5 <= len(buf):
            content_type, _, length = _RECORD_HEADER.unpack_from(buf, self._pos)
            if content_type != _HANDSHAKE:
                raise ClientHelloError("ClientHello interrupted by another record type")
            if length == 0 or length > 16384 + 2048:
                raise ClientHelloError("bad record length")
            start = self._pos + 5
            end = start + length
            if end > len(buf):
                if not self._needed:  # judge the message header as soon as its 4 bytes are here
                    self._judge(self._body + buf[start : start + 4])
                break
            self._records += 1
            if self._records > self._max_records:
                raise ClientHelloRefused(f"ClientHello split over more than {self._max_records} records")
            self._body += buf[start:end]
            self._pos = end
            if not self._needed:
                self._judge(self._body)
            if self._needed and len(self._body) >= self._needed:
                return parse_client_hello(bytes(self._body[4 : self._needed]))
        if len(buf) > self._max:
            raise ClientHelloError("ClientHello too large")
        return None

    def _sslv2_record(self) -> ClientHello | None:
        """The SSLv2-compatible hello (one record, 2-byte header with the high bit set)."""
        buf = self._buf
        if len(buf) < 2:
            return None
        needed = 2 + (((buf[0] & 0x7F) << 8) | buf[1])
        if needed > self._max:
            raise ClientHelloError("ClientHello too large")
        if len(buf) < needed:
            return None
        return parse_sslv2_client_hello(bytes(buf[2:needed]))

    def _judge(self, head: bytes | bytearray) -> None:
        """Check the handshake header once its 4 bytes are known: a ClientHello, within bounds."""
        if len(head) < 4:
            return
        if head[0] != CLIENT_HELLO:
            raise ClientHelloError("first handshake message is not a ClientHello")
        needed = 4 + int.from_bytes(head[1:4], "big")
        if needed > self._max:
            raise ClientHelloError("ClientHello too large")
        self._needed = needed
