"""The sans-IO pre-TLS parser: bytes in, events out, for any chunking and any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbproxy.framing import (
    NEED_DATA,
    PreTlsParser,
    StartTls,
    StreamEnd,
    StreamError,
    StreamHeader,
)

# Its own bytes, not kit.stream_header(): the cases below edit them by exact substring.
HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream to='example.test' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>"
)
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


def events(data: bytes, chunks: list[int] | None = None, max_bytes: int = 8192) -> list[object]:
    """Feed data (split at the given sizes) and collect every event until NEED_DATA or the end."""
    parser = PreTlsParser(max_bytes)
    out: list[object] = []
    pieces = []
    if chunks:
        pos = 0
        for size in chunks:
            pieces.append(data[pos : pos + size])
            pos += size
        pieces.append(data[pos:])
    else:
        pieces = [data]
    for piece in pieces:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            out.append(event)
            if isinstance(event, (StreamError, StartTls, StreamEnd)):
                return out
    return out


def error_of(data: bytes, **kw: object) -> str:
    result = events(data, **kw)  # type: ignore[arg-type]
    assert result and isinstance(result[-1], StreamError), result
    return result[-1].condition


def test_header_then_starttls() -> None:
    result = events(HEADER + STARTTLS)
    assert result == [StreamHeader("example.test", None, "1.0", "en"), StartTls()]


def test_header_without_prolog_and_double_quotes() -> None:
    data = (
        b'<stream:stream xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams"'
        b' to="Example.Test" from="alice@example.test" version="1.0">'
    )
    assert events(data) == [StreamHeader("Example.Test", "alice@example.test", "1.0", None)]


def test_byte_at_a_time_gives_the_same_events() -> None:
    data = HEADER + b"\n " + STARTTLS
    assert events(data, chunks=[1] * len(data)) == events(data)


def test_other_prefix_and_non_empty_starttls() -> None:
    data = (
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'"
        b" to='a.test' version='1.0'>"
        b"<t:starttls xmlns:t='urn:ietf:params:xml:ns:xmpp-tls'></t:starttls>"
    )
    assert events(data)[-1] == StartTls()


def test_greater_than_inside_attribute_value() -> None:
    data = HEADER.replace(b"to='example.test'", b"to='a>b' id='&lt;&#65;&#x42;'")
    header = events(data)[0]
    assert isinstance(header, StreamHeader) and header.to == "a>b"


def test_trailing_data_after_starttls_is_kept_for_the_caller() -> None:
    parser = PreTlsParser()
    parser.receive_data(HEADER + STARTTLS + b"<auth/>")
    assert isinstance(parser.next_event(), StreamHeader)
    assert parser.next_event() == StartTls()
    assert parser.trailing_data == b"<auth/>"


def test_client_closes_stream() -> None:
    assert events(HEADER + b"</stream:stream>")[-1] == StreamEnd()


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (
            HEADER + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNl</auth>",
            "policy-violation",
        ),
        (HEADER + b"<starttls/>", "policy-violation"),  # jabber:client namespace, not the TLS one
        (HEADER.replace(b"jabber:client", b"jabber:server"), "invalid-namespace"),
        (HEADER.replace(b"http://etherx.jabber.org/streams", b"urn:wrong"), "invalid-namespace"),
        (HEADER.replace(b"streams' version='1.0'", b"streams'"), "unsupported-version"),
        (HEADER.replace(b"streams' version='1.0'", b"streams' version='2.0'"), "unsupported-version"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not-well-formed"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not-well-formed"),  # a TLS record before STARTTLS
        (b"<!DOCTYPE lol [<!ENTITY a 'aaaa'>]>", "restricted-xml"),
        (b"<!-- hi -->", "restricted-xml"),
        (HEADER + b"<?php echo 1 ?>", "restricted-xml"),
        (HEADER.replace(b"to='example.test'", b"to='&lol;'"), "not-well-formed"),
        (HEADER.replace(b"to='example.test'", b"to='a' to='b'"), "not-well-formed"),
        (HEADER.replace(b"example.test", b"ex\x00ample"), "not-well-formed"),
        (HEADER.replace(b"example.test", b"ex\xff\xfeample"), "unsupported-encoding"),
        (b"\xff\xfe<\x00", "unsupported-encoding"),
        (b"<?xml version='1.0' encoding='ISO-8859-1'?>", "unsupported-encoding"),
        (HEADER.replace(b"<stream:stream", b"<foo:stream"), "not-well-formed"),
        (HEADER[:-1] + b"/>", "bad-format"),
        (HEADER + b"hello", "bad-format"),
        (HEADER + b"</stream:streamx>", "not-well-formed"),
        (b"<stream:stream <", "not-well-formed"),
        (b"  <?xml version='1.0'?>", "restricted-xml"),  # the declaration must come first
    ],
)
def test_bad_input_gives_the_rfc_condition(data: bytes, condition: str) -> None:
    assert error_of(data) == condition


def test_byte_cap_is_policy_violation() -> None:
    data = HEADER.replace(b"xml:lang='en'", b"xml:lang='" + b"x" * 200 + b"'")
    assert error_of(data, max_bytes=100) == "policy-violation"


def test_error_is_sticky() -> None:
    parser = PreTlsParser()
    parser.receive_data(b"junk")
    first = parser.next_event()
    parser.receive_data(HEADER)
    assert parser.next_event() == first


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=60))
def test_any_chunking_gives_the_same_events(sizes: list[int]) -> None:
    data = b"\xef\xbb\xbf" + HEADER + b"\r\n\t " + STARTTLS + b"trailing"
    expected = events(data)
    assert events(data, chunks=sizes) == expected


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=50), max_size=20))
def test_random_bytes_only_ever_give_events_or_stream_errors(data: bytes, sizes: list[int]) -> None:
    # Never raises; anything that ends is a proper event.
    for event in events(data, chunks=sizes):
        assert isinstance(event, StreamHeader | StartTls | StreamEnd | StreamError)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=100))
def test_random_bytes_after_a_valid_header_never_reach_starttls_unless_they_are_starttls(junk: bytes) -> None:
    result = events(HEADER + junk)
    if StartTls() in result:
        assert b"starttls" in junk
