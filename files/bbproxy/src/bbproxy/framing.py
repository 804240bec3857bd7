"""Sans-IO parser for what an XMPP client sends before TLS (RFC 6120 §4.2, §5.4.2).

Bytes go in with :meth:`PreTlsParser.receive_data`; events come out of
:meth:`PreTlsParser.next_event`. No sockets, no asyncio, no ssl: the parser can be fed
any chunking of the input and gives the same events.

Only the little that may legally precede TLS is understood: an optional XML
declaration, the opening ``<stream:stream>`` tag, ``<starttls/>`` and the closing
``</stream:stream>``. Everything else ends the stream with the RFC 6120 §4.9.3 condition
that fits. No XML library is used, so no entity is ever expanded and no DTD is ever read
("billion laughs" cannot happen): DTDs, comments and processing instructions are refused
as ``restricted-xml`` (RFC 6120 §11.1). The syntax of a single tag (attributes, namespaces,
entities) is :mod:`bbproxy.xmltag`; this module finds the tags in the bytes and keeps the
stream's state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from .xmltag import BAD_CHARS_RE, NAME, Malformed, Tag, check_xml_declaration, parse_start_tag

STREAMS_NS: Final = "http://etherx.jabber.org/streams"
CLIENT_NS: Final = "jabber:client"
TLS_NS: Final = "urn:ietf:params:xml:ns:xmpp-tls"
XML_NS: Final = "http://www.w3.org/XML/1998/namespace"

DEFAULT_MAX_BYTES: Final = 8192


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The client opened its stream. Attribute values are already unescaped."""

    to: str | None
    from_: str | None
    version: str | None
    lang: str | None


@dataclass(frozen=True, slots=True)
class StartTls:
    """The client asked for TLS (``<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>``)."""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The client closed its stream (``</stream:stream>``) before TLS."""


@dataclass(frozen=True, slots=True)
class StreamError:
    """The input broke the protocol; ``condition`` is an RFC 6120 §4.9.3 element name."""

    condition: str
    text: str


class _NeedData(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by :meth:`PreTlsParser.next_event` when more bytes are needed."""

Event = StreamHeader | StartTls | StreamEnd | StreamError


class _State(Enum):
    PROLOG = 1  # before the stream header
    STREAM = 2  # inside the stream, before <starttls/>
    STARTTLS_OPEN = 3  # inside a non-empty <starttls>, waiting for </starttls>
    DONE = 4  # <starttls/> or </stream:stream> seen: nothing more is parsed
    FAILED = 5


_WHITESPACE: Final = b" \t\r\n"
_LT: Final = 0x3C
_GT: Final = 0x3E
# What ends a stretch of a tag: outside quotes a quote or an angle bracket; inside, that quote or '<'.
_TAG_SCAN_RE: Final = re.compile(rb"[\"'<>]")
_QUOTED_SCAN_RE: Final = {0x22: re.compile(rb'["<]'), 0x27: re.compile(rb"['<]")}
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_UTF16_BOMS: Final = (b"\xfe\xff", b"\xff\xfe")

_END_TAG_RE: Final = re.compile(r"</(" + NAME + r")\s*>\Z")
_VERSION_RE: Final = re.compile(r"([0-9]+)\.([0-9]+)\Z")


