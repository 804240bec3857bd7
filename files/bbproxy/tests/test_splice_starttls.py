"""``tls.splice = "starttls"`` in-process: every step towards Prosody's STARTTLS is bounded, and a
port that does not get there costs the client nothing (it gets the proxy's TLS instead).

The real Prosody version (the client's address, channel binding, the bytes Prosody sees) is
tests/integration/test_splice_proxy.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import pytest

from bbproxy import backend_starttls
from bbproxy.config import Address
from bbproxy.listeners import Listener, open_socket
from bbproxy.session import ClientSession

from .helpers import hello_of, run, until
from .kit import client_context
from .test_relay import DOMAIN, until_proceed
from .test_routing import TLS13, Certs, certs, echo, peer_der, routed_proxy, starttls_client

__all__ = ["certs"]  # the module-scoped fixture, used here


class SilentPort:
    """A port that accepts, keeps what it is sent and never answers (a hung Prosody)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = False  # the proxy closed its connection
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._keep, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _keep(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                self.received.extend(data)
        self.closed = True
        writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_silent_starttls_port_falls_back_to_our_tls_after_the_answer_timeout(
    loop_name: str, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "bbproxy.session")
    silent = SilentPort()

    async def scenario() -> None:
        async with routed_proxy(
            certs,
            await silent.start(),
            limits={"backend_answer_timeout": 0.5},
            routing="legacy-only",
            splice="starttls",
        ) as (server, port, plain):
            reader, writer = await starttls_client(port, certs.ca, TLS13)
            assert peer_der(writer) == certs.proxy_der  # ours: the splice did not happen
            await echo(reader, writer, b"<presence/>")
            assert len(plain.writers) == 1 and server.stats.backend_failures == 1
            writer.close()
        silent.close()

    run(loop_name, scenario)
    received = silent.received
    # Our stream header and nothing more: no byte of the client's TLS before <proceed/>.
    assert received == backend_starttls.opening(DOMAIN)
    assert "(no <proceed/> in 0.5s): terminating this client's TLS here" in caplog.text


def test_a_session_that_ends_during_the_starttls_dialogue_closes_the_backend_connection(
    certs: Certs,
) -> None:
    silent = SilentPort()

    async def scenario() -> None:
        tls_port = await silent.start()
        # Reading the client is paused while the splice connects: its leaving is seen when the
        # handshake timeout ends the session, which closes the half-open splice with it.
        limits = {"handshake_timeout": 0.5}
        async with routed_proxy(certs, tls_port, limits=limits, routing="legacy-only", splice="starttls") as (
            _,
            port,
            plain,
        ):
            _reader, writer = await until_proceed(port)
            writer.write(hello_of(client_context(TLS13, certs.ca)))
            await until(lambda: silent.received.endswith(b" version='1.0'>"), "our stream header")
            writer.close()
            await until(lambda: silent.closed, "the proxy closing its connection to the silent port")
            assert not plain.writers
        silent.close()

    run("asyncio", scenario)


@pytest.mark.parametrize(
    ("sni", "domain"),
    [("other.test", "other.test"), ("OTHER.test.", "other.test"), ("unknown.test", DOMAIN), (None, DOMAIN)],
)
def test_a_direct_tls_clients_stream_to_prosody_names_its_sni_if_served(
    certs: Certs, sni: str | None, domain: str
) -> None:
    """Prosody's STARTTLS picks its certificate by our stream's 'to': the client's SNI if it is
    a served domain, else the first one (what this proxy's own TLS would show it too)."""
    silent = SilentPort()

    async def scenario() -> None:
        tls_port = await silent.start()
        limits = {"handshake_timeout": 0.5}  # ends the session (and the splice) once we know
        async with routed_proxy(certs, tls_port, limits=limits, routing="legacy-only", splice="starttls") as (
            server,
            _,
            _plain,
        ):
            # A second served domain (the fixture serves one): what the splice reads.
            server.settings = dataclasses.replace(server.settings, domains=(DOMAIN, "other.test"))
            listener = Listener(Address("127.0.0.1", 0), starttls=False)
            sock = open_socket(listener.address)
            direct = await asyncio.get_running_loop().create_server(
                lambda: ClientSession(server, listener), sock=sock
            )
            _reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            writer.write(hello_of(client_context(TLS13, certs.ca), server_hostname=sni))  # type: ignore[arg-type]
            await until(lambda: silent.received.endswith(b" version='1.0'>"), "our stream header")
            writer.close()
            await until(lambda: silent.closed, "the session's end to close the splice")
            direct.close()
        silent.close()

    run("asyncio", scenario)
    assert silent.received == backend_starttls.opening(domain)
