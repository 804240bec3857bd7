"""Hostile and broken clients before TLS, against one proxy whose backend records every byte.

The backend is a recording relay in front of the real Prosody: logins through it work, and
the tests can assert that a refused client caused no backend connection at all. The tests run
in file order against the same proxy; the last one checks that it still serves a real client.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .support import (
    DOMAIN,
    STARTTLS,
    STREAM_NS,
    Certs,
    Prosody,
    ProxyProcess,
    ProxyStarter,
    RecordingBackend,
    client_context,
    client_hello,
    connect,
    open_stream,
    read_proceed,
    recv_until,
    recv_until_closed,
    run_login_check,
    stream_error_condition,
    stream_header,
    xmpp_over_tls,
)

pytestmark = pytest.mark.integration

PRE_TLS_TIMEOUT = 1.5
PRE_TLS_MAX_BYTES = 2048
AUTH = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"
# What RFC 6120 §4.9.3 offers for "you sent something you may not send here".
POLICY_CONDITIONS = {"policy-violation", "not-authorized", "unsupported-stanza-type"}
MALFORMED_CONDITIONS = {"not-well-formed", "bad-format", "restricted-xml", "unsupported-encoding"}


@dataclass(frozen=True)
class Guarded:
    proxy: ProxyProcess
    backend: RecordingBackend
    prosody: Prosody
    certs: Certs


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, certs: Certs, prosody: Prosody) -> Iterator[Guarded]:
    backend = RecordingBackend(forward_to=(prosody.host, prosody.port))
    starter = ProxyStarter(tmp_path_factory.mktemp("guarded-proxy"), certs)
    try:
        proxy = starter(
            backend=backend.address,
            cert="ecdsa",
            config={"limits": {"pre_tls_timeout": PRE_TLS_TIMEOUT, "pre_tls_max_bytes": PRE_TLS_MAX_BYTES}},
        )
        yield Guarded(proxy, backend, prosody, certs)
    finally:
        try:
            starter.stop_all()
        finally:
            backend.close()


def refused(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str | None]:
    """Read the proxy's answer until it closes; fail if it does not close in time."""
    data, closed = recv_until_closed(sock, timeout)
    assert closed, f"the proxy did not close the connection within {timeout}s: {data!r}"
    assert data.rstrip().endswith(b"</stream:stream>"), f"no closing stream tag: {data!r}"
    return data, stream_error_condition(data)


def assert_backend_untouched(guarded: Guarded, before: int) -> None:
    # Every refusal above happened before TLS, so no backend connection can be on its way:
    # the proxy opens one only after a completed handshake.
    assert guarded.backend.connection_count == before, guarded.backend.connections[before:]
    assert guarded.proxy.is_running()


@pytest.mark.parametrize("wait_for_features", [True, False], ids=["after-features", "pipelined"])
def test_pre_tls_auth_is_refused_and_never_reaches_the_backend(
    guarded: Guarded, wait_for_features: bool
) -> None:
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        if wait_for_features:
            open_stream(sock)
            sock.sendall(AUTH)
        else:
            sock.sendall(stream_header() + AUTH)
        data, condition = refused(sock)
    assert condition in POLICY_CONDITIONS, data
    assert b"<proceed" not in data
    assert_backend_untouched(guarded, before)


def test_unknown_domain_gets_host_unknown(guarded: Guarded) -> None:
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        sock.sendall(stream_header("unknown.test"))
        data, condition = refused(sock)
    assert condition == "host-unknown", data
    assert b"<starttls" not in data
    assert_backend_untouched(guarded, before)


@pytest.mark.parametrize(
    ("header", "conditions"),
    [
        (f"<stream:stream {STREAM_NS} to='{DOMAIN}' version='2.0'>".encode(), {"unsupported-version"}),
        (
            f"<stream:stream xmlns='jabber:client' xmlns:stream='urn:bogus' "
            f"to='{DOMAIN}' version='1.0'>".encode(),
            {"invalid-namespace"},
        ),
        (
            f"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
            f"to='{DOMAIN}' version='1.0'>".encode(),
            {"invalid-namespace"},
        ),
    ],
    ids=["version-2.0", "stream-namespace", "server-namespace"],
)
def test_bad_stream_headers(guarded: Guarded, header: bytes, conditions: set[str]) -> None:
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        sock.sendall(header)
        data, condition = refused(sock)
    assert condition in conditions, data
    assert_backend_untouched(guarded, before)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n",
        b"<<<>>>",
        b"\x00\xff\xfe\x01garbage",
        b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>" + stream_header(prolog=False),
        stream_header() + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><unclosed",
        stream_header() + b"</wrong:close>",
    ],
    ids=["http", "brackets", "binary", "dtd", "broken-starttls", "mismatched-end"],
)
def test_garbage_gets_a_stream_error(guarded: Guarded, garbage: bytes) -> None:
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        sock.sendall(garbage)
        if garbage.endswith(b"<unclosed"):
            sock.sendall(b" a='1'>")  # a child of <starttls> is not allowed
        data, condition = refused(sock)
    assert condition in MALFORMED_CONDITIONS | POLICY_CONDITIONS, data
    assert_backend_untouched(guarded, before)


def test_tls_client_hello_on_the_starttls_port_is_refused(guarded: Guarded) -> None:
    """A direct-TLS client that dialled the STARTTLS port gets an error, not a hang."""
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        sock.sendall(client_hello("1.2"))
        data, closed = recv_until_closed(sock, 5.0)
    assert closed, data
    assert_backend_untouched(guarded, before)