class PreTlsParser:
    """Incremental parser for the client half of a pre-TLS XMPP stream.

    ``max_bytes`` bounds everything a client may send before ``<starttls/>``; past it
    the parser answers ``policy-violation``. After :class:`StartTls`, bytes that arrived
    behind it are in :attr:`trailing_data` (a STARTTLS injection attempt if non-empty,
    RFC 6120 §5.4.3.3 / CVE-2011-0411).
    """

    __slots__ = (
        "_buf",
        "_error",
        "_header_qname",
        "_max_bytes",
        "_quote",
        "_received",
        "_scan_pos",
        "_seen_token",
        "_starttls_qname",
        "_state",
        "_stream_namespaces",
    )

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._buf = bytearray()
        self._max_bytes = max_bytes
        self._received = 0
        self._state = _State.PROLOG
        self._error: StreamError | None = None
        self._seen_token = False
        self._scan_pos = 1
        self._quote: int | None = None
        self._header_qname = ""
        self._starttls_qname = ""
        self._stream_namespaces: dict[str | None, str] = {"xml": XML_NS}

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the last event; meaningful once StartTls was returned."""
        return bytes(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client. Never raises for any input."""
        self._received += len(data)
        if self._state in (_State.DONE, _State.FAILED):
            self._buf += data
            return
        if self._received > self._max_bytes:
            self._fail("policy-violation", "too much data before TLS")
            return
        self._buf += data

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or NEED_DATA. After an error the same error is returned again."""
        if self._error is not None:
            return self._error
        try:
            return self._next_event()
        except Malformed as exc:
            return self._fail(exc.condition, exc.text)

    # -- internals -----------------------------------------------------------------

    def _fail(self, condition: str, text: str) -> StreamError:
        self._state = _State.FAILED
        self._error = StreamError(condition, text)
        self._buf.clear()
        return self._error

    def _next_event(self) -> Event | _NeedData:
        while self._state not in (_State.DONE, _State.FAILED):
            buf = self._buf
            if not self._seen_token:
                # A byte-order mark may arrive split over reads: wait until it is whole, so the
                # answer never depends on how the bytes were chunked.
                if len(buf) == 1 and buf[0] in (0xFE, 0xFF):
                    return NEED_DATA
                if len(buf) < 3 and _UTF8_BOM.startswith(bytes(buf)) and buf:
                    return NEED_DATA
                if buf.startswith(_UTF8_BOM):
                    del buf[:3]
                if bytes(buf[:2]) in _UTF16_BOMS:
                    raise Malformed("unsupported-encoding", "only UTF-8 is allowed")
            skip = 0
            while skip < len(buf) and buf[skip] in _WHITESPACE:
                skip += 1
            if skip:
                if not self._seen_token and self._state is _State.PROLOG:
                    # Whitespace may come before the stream header but not before <?xml ?>.
                    self._seen_token = True
                del buf[:skip]
                self._scan_pos = 1
            if not buf:
                return NEED_DATA
            if buf[0] != _LT:
                if self._state is _State.PROLOG:
                    raise Malformed("not-well-formed", "expected an XML stream header")
                raise Malformed("bad-format", "text is not allowed here")
            if len(buf) >= 2 and buf[1] == 0x21:  # "<!": comment, CDATA or DTD
                raise Malformed("restricted-xml", "comments, CDATA and DTDs are not allowed")
            end = self._find_tag_end()
            if end is None:
                return NEED_DATA
            token = bytes(buf[: end + 1])
            del buf[: end + 1]
            self._scan_pos = 1
            self._quote = None
            event = self._handle_token(token)
            if event is not None:
                return event
        return NEED_DATA

    def _find_tag_end(self) -> int | None:
        """Index of the '>' that ends the tag at buf[0], resuming the previous scan.

        A regex jumps to the next byte that matters (a quote or an angle bracket; inside a
        quoted value, that quote or '<'), so a tag costs a few steps, not one per byte.
        """
        buf = self._buf
        i = self._scan_pos
        quote = self._quote
        while True:
            match = (_TAG_SCAN_RE if quote is None else _QUOTED_SCAN_RE[quote]).search(buf, i)
            if match is None:
                self._scan_pos = len(buf)
                self._quote = quote
                return None
            i = match.start()
            byte = buf[i]
            if quote is not None:
                if byte == _LT:
                    raise Malformed("not-well-formed", "'<' in an attribute value")
                quote = None
            elif byte == _GT:
                return i
            elif byte == _LT:
                raise Malformed("not-well-formed", "unexpected '<' inside a tag")
            else:
                quote = byte
            i += 1

    def _handle_token(self, token: bytes) -> Event | None:
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("unsupported-encoding", "input is not valid UTF-8") from None
        if BAD_CHARS_RE.search(text):
            raise Malformed("not-well-formed", "character not allowed in XML")
        first = not self._seen_token
        self._seen_token = True
        if text.startswith("<?"):
            if first and self._state is _State.PROLOG:
                check_xml_declaration(text)
                return None
            raise Malformed("restricted-xml", "processing instructions are not allowed")
        if text.startswith("</"):
            return self._handle_end_tag(text)
        tag = parse_start_tag(text, self._stream_namespaces)
        if self._state is _State.PROLOG:
            return self._handle_header(tag)
        if self._state is _State.STARTTLS_OPEN:
            raise Malformed("bad-format", "<starttls/> takes no children")
        return self._handle_stream_child(tag)

    def _handle_header(self, tag: Tag) -> StreamHeader:
        if tag.local != "stream" or tag.namespaces.get(tag.prefix) != STREAMS_NS:
            raise Malformed("invalid-namespace", "expected <stream:stream> in the streams namespace")
        if tag.empty:
            raise Malformed("bad-format", "the stream header must not be an empty element")
        if tag.namespaces.get(None) != CLIENT_NS:
            raise Malformed("invalid-namespace", "the stream's content namespace must be jabber:client")
        version = tag.attrs.get("version")
        version_match = _VERSION_RE.match(version) if version is not None else None
        if version_match is None or int(version_match.group(1)) != 1:
            raise Malformed("unsupported-version", "XMPP version 1.0 is required")
        self._state = _State.STREAM
        self._header_qname = tag.qname
        self._stream_namespaces = {k: v for k, v in tag.namespaces.items()}
        return StreamHeader(
            to=tag.attrs.get("to"),
            from_=tag.attrs.get("from"),
            version=version,
            lang=tag.attrs.get("xml:lang"),
        )

    def _handle_stream_child(self, tag: Tag) -> StartTls | None:
        if tag.local == "starttls" and tag.namespaces.get(tag.prefix) == TLS_NS:
            if tag.empty:
                self._state = _State.DONE
                return StartTls()
            self._state = _State.STARTTLS_OPEN
            self._starttls_qname = tag.qname
            return None
        raise Malformed("policy-violation", "TLS is required: send <starttls/> first")

    def _handle_end_tag(self, text: str) -> StartTls | StreamEnd:
        match = _END_TAG_RE.match(text)
        if match is None:
            raise Malformed("not-well-formed", "malformed end tag")
        qname = match.group(1)
        if self._state is _State.STARTTLS_OPEN and qname == self._starttls_qname:
            self._state = _State.DONE
            return StartTls()
        if self._state is _State.STREAM and qname == self._header_qname:
            self._state = _State.DONE
            return StreamEnd()
        raise Malformed("not-well-formed", "mismatched end tag")
