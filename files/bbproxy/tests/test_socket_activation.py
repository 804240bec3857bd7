"""Socket activation: the listening sockets systemd passes (sd_listen_fds) are the proxy's listeners."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket

import pytest
import trustme

from bbproxy import notify
from bbproxy.config import Address
from bbproxy.listeners import ListenError, adopt_sockets
from bbproxy.server import ProxyServer, load_contexts
from bbproxy.tls import CertPair

from . import test_server
from .helpers import DEADLINE, run
from .kit import stream_header
from .test_server import settings_for

two_domains = test_server.two_domains  # the fixture, shared


def listening_socket() -> socket.socket:
    """A listening socket bound like systemd's ListenStream=127.0.0.1:PORT, without SO_REUSEPORT."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_listen_fds_reads_and_removes_the_variables() -> None:
    env = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "starttls:direct-tls"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "set_inheritable", lambda fd, flag: None)
        assert notify.listen_fds(env, pid=4242) == [3, 4]
    assert env == {}, "a child process must never take the variables for its own"


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "2"},  # inherited from another process
        {"LISTEN_PID": "4242", "LISTEN_FDS": "0"},
        {"LISTEN_PID": "4242", "LISTEN_FDS": "two"},
        {"LISTEN_FDS": "2"},
        {},
    ],
)
def test_listen_fds_ignores_what_is_not_for_this_process(env: dict[str, str]) -> None:
    assert notify.listen_fds(env, pid=4242) == []
    assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env


def test_adopt_refuses_what_is_not_a_listening_tcp_socket() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(ListenError, match="not a listening TCP socket"):
        adopt_sockets([os.dup(a.fileno())])
    unbound = socket.socket()
    with unbound, pytest.raises(ListenError, match="not a listening TCP socket"):
        adopt_sockets([os.dup(unbound.fileno())])


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_inherited_sockets_serve_by_address_and_outlive_a_stop(
    loop_name: str, two_domains: tuple[trustme.CA, dict[str, CertPair]]
) -> None:
    """Each passed socket serves the listener with its address (STARTTLS vs direct TLS); the proxy
    opens none itself (it could not: the port is taken, without SO_REUSEPORT). After a stop the
    socket is still open in the 'systemd' copy: a client connecting then is queued, not refused,
    and the next instance answers it."""
    _, pairs = two_domains
    systemd_starttls, systemd_direct = listening_socket(), listening_socket()
    starttls_port = systemd_starttls.getsockname()[1]
    direct_port = systemd_direct.getsockname()[1]
    settings = dataclasses.replace(
        settings_for(pairs),
        listen=(Address("127.0.0.1", starttls_port),),
        direct_tls_listen=(Address("127.0.0.1", direct_port),),
    )

    async def instance() -> ProxyServer:
        # The order systemd passes them in does not matter: matched by address.
        inherited = adopt_sockets([os.dup(systemd_direct.fileno()), os.dup(systemd_starttls.fileno())])
        server = ProxyServer(
            settings, load_contexts(settings), asyncio.get_running_loop(), inherited=inherited
        )
        await server.start()
        assert server.bound_ports() == [starttls_port, direct_port]
        return server

    async def scenario() -> None:
        server = await instance()
        reader, writer = await asyncio.open_connection("127.0.0.1", starttls_port)
        writer.write(stream_header("a.test"))
        assert b"<starttls" in await asyncio.wait_for(reader.readuntil(b"</stream:features>"), DEADLINE)
        writer.close()
        server.request_stop()
        await server.serve_until_stopped()
        # Between two instances: the connection is accepted into the backlog, not refused.
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", starttls_port), DEADLINE)
        writer.write(stream_header("a.test"))
        server = await instance()
        assert b"<starttls" in await asyncio.wait_for(reader.readuntil(b"</stream:features>"), DEADLINE)
        writer.close()
        server.request_stop()
        await server.serve_until_stopped()

    try:
        run(loop_name, scenario)
    finally:
        systemd_starttls.close()
        systemd_direct.close()


def test_a_passed_socket_no_listener_names_is_an_error(
    two_domains: tuple[trustme.CA, dict[str, CertPair]],
) -> None:
    _, pairs = two_domains
    stray = listening_socket()

    async def scenario() -> None:
        settings = settings_for(pairs)  # listeners on port 0: none matches the stray socket
        inherited = adopt_sockets([os.dup(stray.fileno())])
        server = ProxyServer(
            settings, load_contexts(settings), asyncio.get_running_loop(), inherited=inherited
        )
        with pytest.raises(ListenError, match="no listener in the configuration names"):
            await server.start()

    with stray:
        run("asyncio", scenario)
