"""Sans-IO: bbproxy's side of STARTTLS with Prosody, for a spliced client (``tls.splice = "starttls"``).

A modern client's TLS goes to Prosody untouched (channel binding, Prosody's TLS policy), but to a
plaintext c2s port that reads a PROXY header first (the role's ``mod_bbproxy_proxy``,
``bbproxy_proxy_starttls_ports``), so Prosody sees the client's address. Before the client's
ClientHello may go there, bbproxy opens the stream itself (:func:`opening`, ``to`` = the client's
domain), waits for features offering ``<starttls/>``, asks for it and reads ``<proceed/>``. Only
then is the connection Prosody's TLS, and the client's bytes follow. (A PROXY header in front of
direct TLS cannot work on Prosody 0.12: LuaSocket reads past the header into the ClientHello,
which OpenSSL, reading the raw socket, then never sees.)

Nothing of the client's own pre-TLS stream is sent: its header and ``<starttls/>`` were answered
by the proxy (negotiation.py); this is a separate dialogue, ours.

:class:`StartTlsDialogue` is fed Prosody's bytes and answers with a :class:`Step`. Prosody's XML
is read with the same tag syntax as a client's (xmltag.py, no XML library), bounded in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import quoteattr

from .framing import STREAMS_NS, TLS_NS, XML_NS
from .xmltag import BAD_CHARS_RE, Malformed, check_xml_declaration, parse_start_tag

STARTTLS: Final = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
_STREAM: Final = (STREAMS_NS, "stream")
_FEATURES: Final = (STREAMS_NS, "features")
_ERROR: Final = (STREAMS_NS, "error")
_STARTTLS: Final = (TLS_NS, "starttls")
_PROCEED: Final = (TLS_NS, "proceed")


def opening(domain: str) -> bytes:
    """Our stream header to Prosody, as a client's: ``to`` is the domain the client asked for."""
    return (
        "<?xml version='1.0'?>"
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        f" to={quoteattr(domain)} version='1.0'>"
    ).encode()


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after Prosody's bytes: write ``send`` to it; ``ready`` once ``<proceed/>`` is read
    (the client's TLS may go through now); ``failure`` when STARTTLS will not happen, and why."""

    send: bytes = b""
    ready: bool = False
    failure: str | None = None


_WAIT: Final = Step()


class StartTlsDialogue:
    """Prosody's answer to :func:`opening`, up to ``<proceed/>``; at most ``max_bytes`` of it."""

    __slots__ = ("_asked", "_buf", "_done", "_element", "_max_bytes", "_offered", "_received", "_scopes")

    def __init__(self, max_bytes: int) -> None:
        self._buf = bytearray()
        self._max_bytes = max_bytes
        self._received = 0
        # Namespaces in scope per open element; [0] is the document's, [1] the stream's.
        self._scopes: list[dict[str | None, str]] = [{"xml": XML_NS}]
        self._element: tuple[str, str] | None = None  # the open child of the stream
        self._offered = False  # <starttls/> among the features
        self._asked = False  # our <starttls/> sent
        self._done = False

    def receive_data(self, data: bytes) -> Step:
        """Prosody's bytes, in any chunking; after a ready or failed step, nothing more is read."""
        if self._done:
            return _WAIT
        self._received += len(data)
        if self._received > self._max_bytes:
            return self._fail(f"more than {self._max_bytes} bytes before <proceed/>")
        self._buf += data
        try:
            return self._steps()
        except Malformed as exc:
            return self._fail(f"{exc.condition}: {exc.text}")

    def _fail(self, why: str) -> Step:
        self._done = True
        return Step(failure=why)

    def _steps(self) -> Step:
        send = b""
        while self._buf:
            step = self._token()
            if step is None:
                break
            if step.failure is not None or step.ready:
                self._done = True
                return step
            send += step.send
        return Step(send=send)

    def _token(self) -> Step | None:
        """Consume one token (a tag, or text between tags); None if it is not all here yet."""
        buf = self._buf
        if buf[0] != 0x3C:  # text: whitespace between elements, or inside a feature
            end = buf.find(b"<")
            if len(self._scopes) <= 1 and buf[: len(buf) if end < 0 else end].strip():
                raise Malformed("not-well-formed", "text outside the stream")
            del buf[: len(buf) if end < 0 else end]
            return _WAIT
        end = buf.find(b">")
        if end < 0:
            return None
        try:
            text = bytes(buf[: end + 1]).decode()
        except UnicodeDecodeError:
            raise Malformed("not-well-formed", "not UTF-8") from None
        del buf[: end + 1]
        if BAD_CHARS_RE.search(text) or text.startswith("<!"):
            raise Malformed("restricted-xml", "a character, comment or DTD not allowed here")
        if text.startswith("<?"):
            if len(self._scopes) > 1:
                raise Malformed("restricted-xml", "a processing instruction")
            check_xml_declaration(text)
            return _WAIT
        if text.startswith("</"):
            return self._end()
        return self._start(text)

    def _start(self, text: str) -> Step:
        tag = parse_start_tag(text, self._scopes[-1])
        name = (tag.namespaces.get(tag.prefix, ""), tag.local)
        depth = len(self._scopes)
        if depth == 1:
            if name != _STREAM or tag.empty:
                raise Malformed("invalid-namespace", "not an XMPP stream header")
        elif depth == 2:
            self._element = name
        elif depth == 3 and self._element == _FEATURES and name == _STARTTLS:
            self._offered = True
        if not tag.empty:
            self._scopes.append(tag.namespaces)
            return _WAIT
        return self._closed(depth, name)

    def _end(self) -> Step:
        if len(self._scopes) <= 1:
            raise Malformed("not-well-formed", "an end tag with no element open")
        self._scopes.pop()
        depth = len(self._scopes)
        return self._closed(depth, self._element if depth == 2 else None)

    def _closed(self, depth: int, name: tuple[str, str] | None) -> Step:
        """An element that started at ``depth`` (1: the stream itself) is complete."""
        if depth == 1:
            return Step(failure="Prosody closed the stream")
        if depth != 2:
            return _WAIT
        self._element = None
        if name == _ERROR:
            return Step(failure="Prosody sent a stream error")
        if name == _FEATURES and not self._asked:
            if not self._offered:
                return Step(failure="Prosody offered no STARTTLS")
            if self._buf:  # Prosody cannot have answered a <starttls/> not yet sent
                return Step(failure="bytes before our <starttls/>")
            self._asked = True
            return Step(send=STARTTLS)
        if name == _PROCEED and self._asked:
            if self._buf:
                return Step(failure="bytes after <proceed/>")
            return Step(ready=True)
        return Step(failure=f"unexpected <{name[1] if name else '?'}/> from Prosody")
