"""ClientHello parsing on real ClientHellos and hostile bytes.

Real ones: Python's ssl, openssl s_client at TLS 1.0-1.3 and slixmpp, the last two captured after
a pre-TLS XMPP dialogue, as the proxy sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbproxy.clienthello import MAX_RECORDS, ClientHelloParser
from bbproxy.fingerprints import identify
from bbproxy.hello_message import ClientHello, ClientHelloError, is_grease
from bbproxy.tls import Policy, cipher_string

from .helpers import as_records, handshake_message, supported_versions, with_extension


def python_hello(
    version: ssl.TLSVersion, sni: str | None = "example.test", alpn: list[str] | None = None
) -> bytes:
    """The ClientHello bytes Python's ssl sends, captured from an in-memory client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers(cipher_string(Policy.LEGACY))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def parse_all(data: bytes, chunk: int) -> ClientHello | None:
    parser = ClientHelloParser()
    result = None
    for i in range(0, len(data), chunk):
        result = parser.feed(data[i : i + chunk])
        if result is not None:
            return result
    return result


def test_tls10_hello_from_python() -> None:
    hello = parse_all(python_hello(ssl.TLSVersion.TLSv1, alpn=["xmpp-client"]), 4096)
    assert hello is not None
    assert hello.max_version == 0x0301
    assert hello.sni == "example.test"
    assert hello.alpn == ("xmpp-client",)
    assert 0xC013 in hello.ciphers  # ECDHE-RSA-AES128-SHA
    assert "versions=TLSv1 " in hello.summary()
    assert len(hello.ja3()) == 32


def test_fingerprint_is_ja3_and_summary_shared_by_equal_hellos() -> None:
    # Two handshakes of one device: different random and session id, the same fingerprint.
    data = [python_hello(ssl.TLSVersion.TLSv1) for _ in range(2)]
    first, second = (parse_all(d, 4096) for d in data)
    assert data[0] != data[1] and first is not None and second is not None and first is not second
    who = identify(first)
    assert (who.ja3, who.summary.split(" ja4=")[0]) == (first.ja3(), first.summary())
    assert identify(second) is who
    other = parse_all(python_hello(ssl.TLSVersion.TLSv1, sni="other.test"), 4096)
    assert other is not None and identify(other).summary != who.summary


def test_tls13_hello_names_every_offered_version_and_groups() -> None:
    hello = parse_all(python_hello(ssl.TLSVersion.TLSv1_3, sni=None), 4096)
    assert hello is not None
    assert hello.max_version == 0x0304 and hello.legacy_version == 0x0303
    assert hello.sni is None
    assert 0x001D in hello.groups  # x25519
    assert "sni=-" in hello.summary()


def test_any_chunking_gives_the_same_hello() -> None:
    data = python_hello(ssl.TLSVersion.TLSv1_2)
    whole = parse_all(data, len(data))
    assert whole is not None
    for size in (1, 2, 5, 7, 100):
        assert parse_all(data, size) == whole


def test_hello_split_over_two_records() -> None:
    data = python_hello(ssl.TLSVersion.TLSv1_2)
    body = data[5:]
    half = len(body) // 2
    two_records = (
        data[:3]
        + half.to_bytes(2, "big")
        + body[:half]
        + data[:3]
        + (len(body) - half).to_bytes(2, "big")
        + body[half:]
    )
    assert parse_all(two_records, 64) == parse_all(data, 64)


# Records a client may send right behind its ClientHello, in the same write (tlsfuzzer does):
# warning alerts (test-ssl-death-alert.py), a change_cipher_spec (TLS 1.3 middlebox mode), a second
# handshake record, application data. They are OpenSSL's to judge, so the parser must neither
# refuse them nor drop them: the hello is complete, and ``buffered`` is every byte, in order.
TRAILING_RECORDS = [
    b"\x15\x03\x03\x00\x02\x01\x2b" * 5,  # warning alerts (unsupported_certificate)
    b"\x14\x03\x03\x00\x01\x01",  # change_cipher_spec
    b"\x16\x03\x03\x00\x04\x10\x00\x00\x00",  # another handshake message
    b"\x17\x03\x03\x00\x03abc",  # application data
    b"\x15\x03",  # half a record header
]


