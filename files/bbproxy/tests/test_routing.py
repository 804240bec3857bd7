"""ClientHello routing, in-process on loopback: who gets the proxy's TLS and who gets Prosody's.

The "Prosody TLS port" here is an asyncio TLS echo server with a certificate of its own
(same CA, another key), so a client can tell from the certificate it was shown whose TLS it
is talking to: the proxy's (terminated) or the backend's (passed through untouched).
The real-Prosody version of this, with channel binding, is in tests/integration.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from bbproxy.clienthello import ClientHelloParser
from bbproxy.config import Address, TlsPolicy
from bbproxy.server import ProxyServer
from bbproxy.tls import CertPair

from .helpers import hello_of, run, until
from .kit import ANY_SECLEVEL, client_context, free_port
from .test_relay import DOMAIN, Backend, proxy, starttls_client, until_proceed

LOOPS = ["asyncio", "uvloop"]
TLS10, TLS12, TLS13 = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


class Certs:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.proxy_der, self.proxy_pair = self._issue(tmp, "proxy")
        self.prosody_der, prosody_pair = self._issue(tmp, "prosody")
        self.legacy_der, self.legacy_pair = self._issue(tmp, "legacy")
        self.prosody_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.prosody_ctx.load_cert_chain(prosody_pair.cert, prosody_pair.key)

    def _issue(self, tmp: Path, name: str) -> tuple[bytes, CertPair]:
        leaf = self.ca.issue_cert(DOMAIN)
        cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()), CertPair(cert, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("routing-certs"))


class TlsEcho:
    """Stands in for Prosody's direct-TLS port: terminates TLS with its own certificate, echoes."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.ctx)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@asynccontextmanager
async def routed_proxy(
    certs: Certs,
    tls_port: int | None = None,
    settings: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    **policy: Any,
) -> AsyncIterator[tuple[ProxyServer, int, Backend]]:
    """The proxy with a plaintext echo backend and the given TLS policy (tls.backend = tls_port);
    ``settings`` and ``limits`` (dicts) set other fields of Settings and Limits."""
    backend = Backend(echo=True)
    backend_port = await backend.start()
    tls = TlsPolicy(backend=Address("127.0.0.1", tls_port or free_port()), **policy)
    try:
        async with proxy(
            certs.proxy_pair, backend_port, {"tls": tls, **(settings or {})}, **(limits or {})
        ) as (
            server,
            port,
        ):
            yield server, port, backend
    finally:
        backend.close()


def peer_der(writer: asyncio.StreamWriter) -> bytes:
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True)
    assert der is not None
    return bytes(der)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_legacy_only_passes_modern_clients_to_prosodys_tls(
    loop_name: str, version: ssl.TLSVersion, certs: Certs
) -> None:
    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        async with routed_proxy(certs, await prosody.start(), routing="legacy-only") as (server, port, plain):
            reader, writer = await starttls_client(port, certs.ca, version)
            assert peer_der(writer) == certs.prosody_der, "the proxy terminated a modern client"
            await echo(reader, writer, b"<presence/>" * 1000)
            session = next(iter(server.sessions))
            assert session.tls_version == "passthrough" and session.route == "passthrough"
            assert server.stats.routes == {"passthrough": 1}
            assert prosody.connections == 1 and not plain.writers, "plaintext backend used"
            writer.close()
            await until(lambda: not server.sessions, "the session to end")
            assert session.bytes_up > 11000 and session.bytes_down > 11000  # TLS records, both ways
        prosody.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_legacy_only_terminates_tls10_clients_itself(loop_name: str, certs: Certs) -> None:
    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        async with routed_proxy(certs, await prosody.start(), routing="legacy-only") as (server, port, plain):
            reader, writer = await starttls_client(port, certs.ca, TLS10)
            assert peer_der(writer) == certs.proxy_der
            await echo(reader, writer, b"<presence/>")
            assert prosody.connections == 0 and len(plain.writers) == 1
            assert server.stats.routes == {"terminate": 1}
            ((family, outcome),) = server.stats.legacy_families
            assert outcome == "served"
            # Python's TLS 1.0 hello is OpenSSL 3.0's, which our own captures name (slixmpp and
            # s_client held at TLS 1.0: integration/test_client_fingerprints.py).
            assert family == "TLSv1/openssl-3.0-tls1.0+1"
            writer.close()
        prosody.close()

    run(loop_name, scenario)


def test_terminate_all_terminates_modern_clients_too(certs: Certs) -> None:
    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        async with routed_proxy(certs, await prosody.start()) as (server, port, _plain):
            reader, writer = await starttls_client(port, certs.ca, TLS13)
            assert peer_der(writer) == certs.proxy_der
            await echo(reader, writer, b"<presence/>")
            assert prosody.connections == 0 and server.stats.routes == {"terminate": 1}
            writer.close()
        prosody.close()

    run("asyncio", scenario)


