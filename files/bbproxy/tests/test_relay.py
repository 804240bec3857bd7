"""The relay after TLS, in-process on loopback: integrity, backpressure both ways, closes, no leaks.

The proxy runs on the test's own event loop (asyncio and uvloop), so the tests can look at
its sessions and buffers; the clients are real TLS clients over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from bbproxy import proxy_protocol
from bbproxy.config import Address, Limits, Settings
from bbproxy.server import ProxyServer, load_contexts
from bbproxy.tls import CertPair

from .helpers import DEADLINE, run, until
from .kit import ANY_SECLEVEL, DOMAIN, client_context, stream_header

HEADER = stream_header()
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def ca_and_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, CertPair]:
    ca = trustme.CA()
    leaf = ca.issue_cert(DOMAIN)
    directory = tmp_path_factory.mktemp("relay-certs")
    cert, key = directory / "leaf.crt", directory / "leaf.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ca, CertPair(Path(cert), Path(key))


@asynccontextmanager
async def proxy(
    pair: CertPair, backend_port: int, _settings: dict[str, Any] | None = None, **limits: Any
) -> AsyncIterator[tuple[ProxyServer, int]]:
    settings = Settings(
        listen=(Address("127.0.0.1", 0),),
        direct_tls_listen=(),
        backend=Address("127.0.0.1", backend_port),
        domains=(DOMAIN,),
        min_tls="1.0",
        cert=pair,
        limits=Limits(**limits),
        **(_settings or {}),
    )
    server = ProxyServer(settings, load_contexts(settings), asyncio.get_running_loop())
    await server.start()
    port = server.bound_ports()[0]
    try:
        yield server, port
    finally:
        server.request_stop()
        await server.serve_until_stopped()


async def until_proceed(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and negotiate STARTTLS up to <proceed/>: the next bytes are the ClientHello."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEADER)
    await reader.readuntil(b"</stream:features>")
    writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await reader.readuntil(PROCEED)
    return reader, writer


async def starttls_client(
    port: int, ca: trustme.CA, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await until_proceed(port)
    await writer.start_tls(client_context(version, ca, ciphers=ANY_SECLEVEL), server_hostname=DOMAIN)
    return reader, writer


class Backend:
    """A loopback backend whose reading can be held back, recording what it gets."""

    def __init__(self, echo: bool = True, hang_after_eof: bool = False) -> None:
        self.echo = echo
        self.hang_after_eof = hang_after_eof  # a Prosody that never answers the client's goodbye
        self.released = asyncio.Event()
        self.received = hashlib.sha256()
        self.count = 0
        self.eof = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while True:
            await self.reading.wait()
            data = await reader.read(65536)
            if not data:
                self.eof.set()
                if self.hang_after_eof:
                    await self.released.wait()
                break
            self.count += len(data)
            self.received.update(data)
            if self.echo:
                writer.write(data)
                await writer.drain()
        writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        assert self.server is not None
        self.released.set()
        for writer in self.writers:
            writer.close()
        self.server.close()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_3], ids=["tls1.0", "tls1.3"])
def test_bytes_arrive_intact_both_ways(
    loop_name: str, version: ssl.TLSVersion, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    ca, pair = ca_and_pair
    payload = os.urandom(8 * 1024 * 1024)

    async def scenario() -> None:
        backend = Backend(echo=True)
        async with proxy(pair, await backend.start()) as (server, port):
            reader, writer = await starttls_client(port, ca, version)

            async def send() -> None:
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i : i + 100_000])
                    await writer.drain()

            sender = asyncio.create_task(send())
            echoed = await reader.readexactly(len(payload))
            await sender
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            session = next(iter(server.sessions))
            assert session.bytes_up == len(payload) and session.bytes_down == len(payload)
            writer.close()
            await until(lambda: not server.sessions, "the session to be released")
            await until(backend.eof.is_set, "the backend to see the client's close")
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_slow_backend_pauses_the_client_and_loses_nothing(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    ca, pair = ca_and_pair
    chunk = os.urandom(256 * 1024)
    total = 64 * len(chunk)  # 16 MiB, far more than socket buffers hold

    async def scenario() -> None:
        backend = Backend(echo=False)
        backend.reading.clear()  # Prosody stalls
        async with proxy(pair, await backend.start()) as (server, port):
            _, writer = await starttls_client(port, ca)
            for _ in range(64):
                writer.write(chunk)  # no drain: push as hard as possible
            await until(lambda: bool(server.sessions), "the session")
            session = next(iter(server.sessions))
            await until(lambda: session.backend is not None, "the backend connection")
            backend_transport = session.backend.transport  # type: ignore[union-attr]
            # The proxy must stop reading the client instead of buffering the flood.
            await until(lambda: not session.transport.is_reading(), "the proxy to pause the client")  # type: ignore[union-attr]
            buffered = backend_transport.get_write_buffer_size()
            assert buffered <= 2 * 1024 * 1024, f"proxy buffered {buffered} bytes for a stalled backend"
            assert session.bytes_up < total
            backend.reading.set()  # Prosody catches up
            await until(lambda: backend.count == total, "every byte at the backend")
            expected = hashlib.sha256(chunk * 64).digest()
            assert backend.received.digest() == expected
            writer.close()
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_slow_client_pauses_the_backend(loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]) -> None:
    ca, pair = ca_and_pair
    chunk = os.urandom(256 * 1024)

    async def scenario() -> None:
        backend = Backend(echo=False)
        async with proxy(pair, await backend.start()) as (server, port):
            reader, writer = await starttls_client(port, ca)
            writer.write(b"<presence/>")
            await until(lambda: bool(backend.writers), "the backend connection")
            backend_writer = backend.writers[0]
            for _ in range(64):
                backend_writer.write(chunk)  # 16 MiB towards a client that does not read
            session = next(iter(server.sessions))
            await until(
                lambda: session.backend is not None and not session.backend.transport.is_reading(),  # type: ignore[union-attr]
                "the proxy to pause reading the backend",
            )
            buffered = session.transport.get_write_buffer_size()  # type: ignore[union-attr]
            assert buffered <= 4 * 1024 * 1024, f"proxy buffered {buffered} bytes for a slow client"
            received = await reader.readexactly(64 * len(chunk))  # the client catches up
            assert received == chunk * 64
            writer.close()
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_backend_close_reaches_the_client_after_its_data(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=False)
        async with proxy(pair, await backend.start()) as (server, port):
            reader, writer = await starttls_client(port, ca)
            writer.write(b"<presence/>")
            await until(lambda: bool(backend.writers), "the backend connection")
            farewell = b"<message>bye</message></stream:stream>"
            backend.writers[0].write(farewell)
            backend.writers[0].close()
            assert await reader.read() == farewell  # everything, then EOF
            await until(lambda: not server.sessions, "the session to be released")
            writer.close()
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_many_sessions_leave_no_sessions_or_tasks_behind(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=True)
        async with proxy(pair, await backend.start()) as (server, port):
            tasks_before = len(asyncio.all_tasks())

            async def one(i: int) -> None:
                reader, writer = await starttls_client(port, ca)
                writer.write(b"<presence id='%d'/>" % i)
                await reader.readuntil(b"/>")
                if i % 2:
                    writer.close()
                else:
                    writer.transport.abort()  # some leave rudely

            await asyncio.gather(*(one(i) for i in range(50)))
            await until(lambda: not server.sessions, "all sessions released")
            await until(lambda: len(asyncio.all_tasks()) <= tasks_before, "no proxy task left")
            assert server.stats.handshakes["TLSv1"] == 50
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_an_idle_relayed_session_keeps_no_pre_tls_dialogue_and_no_finished_task(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    """What an idle session holds is per-session memory times every connected device (issue 19):
    once relaying, the STARTTLS dialogue's parser and the finished backend-connect task (with its
    coroutine) are gone; the stream header's domain stays for the close line."""
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=True)
        async with proxy(pair, await backend.start()) as (server, port):
            reader, writer = await starttls_client(port, ca)
            writer.write(b"<presence/>")
            await reader.readuntil(b"<presence/>")
            session = next(iter(server.sessions))
            assert session.negotiation is None
            assert session.domain == DOMAIN
            await until(lambda: session._task is None, "the finished backend task to be dropped")
            writer.close()
            await until(lambda: not server.sessions, "the session to be released")
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_header_names_the_client(
    version: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    ca, pair = ca_and_pair

    async def scenario() -> None:
        received = bytearray()
        got_stanza = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(4096):
                received.extend(data)
                if received.endswith(b"<presence/>"):
                    got_stanza.set()
            writer.close()

        backend = await asyncio.start_server(handle, "127.0.0.1", 0)
        backend_port = backend.sockets[0].getsockname()[1]
        settings_override = {"send_proxy_protocol": version}
        async with proxy(pair, backend_port, _settings=settings_override) as (_, port):
            _, writer = await starttls_client(port, ca)
            client_port = writer.get_extra_info("sockname")[1]
            writer.write(b"<presence/>")
            await asyncio.wait_for(got_stanza.wait(), DEADLINE)
            header, used = proxy_protocol.decode(bytes(received))
            assert header is not None and header.version == int(version[1])
            assert header.src == ("127.0.0.1", client_port)
            assert header.dst == ("127.0.0.1", port)
            assert bytes(received[used:]) == b"<presence/>"  # then the stream, verbatim
            writer.close()
        backend.close()

    run("asyncio", scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_backend_that_never_answers_ends_the_session_with_a_stream_error(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    """A backend that accepts and reads but never sends (hung, overloaded) is not waited on forever."""
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=False)
        async with proxy(pair, await backend.start(), backend_answer_timeout=0.3) as (server, port):
            reader, writer = await starttls_client(port, ca)
            writer.write(HEADER)
            answer = await asyncio.wait_for(reader.read(), DEADLINE)  # up to the proxy's close
            assert b"<stream:stream" in answer
            assert b"<remote-connection-failed" in answer and answer.endswith(b"</stream:stream>"), answer
            await until(lambda: not server.sessions, "the session released")
            assert backend.count == len(HEADER)  # the header did reach the backend
            assert server.stats.backend_failures == 1
            writer.close()
            # The proxy keeps serving: the next client still gets STARTTLS and TLS.
            _, second = await starttls_client(port, ca)
            assert second.get_extra_info("ssl_object").version() == "TLSv1"
            second.close()
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_backend_that_answered_may_then_stay_quiet(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    """backend_answer_timeout is about the first answer only: an idle session after it stays up."""
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=True)
        async with proxy(pair, await backend.start(), backend_answer_timeout=0.2) as (server, port):
            reader, writer = await starttls_client(port, ca)
            writer.write(HEADER)
            assert await asyncio.wait_for(reader.readexactly(len(HEADER)), DEADLINE) == HEADER
            await asyncio.sleep(0.6)  # three timeouts of silence: nothing may end the session
            assert len(server.sessions) == 1
            writer.write(b"<presence/>")
            assert await asyncio.wait_for(reader.readexactly(len(b"<presence/>")), DEADLINE) == b"<presence/>"
            writer.close()
            backend.close()

    run(loop_name, scenario)


# asyncio only: the client half-closes the TCP socket under its TLS, which uvloop's socket
# wrapper does not offer; the proxy side is the same code on both loops.
@pytest.mark.parametrize("loop_name", ["asyncio"])
def test_half_close_waits_for_the_backend_only_half_close_timeout(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    """A client that is done sending, in front of a backend that never answers, is released."""
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=False, hang_after_eof=True)  # reads, never answers, never closes
        async with proxy(pair, await backend.start(), half_close_timeout=0.3) as (server, port):
            _reader, writer = await starttls_client(port, ca)
            writer.write(b"<presence/>")
            await until(lambda: backend.count == len(b"<presence/>"), "the stanza at the backend")
            session = next(iter(server.sessions))
            # TLS over asyncio has no write_eof(): send the TCP FIN under it, keep reading.
            writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
            await until(lambda: backend.eof.is_set(), "the half-close passed on to the backend")
            await until(lambda: not server.sessions, "the session released after half_close_timeout")
            assert str(session.close_reason) in ("client-eof", "client-close-notify"), session.close_reason
            writer.close()
            backend.close()

    run(loop_name, scenario)


# asyncio only: the client half-closes the TCP socket under its TLS, which uvloop's socket
# wrapper does not offer; the proxy side is the same code on both loops.
@pytest.mark.parametrize("loop_name", ["asyncio"])
def test_drain_ends_a_half_closed_session_cleanly(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    """shutdown() must not write </stream:stream> after write_eof() (RuntimeError before)."""
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=False, hang_after_eof=True)
        async with proxy(pair, await backend.start(), shutdown_grace=0.1) as (server, port):
            _reader, writer = await starttls_client(port, ca)
            writer.write(b"<presence/>")
            await until(lambda: backend.count > 0, "the stanza at the backend")
            writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
            await until(lambda: backend.eof.is_set(), "the half-close at the backend")
            server.request_stop()  # the context manager's exit drains: it must not raise
        writer.close()
        backend.close()

    run(loop_name, scenario)


async def memory_bio_client(
    port: int, ca: trustme.CA
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS 1.0 client whose records the test assembles itself, to send several in one segment."""
    reader, writer = await until_proceed(port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ssl.TLSVersion.TLSv1, ca, ciphers=ANY_SECLEVEL).wrap_bio(
        incoming, outgoing, server_hostname=DOMAIN
    )
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            writer.write(outgoing.read())
            incoming.write(await reader.read(65536))
    writer.write(outgoing.read())
    return tls, outgoing, reader, writer


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("tail", ["close_notify", "bad-record"])
def test_records_that_arrive_with_the_end_reach_the_backend_first(
    loop_name: str, tail: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    """Many records, then the client's close_notify (or a record that fails its MAC check), in one
    TCP write: every record before the end reaches the backend, in order, then the backend's EOF."""
    ca, pair = ca_and_pair
    stanzas = [b"<message id='%d'>%s</message>" % (i, os.urandom(3000).hex().encode()) for i in range(40)]

    async def scenario() -> None:
        backend = Backend(echo=False)
        async with proxy(pair, await backend.start()) as (server, port):
            tls, outgoing, _reader, writer = await memory_bio_client(port, ca)
            for stanza in stanzas:
                tls.write(stanza)  # one record each (6 KiB), 40 in all
            records = outgoing.read()
            if tail == "close_notify":
                with contextlib.suppress(ssl.SSLWantReadError):
                    tls.unwrap()
                end = outgoing.read()
            else:  # a record of the right type, version and length whose contents are garbage
                end = records[:5] + os.urandom(int.from_bytes(records[3:5], "big"))
            writer.write(records + end)
            await until(backend.eof.is_set, "the backend to see the end")
            assert backend.count == sum(map(len, stanzas))
            assert backend.received.digest() == hashlib.sha256(b"".join(stanzas)).digest()
            await until(lambda: not server.sessions, "the session to be released")
            writer.close()
            backend.close()

    run(loop_name, scenario)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_backend_that_closes_before_answering_gets_the_client_a_whole_stream_error(
    loop_name: str, ca_and_pair: tuple[trustme.CA, CertPair]
) -> None:
    """Prosody accepts, reads the client's header and closes without a word (a crash at the wrong
    moment): the client's stream error must follow a stream header that opens it (RFC 6120 §4.2),
    or clients such as slixmpp never see it."""
    ca, pair = ca_and_pair

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b">")
        writer.close()

    async def scenario() -> None:
        backend = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with proxy(pair, backend.sockets[0].getsockname()[1]) as (server, port):
            reader, writer = await starttls_client(port, ca)
            writer.write(HEADER)
            answer = await asyncio.wait_for(reader.read(), DEADLINE)  # up to the proxy's close
            assert answer.startswith(b"<?xml version='1.0'?><stream:stream"), answer
            assert b"<remote-connection-failed" in answer and answer.endswith(b"</stream:stream>"), answer
            await until(lambda: not server.sessions, "the session released")
            writer.close()
        backend.close()

    run(loop_name, scenario)