@pytest.mark.parametrize("trailing", TRAILING_RECORDS)
def test_records_behind_the_hello_are_kept_for_openssl(trailing: bytes) -> None:
    data = python_hello(ssl.TLSVersion.TLSv1_2)
    alone = parse_all(data, len(data))
    assert alone is not None
    for size in (len(data) + len(trailing), len(data) - 1, 7):
        parser = ClientHelloParser()
        hello = None
        fed = 0
        while hello is None and fed < len(data) + len(trailing):
            hello = parser.feed((data + trailing)[fed : fed + size])
            fed += size
        assert hello == alone, size
        assert parser.buffered == (data + trailing)[:fed]


def capture_hello(client: Callable[[int], object], *, xmpp: bool = False) -> bytes:
    """The ClientHello bytes a real client sends, caught by a loopback server that does no TLS.

    With ``xmpp`` the server first plays the pre-TLS dialogue (header, features, <proceed/>),
    as bbproxy does, so XMPP clients get as far as their STARTTLS ClientHello.
    """
    captured = bytearray()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                if xmpp:
                    data = b""
                    while b"<starttls" not in data and (chunk := conn.recv(4096)):
                        data += chunk
                        if (
                            data.rstrip().endswith(b">")
                            and b"<stream:stream" in data
                            and b"features" not in data
                        ):
                            conn.sendall(XMPP_HEADER + XMPP_FEATURES)
                            data += b"features"  # answered once
                    conn.sendall(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                parser = ClientHelloParser()
                while (chunk := conn.recv(4096)) and parser.feed(chunk) is None:
                    pass
                captured.extend(parser.buffered)

        thread = threading.Thread(target=accept)
        thread.start()
        client(port)
        thread.join(20)
    return bytes(captured)


XMPP_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='c1' from='example.test' version='1.0'>"
)
XMPP_FEATURES = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"</stream:features>"
)


@pytest.mark.parametrize(
    ("flag", "version"),
    [("-tls1", 0x0301), ("-tls1_1", 0x0302), ("-tls1_2", 0x0303), ("-tls1_3", 0x0304)],
)
def test_openssl_s_client_hello_at_each_version(flag: str, version: int) -> None:
    """A hello from a different TLS stack: what `openssl s_client -starttls xmpp` sends."""

    def s_client(port: int) -> None:
        subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "xmpp",
             "-xmpphost", "example.test", flag, "-cipher", "DEFAULT:@SECLEVEL=0",
             "-servername", "legacy.test"],
            input=b"", capture_output=True, timeout=20, check=False,
        )  # fmt: skip

    hello = parse_all(capture_hello(s_client, xmpp=True), 4096)
    assert hello is not None
    assert hello.max_version == version and hello.sni == "legacy.test"


def test_slixmpp_starttls_hello() -> None:
    """What slixmpp (the client library the integration tests log in with) offers by default."""
    slixmpp = pytest.importorskip("slixmpp")

    def client(port: int) -> None:
        async def run() -> None:
            xmpp = slixmpp.ClientXMPP("alice@example.test", "not-used")
            xmpp.enable_plaintext = False
            xmpp.enable_direct_tls = False  # slixmpp 1.17 tries direct TLS first by default
            xmpp.enable_starttls = True
            xmpp.connect("127.0.0.1", port)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(xmpp.disconnected, 15)
            xmpp.abort()

        asyncio.run(run())

    hello = parse_all(capture_hello(client, xmpp=True), 4096)
    assert hello is not None
    assert hello.max_version == 0x0304 and hello.sni == "example.test"
    assert not any(c in hello.ciphers for c in (0x000A, 0x0005, 0x0004))  # no 3DES, no RC4


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x05\x01\x00\x02\x00\x00",  # SSL 2.0 itself (version 0x0002)
        b"\x80\x09\x02\x03\x01\x00\x03\x00\x00\x00\x00",  # SSLv2 format, not a ClientHello
        b"\x80\x0a\x01\x03\x01\x00\x02\x00\x00\x00\x00\x00",  # cipher specs of 2 bytes
        b"\x80\x0c\x01\x03\x01\x00\x03\x00\x00\x00\x10\x00\x00\x2f",  # challenge missing
        b"GET / HTTP/1.1\r\n",
        b"\x17\x03\x01\x00\x05hello",  # application data
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello, not a ClientHello
        b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x01",  # truncated body
    ],
)
def test_bad_input_is_a_clienthello_error(data: bytes) -> None:
    with pytest.raises(ClientHelloError):
        ClientHelloParser().feed(data)


