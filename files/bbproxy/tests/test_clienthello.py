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

from bbproxy.clienthello import ClientHello, ClientHelloError, ClientHelloParser, fingerprint, is_grease
from bbproxy.tls import cipher_string


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
        ctx.set_ciphers(cipher_string("1.0"))
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
    assert fingerprint(first) == (first.ja3(), first.summary())
    assert fingerprint(second) is fingerprint(first)
    other = parse_all(python_hello(ssl.TLSVersion.TLSv1, sni="other.test"), 4096)
    assert other is not None and fingerprint(other)[1] != fingerprint(first)[1]


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
        b"\x80\x2e\x01\x03\x01",  # SSLv2-format hello
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


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_real_hellos_never_raise_anything_else(data: st.DataObject) -> None:
    hello = bytearray(python_hello(ssl.TLSVersion.TLSv1_2))
    for _ in range(data.draw(st.integers(1, 8))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ClientHelloError):
        ClientHelloParser().feed(bytes(hello))
