"""Sans-IO pre-TLS negotiation: the proxy's own half of the stream before TLS.

The proxy answers the client's stream header itself (RFC 6120 §4.2 and §5.4.2): its own
header, features that require STARTTLS, ``<proceed/>``. The backend is not contacted
before TLS, so no pre-TLS byte can ever reach it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum
from typing import Final
from xml.sax.saxutils import quoteattr

from .framing import (
    NEED_DATA,
    PreTlsParser,
    StartTls,
    StreamEnd,
    StreamError,
    StreamHeader,
)

STREAM_ERROR_NS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
PROCEED: Final = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
FEATURES: Final = (
    b"<stream:features>"
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"</stream:features>"
)
STREAM_CLOSE: Final = b"</stream:stream>"
_XML_WHITESPACE: Final = b" \t\r\n"  # XML's S production (XML 1.0 §2.3)


class Action(Enum):
    CONTINUE = "continue"  # write `send`, keep reading
    STARTTLS = "starttls"  # write `send` (<proceed/>), then start the TLS handshake
    CLOSE = "close"  # write `send`, then close the connection


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    send: bytes = b""
    reason: str = ""


def stream_header(domain: str | None, stream_id: str | None = None) -> bytes:
    """The proxy's opening stream tag, with a fresh random id unless one is given."""
    sid = stream_id if stream_id is not None else secrets.token_hex(8)
    from_attr = f" from={quoteattr(domain)}" if domain else ""
    return (
        "<?xml version='1.0'?>"
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        f" id='{sid}'{from_attr} version='1.0' xml:lang='en'>"
    ).encode()


def stream_error(condition: str, text: str = "") -> bytes:
    """A ``<stream:error/>`` followed by the closing tag (RFC 6120 §4.9)."""
    text_el = f"<text xmlns='{STREAM_ERROR_NS}' xml:lang='en'>{_escape_text(text)}</text>" if text else ""
    return (
        f"<stream:error><{condition} xmlns='{STREAM_ERROR_NS}'/>{text_el}</stream:error>"
    ).encode() + STREAM_CLOSE


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Negotiation:
    """Drive one client's pre-TLS dialogue: bytes in, an :class:`Outcome` out.

    ``domains`` are the served domains in lower case. A stream without ``to`` is
    accepted only when exactly one domain is served (RFC 6120 §4.7.2 lets the server
    pick then).
    """

    __slots__ = ("_domains", "_header_sent", "_parser", "_stream_id_factory", "domain")

    def __init__(
        self,
        domains: Collection[str],
        max_bytes: int,
        stream_id_factory: Callable[[], str] | None = None,
    ) -> None:
        self._domains = domains
        self._parser = PreTlsParser(max_bytes)
        self._header_sent = False
        self._stream_id_factory = stream_id_factory
        self.domain: str | None = None

    def receive_data(self, data: bytes) -> Outcome:
        self._parser.receive_data(data)
        out: list[bytes] = []
        while True:
            event = self._parser.next_event()
            if event is NEED_DATA:
                return Outcome(Action.CONTINUE, b"".join(out))
            if isinstance(event, StreamHeader):
                error = self._accept_header(event)
                if error is not None:
                    out.append(self._error_bytes(*error))
                    return Outcome(Action.CLOSE, b"".join(out), error[0])
                out.append(self._header_bytes() + FEATURES)
            elif isinstance(event, StartTls):
                if self._parser.trailing_data.lstrip(_XML_WHITESPACE):
                    # Bytes pipelined behind <starttls/> would be read as TLS or, worse, be
                    # taken as sent under TLS: STARTTLS command injection (CVE-2011-0411).
                    # XML whitespace is still the plaintext stream (go-sendxmpp ends the element
                    # with a newline, Prosody accepts it): it is dropped, never relayed.
                    out.append(
                        self._error_bytes("policy-violation", "data after <starttls/> before <proceed/>")
                    )
                    return Outcome(Action.CLOSE, b"".join(out), "starttls-injection")
                out.append(PROCEED)
                return Outcome(Action.STARTTLS, b"".join(out), "starttls")
            elif isinstance(event, StreamEnd):
                out.append(STREAM_CLOSE)
                return Outcome(Action.CLOSE, b"".join(out), "client-closed-stream")
            else:
                assert isinstance(event, StreamError)
                out.append(self._error_bytes(event.condition, event.text))
                return Outcome(Action.CLOSE, b"".join(out), event.condition)

    def refuse(self, condition: str, text: str = "") -> bytes:
        """Bytes that end the stream with ``condition`` (e.g. a timeout or shutdown)."""
        return self._error_bytes(condition, text)

    def _accept_header(self, header: StreamHeader) -> tuple[str, str] | None:
        if header.to is None:
            if len(self._domains) == 1:
                self.domain = next(iter(self._domains))
                return None
            return ("host-unknown", "the stream header must name a domain")
        domain = header.to.strip().rstrip(".").lower()
        if domain not in self._domains:
            return ("host-unknown", "this server does not serve that domain")
        self.domain = domain
        return None

    def _header_bytes(self) -> bytes:
        self._header_sent = True
        sid = self._stream_id_factory() if self._stream_id_factory else None
        return stream_header(self.domain, sid)

    def _error_bytes(self, condition: str, text: str) -> bytes:
        prefix = b"" if self._header_sent else self._header_bytes()
        return prefix + stream_error(condition, text)