def test_legacy_networks_refuse_a_legacy_client_with_a_protocol_version_alert(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "bbproxy")

    async def scenario() -> None:
        networks = (ipaddress.ip_network("10.0.0.0/8"),)
        async with routed_proxy(certs, legacy_networks=networks) as (server, port, plain):
            with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
                await starttls_client(port, certs.ca, TLS10)
            await until(lambda: not server.sessions, "the refused session to end")
            assert server.stats.routes == {"refused": 1} and not plain.writers
            # A modern client from the same address is not affected.
            reader, writer = await starttls_client(port, certs.ca, TLS13)
            await echo(reader, writer, b"<presence/>")
            writer.close()

    run("asyncio", scenario)
    assert "legacy TLS refused: address not in tls.legacy_networks: versions=TLSv1 " in caplog.text
    assert "close=tls-refused" in caplog.text


def test_a_client_named_by_ja3_is_terminated_although_it_offers_tls13(certs: Certs) -> None:
    ctx = client_context(TLS13, certs.ca, ciphers=ANY_SECLEVEL)
    parsed = ClientHelloParser().feed(hello_of(ctx))
    assert parsed is not None

    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        policy = {"routing": "legacy-only", "legacy_ja3": frozenset({parsed.ja3()})}
        async with routed_proxy(certs, await prosody.start(), **policy) as (server, port, _plain):
            reader, writer = await until_proceed(port)
            await writer.start_tls(ctx, server_hostname=DOMAIN)
            assert peer_der(writer) == certs.proxy_der
            await echo(reader, writer, b"<presence/>")
            assert server.stats.routes == {"terminate": 1} and prosody.connections == 0
            writer.close()
        prosody.close()

    run("asyncio", scenario)


