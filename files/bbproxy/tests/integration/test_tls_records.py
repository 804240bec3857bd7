"""The sans-IO reader of a server's first flight (tls_records.py), on flights from real OpenSSL.

The server side is the proxy's own context (``bbproxy.tls.build_context``) with the trustme
certificates; client and server talk over memory BIOs, no socket.
"""

from __future__ import annotations

import contextlib
import ssl

import pytest

from bbproxy import tls

from .support import DOMAIN, CertPair, Certs, client_context
from .tls_records import (
    Alert,
    Closed,
    HelloRetry,
    Negotiated,
    ServerFlightReader,
    TlsRecordError,
)


def server_context(pair: CertPair, min_tls: str, client_version: str = "1.2") -> ssl.SSLContext:
    """The proxy's context that a client of ``client_version`` gets (its policy class)."""
    legacy = client_version in ("1.0", "1.1") and tls.has_legacy_policy(min_tls)
    policy = tls.Policy.LEGACY if legacy else tls.Policy.MODERN
    return tls.build_context(tls.CertPair(pair.cert, pair.key), policy, min_tls)


def first_flight(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """The bytes ``server`` answers ``client``'s ClientHello with (alerts included)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=DOMAIN)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls_client.do_handshake()
    s_in.write(c_out.read())
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
        tls_server.do_handshake()
    return s_out.read()


def read(data: bytes, chunk: int | None = None) -> object:
    reader = ServerFlightReader()
    size = chunk or max(len(data), 1)
    for i in range(0, len(data), size):
        outcome = reader.receive_data(data[i : i + size])
        if outcome is not None:
            return outcome
    return reader.receive_eof()


def refragment(flight: bytes, size: int) -> bytes:
    """The same handshake bytes in records of at most ``size`` bytes (messages span records)."""
    out, pos = b"", 0
    while pos < len(flight):
        header, length = flight[pos : pos + 3], int.from_bytes(flight[pos + 3 : pos + 5], "big")
        payload = flight[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if header[0] != 22:
            out += header + length.to_bytes(2, "big") + payload
            continue
        for i in range(0, len(payload), size):
            piece = payload[i : i + size]
            out += header + len(piece).to_bytes(2, "big") + piece
    return out


@pytest.mark.parametrize(
    ("kind", "version", "expected"),
    [
        ("rsa", "1.2", Negotiated("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", "RSA")),
        ("ecdsa", "1.0", Negotiated("TLSv1", "ECDHE-ECDSA-AES128-SHA", "EC")),
        ("rsa", "1.1", Negotiated("TLSv1.1", "ECDHE-RSA-AES128-SHA", "RSA")),
        ("ecdsa", "1.3", Negotiated("TLSv1.3", "TLS_AES_256_GCM_SHA384", "encrypted")),
    ],
)
def test_negotiated_in_any_chunking_and_fragmentation(
    certs: Certs, kind: str, version: str, expected: Negotiated
) -> None:
    flight = first_flight(server_context(certs.pair(kind), "1.0", version), client_context(version, None))
    assert read(flight) == expected
    assert read(flight, chunk=1) == expected
    assert read(refragment(flight, 7)) == expected
    assert str(expected).startswith(expected.version)


def test_alert_before_any_server_hello(certs: Certs) -> None:
    flight = first_flight(server_context(certs.rsa, "1.2", "1.0"), client_context("1.0", None))
    assert read(flight) == Alert("fatal", "protocol_version")
    assert str(read(flight)) == "alert fatal protocol_version"


def test_hello_retry_request(certs: Certs) -> None:
    server = server_context(certs.ecdsa, "1.0")
    server.set_ecdh_curve("secp384r1")  # the client's one key share is x25519
    outcome = read(first_flight(server, client_context("1.3", None)))
    assert outcome == HelloRetry("TLS_AES_256_GCM_SHA384", "secp384r1")


def test_close_without_an_answer() -> None:
    assert read(b"") == Closed()
    reader = ServerFlightReader()
    assert reader.receive_data(b"\x16\x03\x03\x00") is None  # a partial record header, then EOF
    assert str(reader.receive_eof()) == "closed"


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        b"\x17\x03\x03\x00\x01x",  # application data before a ServerHello
        b"\x16\x03\x03\x00\x04\x0b\x00\x00\x00",  # a Certificate before a ServerHello
        b"\x16\x03\x03\x00\x06\x02\x00\x00\x02\x03\x03",  # a truncated ServerHello
    ],
)
def test_not_a_server_answer(data: bytes) -> None:
    with pytest.raises(TlsRecordError):
        ServerFlightReader().receive_data(data)
