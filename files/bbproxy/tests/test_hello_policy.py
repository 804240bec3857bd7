"""What a client claims in its ClientHello versus what the policy holds (issue 15 items 2-3, issue 16).

In-process on loopback, against the proxy's own TLS (routing "terminate-all", the default) with an
echo backend. Each hostile hello is made from a real one (Python's ssl) by tests/helpers.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl

import pytest

from bbproxy.clienthello import MAX_BYTES, MAX_RECORDS

from .helpers import (
    as_records,
    handshake_message,
    run,
    supported_versions,
    until,
    with_extension,
)
from .kit import ANY_SECLEVEL, client_context, padded_alpn
from .test_relay import DOMAIN, HEADER, PROCEED
from .test_routing import TLS10, TLS13, Certs, certs, echo, routed_proxy, starttls_client, until_proceed

__all__ = ["certs"]  # the module-scoped fixture, shared with test_routing

ALERT_PROTOCOL_VERSION = bytes.fromhex("15030100020246")
ELSEWHERE = (ipaddress.ip_network("192.0.2.0/24"),)  # the allow-list names a network we are not in
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


async def pump_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    client: ssl.SSLObject,
    first_flight: bytes,
    outgoing: ssl.MemoryBIO,
    incoming: ssl.MemoryBIO,
) -> bytes:
    """Drive a MemoryBIO client whose first flight is sent as given; returns what the server sent
    last when it stops answering (an alert, or b"" once the handshake is done)."""  # fmt: skip
    writer.write(first_flight)
    while True:
        data = await asyncio.wait_for(reader.read(65536), 10)
        if not data:
            return b""
        incoming.write(data)
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            writer.write(outgoing.read())
            continue
        except ssl.SSLError:
            return data
        writer.write(outgoing.read())
        return b""


def test_an_unknown_version_in_supported_versions_does_not_make_a_tls10_client_modern(certs: Certs) -> None:
    """{0x0305, 0x0301}: routed from its highest *known* version, so the allow-list refuses it."""
    hello = with_extension(
        as_records(handshake_message(_python_hello(TLS10))), 43, supported_versions(0x0305, 0x0301)
    )

    async def scenario() -> None:
        async with routed_proxy(certs, legacy_networks=ELSEWHERE) as (server, port, plain):
            reader, writer = await until_proceed(port)
            writer.write(hello)
            answer = await asyncio.wait_for(reader.read(65536), 10)
            assert answer == ALERT_PROTOCOL_VERSION
            await until(lambda: not server.sessions, "the refused session to end")
            assert server.stats.routes == {"refused": 1} and not plain.writers
            writer.close()

    run("asyncio", scenario)


def test_tls10_negotiated_from_an_unread_hello_is_refused_after_the_handshake(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """A hello the router does not read (here: over its 16 KiB bound, which OpenSSL allows) still
    reaches OpenSSL, which negotiates TLS 1.0 with it; the negotiated version is checked against
    the allow-list before the handshake can finish."""
    caplog.set_level(logging.INFO, "bbproxy")

    async def scenario() -> None:
        async with routed_proxy(certs, legacy_networks=ELSEWHERE) as (server, port, plain):
            reader, writer = await until_proceed(port)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            client = _long_hello_client(certs).wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
            with pytest.raises(ssl.SSLWantReadError):
                client.do_handshake()
            hello = outgoing.read()
            assert len(hello) > MAX_BYTES
            last = await pump_handshake(reader, writer, client, hello, outgoing, incoming)
            assert last.endswith(ALERT_PROTOCOL_VERSION)
            with pytest.raises(ssl.SSLError):
                client.do_handshake()  # never completes: our Finished was not sent
            await until(lambda: not server.sessions, "the refused session to end")
            assert not plain.writers and server.stats.handshake_failures == 1
            writer.close()

    run("asyncio", scenario)
    assert "legacy TLS refused after negotiating TLSv1: address not in tls.legacy_networks" in caplog.text


def test_the_same_unread_hello_from_an_allowed_network_logs_in(certs: Certs) -> None:
    async def scenario() -> None:
        async with routed_proxy(certs) as (_server, port, plain):
            reader, writer = await until_proceed(port)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            client = _long_hello_client(certs).wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
            with pytest.raises(ssl.SSLWantReadError):
                client.do_handshake()
            hello = handshake_message(outgoing.read())
            assert (
                await pump_handshake(reader, writer, client, as_records(hello, 1), outgoing, incoming) == b""
            )
            assert client.version() == "TLSv1"
            client.write(b"<presence/>")
            writer.write(outgoing.read())
            await until(lambda: len(plain.writers) == 1, "the backend connection")
            writer.close()

    run("asyncio", scenario)


@pytest.mark.parametrize("split", [False, True], ids=["same-packet", "next-packet"])
@pytest.mark.parametrize("version", [TLS10, TLS13], ids=["tls1.0", "tls1.3"])
def test_whitespace_after_starttls_is_dropped_go_sendxmpp(
    certs: Certs, split: bool, version: ssl.TLSVersion
) -> None:
    """go-sendxmpp (mattn/go-xmpp) writes "<starttls .../>\\n"; Prosody accepts it, so do we. The
    newline may arrive with <starttls/> or after <proceed/>: it reaches neither OpenSSL nor Prosody."""

    async def scenario() -> None:
        async with routed_proxy(certs) as (server, port, plain):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEADER)
            await reader.readuntil(b"</stream:features>")
            writer.write(STARTTLS + (b"" if split else b"\n"))
            await reader.readuntil(PROCEED)
            if split:
                writer.write(b"\n \t\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)  # a read of its own
            await writer.start_tls(
                client_context(version, certs.ca, ciphers=ANY_SECLEVEL), server_hostname=DOMAIN
            )
            await echo(reader, writer, b"<presence/>")
            assert server.stats.routes == {"terminate": 1}
            writer.close()
        assert len(plain.writers) == 1

    run("asyncio", scenario)


def test_anything_else_after_starttls_is_still_injection(certs: Certs) -> None:
    async def scenario() -> None:
        async with routed_proxy(certs) as (server, port, plain):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEADER)
            await reader.readuntil(b"</stream:features>")
            writer.write(STARTTLS + b"\n<iq/>")
            answer = await asyncio.wait_for(reader.read(65536), 10)
            assert b"<policy-violation" in answer and PROCEED not in answer
            await until(lambda: not server.sessions, "the session to end")
            assert not plain.writers
            writer.close()

    run("asyncio", scenario)


def test_a_modern_client_is_unaffected_by_the_allow_list(certs: Certs) -> None:
    async def scenario() -> None:
        async with routed_proxy(certs, legacy_networks=ELSEWHERE) as (_server, port, _plain):
            reader, writer = await starttls_client(port, certs.ca, TLS13)
            await echo(reader, writer, b"<presence/>")
            writer.close()

    run("asyncio", scenario)


def _python_hello(version: ssl.TLSVersion) -> bytes:
    from .test_clienthello import python_hello

    return python_hello(version)


def _long_hello_client(certs: Certs) -> ssl.SSLContext:
    """A TLS 1.0 client whose hello is over the router's 16 KiB bound (ALPN names nobody serves pad
    it; the server ignores them)."""
    return client_context(TLS10, certs.ca, ciphers=ANY_SECLEVEL, alpn=padded_alpn(70))


def test_a_hello_split_over_too_many_records_is_refused_with_an_alert(certs: Certs) -> None:
    """Refused before OpenSSL sees it (docs/security.md): its records would cost OpenSSL more than
    a whole handshake. A hello in a few hundred records is still read (test_clienthello.py)."""
    hello = handshake_message(
        with_extension(_python_hello(TLS13), 21, bytes(MAX_RECORDS))
    )  # RFC 7685 padding

    async def scenario() -> None:
        async with routed_proxy(certs) as (server, port, plain):
            reader, writer = await until_proceed(port)
            writer.write(as_records(hello, 1)[: 6 * (MAX_RECORDS + 1)])
            answer = await asyncio.wait_for(reader.read(65536), 10)
            assert answer == bytes.fromhex("15030100020228")  # handshake_failure
            await until(lambda: not server.sessions, "the refused session to end")
            assert server.stats.handshake_failures == 1 and not plain.writers
            writer.close()

    run("asyncio", scenario)