def sslv2_format_hello(version: int, specs: list[int], challenge: bytes = bytes(16)) -> bytes:
    """An SSLv2-compatible ClientHello (RFC 5246 E.2), the format of Java 6 and IE 6."""
    spec_bytes = b"".join(spec.to_bytes(3, "big") for spec in specs)
    body = bytes([1]) + version.to_bytes(2, "big")
    body += len(spec_bytes).to_bytes(2, "big") + b"\x00\x00" + len(challenge).to_bytes(2, "big")
    body += spec_bytes + challenge
    return (0x8000 | len(body)).to_bytes(2, "big") + body


def test_sslv2_format_hello_is_read_in_any_chunking() -> None:
    """Its TLS suites and version count (SSL 2.0 cipher specs do not), so it is routed like others."""
    data = sslv2_format_hello(0x0301, [0x00002F, 0x010080, 0x000035, 0x0000FF])
    for size in (1, 2, 3, len(data)):
        parser = ClientHelloParser()
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        results = [parser.feed(chunk) for chunk in chunks]
        assert results[:-1] == [None] * (len(chunks) - 1)
        assert results[-1] == ClientHello(
            legacy_version=0x0301,
            supported_versions=(),
            ciphers=(0x002F, 0x0035, 0x00FF),
            extensions=(),
            groups=(),
            point_formats=(),
            sni=None,
            alpn=(),
        )
        assert parser.buffered == data
    hello = results[-1]
    assert hello is not None and hello.max_version == 0x0301
    assert hello.ja3_string() == "769,47-53-255,,,"


def test_oversized_hello_is_refused() -> None:
    parser = ClientHelloParser(max_bytes=1024)
    header = b"\x16\x03\x01\x40\x00" + b"\x01\x00\x3f\xfc"  # claims a 16 KiB hello
    with pytest.raises(ClientHelloError, match="too large"):
        parser.feed(header)


def test_grease() -> None:
    assert is_grease(0x0A0A) and is_grease(0xFAFA)
    assert not is_grease(0x0A0B) and not is_grease(0x1301)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(ClientHelloError):
        ClientHelloParser().feed(b"\x16\x03\x01" + data)
    with contextlib.suppress(ClientHelloError):
        ClientHelloParser().feed(b"\x80" + data)  # SSLv2-format header


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_real_hellos_never_raise_anything_else(data: st.DataObject) -> None:
    hello = bytearray(python_hello(ssl.TLSVersion.TLSv1_2))
    for _ in range(data.draw(st.integers(1, 8))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ClientHelloError):
        ClientHelloParser().feed(bytes(hello))


# -- versions: only what this side knows counts (issue 15, item 3) ----------------------------


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ((0x0305, 0x0301), 0x0301),  # an unknown "newer" version does not make a TLS 1.0 client modern
        ((0x7F1C, 0x0302, 0x0301), 0x0302),  # a draft number, then TLS 1.1
        ((0x0304, 0x0303), 0x0304),
        ((0x0305,), 0),  # nothing in common
    ],
)
def test_max_version_counts_only_known_versions(offered: tuple[int, ...], expected: int) -> None:
    record = with_extension(python_hello(ssl.TLSVersion.TLSv1), 43, supported_versions(*offered))
    hello = ClientHelloParser().feed(record)
    assert hello is not None and hello.max_version == expected