def test_prosodys_tls_port_down_falls_back_to_terminating(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with routed_proxy(certs, free_port(), routing="legacy-only") as (server, port, plain):
            reader, writer = await starttls_client(port, certs.ca, TLS13)
            assert peer_der(writer) == certs.proxy_der
            await echo(reader, writer, b"<presence/>")
            assert len(plain.writers) == 1 and server.stats.backend_failures == 1
            writer.close()

    run("asyncio", scenario)
    assert "unavailable" in caplog.text and "terminating this client's TLS here" in caplog.text


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_clienthello_dripped_byte_by_byte_reaches_prosody_intact(loop_name: str, certs: Certs) -> None:
    """The hello may span many TCP segments; what Prosody gets must be exactly what was sent."""

    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        async with routed_proxy(certs, await prosody.start(), routing="legacy-only") as (server, port, _):
            reader, writer = await until_proceed(port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            client = client_context(TLS13, certs.ca, ciphers=ANY_SECLEVEL).wrap_bio(
                incoming, outgoing, server_hostname=DOMAIN
            )
            first = True
            while True:
                try:
                    client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flight = outgoing.read()
                    if first:
                        for i in range(len(flight)):
                            writer.write(flight[i : i + 1])
                            await writer.drain()
                        first = False
                    else:
                        writer.write(flight)
                    incoming.write(await asyncio.wait_for(reader.read(65536), 10))
            writer.write(outgoing.read())
            assert client.getpeercert(binary_form=True) == certs.prosody_der
            client.write(b"<iq/>")
            writer.write(outgoing.read())
            received = b""
            while received != b"<iq/>":
                incoming.write(await asyncio.wait_for(reader.read(65536), 10))
                with _want_read():
                    received += client.read(100)
            assert server.stats.routes == {"passthrough": 1}
            writer.close()
        prosody.close()

    run(loop_name, scenario)


class _want_read:
    """Treat SSLWantReadError (a record not complete yet) as 'read nothing yet'."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is ssl.SSLWantReadError


@pytest.mark.parametrize("loop_name", LOOPS)
def test_direct_tls_listener_routes_too(loop_name: str, certs: Certs) -> None:
    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        async with routed_proxy(certs, await prosody.start(), routing="legacy-only") as (server, _, _plain):
            # The proxy fixture listens with STARTTLS only; add a direct-TLS listener on the side.
            from bbproxy.listeners import Listener, open_socket
            from bbproxy.session import ClientSession

            listener = Listener(Address("127.0.0.1", 0), starttls=False)
            sock = open_socket(listener.address)
            direct = await asyncio.get_running_loop().create_server(
                lambda: ClientSession(server, listener), sock=sock
            )
            direct_port = sock.getsockname()[1]
            for version, expected in ((TLS13, certs.prosody_der), (TLS10, certs.proxy_der)):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1",
                    direct_port,
                    ssl=client_context(version, certs.ca, ciphers=ANY_SECLEVEL),
                    server_hostname=DOMAIN,
                )
                assert peer_der(writer) == expected, version
                await echo(reader, writer, b"<presence/>")
                writer.close()
            await until(lambda: not server.sessions, "both sessions to end")
            assert server.stats.routes == {"passthrough": 1, "terminate": 1}
            direct.close()
        prosody.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("routing", ["terminate-all", "legacy-only"])
def test_a_legacy_chain_serves_legacy_clients_only(certs: Certs, routing: str) -> None:
    """tls.legacy_cert: old devices get a chain they trust; everyone else the normal one."""

    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        policy = {"routing": routing, "legacy_cert": certs.legacy_pair}
        async with routed_proxy(certs, await prosody.start(), **policy) as (_server, port, _plain):
            modern = certs.prosody_der if routing == "legacy-only" else certs.proxy_der
            for version, expected in ((TLS10, certs.legacy_der), (TLS13, modern), (TLS12, modern)):
                # SNI names the domain, which has no per-domain certificate; the legacy chain wins.
                reader, writer = await starttls_client(port, certs.ca, version)
                assert peer_der(writer) == expected, version
                await echo(reader, writer, b"<presence/>")
                writer.close()
        prosody.close()

    run("asyncio", scenario)


def hello_with_sni(name: bytes) -> bytes:
    """A TLS 1.2 ClientHello naming ``name`` in SNI, byte for byte (ASCII or not)."""
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    sni = b"\x00\x00" + (len(entry) + 2).to_bytes(2, "big") + len(entry).to_bytes(2, "big") + entry
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x04\xc0\x2b\xc0\x2f" + b"\x01\x00"
    extensions = sni + (
        b"\x00\x0a\x00\x04\x00\x02\x00\x17"  # supported_groups: secp256r1
        b"\x00\x0b\x00\x02\x01\x00"  # ec_point_formats: uncompressed
        b"\x00\x0d\x00\x06\x00\x04\x04\x03\x04\x01"  # signature_algorithms: ECDSA/RSA SHA-256
    )
    body += len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


@pytest.mark.parametrize("routing", ["terminate-all", "legacy-only"])
def test_a_non_ascii_sni_is_refused_with_an_alert_and_no_traceback(
    certs: Certs, routing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """CPython's SNI callback cannot decode such a name (it prints a traceback): refuse it first.

    An unraisable exception in the proxy would fail this test (pytest turns it into an error).
    """
    caplog.set_level(logging.INFO, "bbproxy")

    async def scenario() -> None:
        async with routed_proxy(certs, routing=routing) as (server, port, plain):
            reader, writer = await until_proceed(port)
            writer.write(hello_with_sni(b"exam\xff\xfee.test"))
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer == bytes((0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x2F)), answer  # illegal_parameter
            await until(lambda: not server.sessions, "the session to end")
            assert server.stats.routes == {"refused": 1} and not plain.writers
            writer.close()

    run("asyncio", scenario)
    assert "handshake refused: SNI host name is not ASCII: versions=TLSv1.2 " in caplog.text
    assert "sni=exam??e.test" in caplog.text  # logged, but never raw


def test_the_same_hello_with_an_ascii_sni_is_answered(certs: Certs) -> None:
    """The control for the test above: the refusal is about the name, not the handcrafted hello."""

    async def scenario() -> None:
        async with routed_proxy(certs) as (_server, port, _plain):
            reader, writer = await until_proceed(port)
            writer.write(hello_with_sni(DOMAIN.encode()))
            try:
                answer = await asyncio.wait_for(reader.read(5), 10)
                assert answer[:1] == b"\x16", answer  # a ServerHello record
            finally:
                writer.close()

    run("asyncio", scenario)


# -- the splice's own bounds and the client's address (issue 15, item 5) ------------------------


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_spliced_client_that_stalls_after_its_hello_is_closed_by_the_handshake_timeout(
    loop_name: str, certs: Certs
) -> None:
    """Prosody answers the hello; the client never sends its Finished. Prosody's own TLS port
    (here asyncio's, with its 60 s handshake timeout) would hold it far longer."""

    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        limits = {"handshake_timeout": 1.0}
        async with routed_proxy(certs, await prosody.start(), limits=limits, routing="legacy-only") as (
            server,
            port,
            _plain,
        ):
            reader, writer = await until_proceed(port)
            writer.write(hello_of(client_context(TLS13, certs.ca, ciphers=ANY_SECLEVEL)))
            first = await asyncio.wait_for(reader.read(5), 10)
            assert first[:1] == b"\x16", first  # Prosody's ServerHello: the session is spliced
            session = next(iter(server.sessions))
            assert session.route == "passthrough"
            rest = await asyncio.wait_for(reader.read(), 10)  # EOF: the proxy closed the session
            assert not rest.endswith(b"</stream:stream>")
            await until(lambda: not server.sessions, "the stalled session to end")
            assert str(session.close_reason) == "tls-failed: timeout (passed through)"
            writer.close()
        prosody.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_a_completed_splice_outlives_the_handshake_timeout(version: ssl.TLSVersion, certs: Certs) -> None:
    async def scenario() -> None:
        prosody = TlsEcho(certs.prosody_ctx)
        limits = {"handshake_timeout": 0.5}
        async with routed_proxy(certs, await prosody.start(), limits=limits, routing="legacy-only") as (
            server,
            port,
            _plain,
        ):
            reader, writer = await starttls_client(port, certs.ca, version)
            assert peer_der(writer) == certs.prosody_der
            await echo(reader, writer, b"<presence/>")
            await asyncio.sleep(1.0)  # twice the handshake timeout: the deadline must be gone
            await echo(reader, writer, b"<presence/>")
            assert len(server.sessions) == 1
            writer.close()
        prosody.close()

    run("asyncio", scenario)