def test_too_many_pre_tls_bytes_are_refused(guarded: Guarded) -> None:
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        open_stream(sock)
        # Whitespace between elements is legal XMPP; only the byte cap can stop this. The proxy
        # may close mid-send; what it sent before is still readable below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b" " * (PRE_TLS_MAX_BYTES * 4))
        data, closed = recv_until_closed(sock, 5.0)
    assert closed, data
    assert stream_error_condition(data) in {"policy-violation", "resource-constraint", "not-well-formed"}, (
        data
    )
    assert_backend_untouched(guarded, before)


@pytest.mark.parametrize("mode", ["silent", "header-only", "trickle"])
def test_slow_client_is_closed_at_the_pre_tls_timeout(guarded: Guarded, mode: str) -> None:
    before = guarded.backend.connection_count
    bound = PRE_TLS_TIMEOUT + 2.0
    with connect(guarded.proxy.port) as sock:
        start = time.monotonic()
        if mode != "silent":
            open_stream(sock)
        if mode == "trickle":
            # A slowloris sends a byte now and then; the pre-TLS clock must not restart.
            closed, data = False, b""
            for _ in range(int(bound / 0.2) + 1):
                try:
                    sock.sendall(b" ")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                chunk, closed = recv_until_closed(sock, 0.2)
                data += chunk
                if closed:
                    break
        else:
            data, closed = recv_until_closed(sock, bound)
        elapsed = time.monotonic() - start
    assert closed, f"still open after {elapsed:.1f}s (pre_tls_timeout={PRE_TLS_TIMEOUT})"
    assert PRE_TLS_TIMEOUT - 0.3 <= elapsed <= bound, f"closed after {elapsed:.2f}s"
    if data:
        assert b"<proceed" not in data
    assert_backend_untouched(guarded, before)


@pytest.mark.parametrize(
    "pipelined",
    [AUTH, b"<iq type='get' id='1'/>", b"x"],
    ids=["auth", "iq", "one-byte"],
)
def test_bytes_pipelined_after_starttls_are_refused(guarded: Guarded, pipelined: bytes) -> None:
    """STARTTLS command injection (CVE-2011-0411): nothing sent before <proceed/> may survive."""
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        open_stream(sock)
        sock.sendall(STARTTLS + pipelined)
        data, closed = recv_until_closed(sock, 5.0)
    assert closed, data
    assert b"<proceed" not in data, data
    assert stream_error_condition(data) in POLICY_CONDITIONS, data
    assert_backend_untouched(guarded, before)


@pytest.mark.parametrize("version", ["1.0", "1.3"])
def test_client_hello_pipelined_with_starttls_is_refused(guarded: Guarded, version: str) -> None:
    """A client that sends its ClientHello without waiting for <proceed/> is refused, not served."""
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        sock.sendall(stream_header() + STARTTLS + client_hello(version))
        data, closed = recv_until_closed(sock, 5.0)
    assert closed, data
    assert b"<proceed" not in data, data
    assert_backend_untouched(guarded, before)


def test_header_and_starttls_in_one_packet_then_tls(guarded: Guarded) -> None:
    """<starttls/> pipelined with the header is legal (nothing follows it): TLS goes ahead."""
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        sock.sendall(stream_header() + STARTTLS)
        read_proceed(sock)
        ctx = client_context("1.0", guarded.certs.cafile)
        with ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls:
            features = xmpp_over_tls(tls)
    assert b"PLAIN" in features, features  # Prosody's SASL features, relayed
    received = guarded.backend.wait_for_bytes(before, b"<stream:stream")
    assert received.startswith(stream_header()), received


def test_header_one_byte_at_a_time(guarded: Guarded) -> None:
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        for byte in stream_header():
            sock.sendall(bytes([byte]))
            time.sleep(0.001)  # separate segments, so the proxy sees one byte per read
        features = recv_until(sock, b"</stream:features>", 5.0)
        assert b"<starttls" in features, features
        for byte in STARTTLS:
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        read_proceed(sock)
        ctx = client_context("1.0", guarded.certs.cafile)
        with ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls:
            assert tls.version() == "TLSv1"
            answer = xmpp_over_tls(tls)
    assert b"<mechanisms" in answer, answer
    received = guarded.backend.wait_for_bytes(before, b"<stream:stream")
    assert received.startswith(stream_header()), received


def test_tls_handshake_failure_does_not_reach_the_backend(guarded: Guarded) -> None:
    """A client that aborts the handshake (untrusted cert) never causes a backend connection."""
    before = guarded.backend.connection_count
    with connect(guarded.proxy.port) as sock:
        open_stream(sock)
        sock.sendall(STARTTLS)
        read_proceed(sock)
        ctx = ssl.create_default_context()  # does not trust the test CA
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(sock, server_hostname=DOMAIN)
    assert_backend_untouched(guarded, before)


def test_no_pre_tls_byte_ever_reached_the_backend(guarded: Guarded) -> None:
    """Every backend connection so far started with the client's post-TLS stream header."""
    for record in guarded.backend.connections:
        assert record.startswith(b"<?xml") or record.startswith(b"<stream:stream"), record[:200]
        assert b"starttls" not in record, record[:200]
        assert AUTH not in record


def test_still_serves_a_real_client_after_all_that(guarded: Guarded) -> None:
    before = guarded.backend.connection_count
    result = run_login_check(
        port=guarded.proxy.port,
        prosody=guarded.prosody,
        cafile=guarded.certs.cafile,
        tls="1.0",
        peer_tls="1.3",
    )
    assert result.returncode == 0, result.output + guarded.proxy.log_text()[-3000:]
    assert guarded.backend.connection_count == before + 2
    assert "Traceback" not in guarded.proxy.log_text()