def test_legacy_version_alone_means_at_most_tls12() -> None:
    message = bytearray(handshake_message(python_hello(ssl.TLSVersion.TLSv1_2)))
    message[4:6] = b"\x03\x04"  # legacy_version 1.3 without supported_versions: not a 1.3 client
    hello = ClientHelloParser().feed(as_records(bytes(message)))
    assert hello is not None and hello.max_version == 0x0303


# -- fragmentation: linear, bounded, same answer however the records are cut (item 2) ----------


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 400))
def test_any_record_size_and_read_size_gives_the_same_hello(record_size: int, read_size: int) -> None:
    whole = python_hello(ssl.TLSVersion.TLSv1_2)
    expected = ClientHelloParser().feed(whole)
    fragmented = as_records(handshake_message(whole), record_size)
    parser = ClientHelloParser()
    result = None
    for i in range(0, len(fragmented), read_size):
        result = parser.feed(fragmented[i : i + read_size])
        if result is not None:
            break
    assert result == expected
    assert parser.buffered == fragmented[: len(parser.buffered)]


def test_a_hello_in_too_many_records_is_not_read() -> None:
    message = handshake_message(python_hello(ssl.TLSVersion.TLSv1_2))
    padded = with_extension(as_records(message), 21, bytes(MAX_RECORDS))  # RFC 7685 padding
    parser = ClientHelloParser()
    with pytest.raises(ClientHelloError, match=f"more than {MAX_RECORDS} records"):
        parser.feed(as_records(handshake_message(padded), 1))
    ok = ClientHelloParser().feed(as_records(message, max(1, len(message) // (MAX_RECORDS - 1) + 1)))
    assert ok is not None


def test_each_record_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 KiB of one-byte records fed a byte at a time: the work grows with the records, not with
    their square (the parser used to re-walk every record from byte 0 on each read: 0.86 s of CPU
    for one such hello). Counted, not timed: record headers read, at most twice each."""
    import bbproxy.clienthello as module

    class Counting:
        calls = 0

        def unpack_from(self, buf: bytearray, pos: int) -> tuple[int, int, int]:
            Counting.calls += 1
            return module.struct.unpack_from("!BHH", buf, pos)  # type: ignore[return-value]

    monkeypatch.setattr(module, "_RECORD_HEADER", Counting())
    padded = with_extension(python_hello(ssl.TLSVersion.TLSv1_2), 21, bytes(16384 - 600))
    message = handshake_message(padded)
    records = as_records(message, 1)
    parser = ClientHelloParser(max_bytes=len(records), max_records=len(message))
    result = None
    for i in range(len(records)):
        result = parser.feed(records[i : i + 1])
    assert result is not None and len(message) > 15000
    assert Counting.calls <= 2 * len(message)


# -- whitespace after <starttls/> (go-sendxmpp's newline) -------------------------------------


def test_whitespace_before_the_hello_is_dropped_on_starttls_only() -> None:
    hello = python_hello(ssl.TLSVersion.TLSv1)
    parser = ClientHelloParser(skip_whitespace=True)
    assert parser.feed(b"\n") is None and parser.feed(b" \r\n\t") is None
    parsed = parser.feed(hello)
    assert parsed is not None and parser.buffered == hello and parser.skipped == 5
    with pytest.raises(ClientHelloError, match="not a TLS handshake record"):
        ClientHelloParser().feed(b"\n" + hello)  # direct TLS: a newline is not TLS


def test_whitespace_is_bounded() -> None:
    parser = ClientHelloParser(max_bytes=64, skip_whitespace=True)
    parser.feed(b" " * 64)
    with pytest.raises(ClientHelloError, match="too much whitespace"):
        parser.feed(b" ")
    assert parser.buffered == b""


def test_other_bytes_before_the_hello_are_still_not_tls() -> None:
    with pytest.raises(ClientHelloError, match="not a TLS handshake record"):
        ClientHelloParser(skip_whitespace=True).feed(b"\n<iq/>")
