"""Where clients come in: the listeners, their sockets (opened here, or passed by systemd's socket
activation), and the one-line error when one cannot be had."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from .config import Address


class ListenError(Exception):
    """A listener could not be opened; the message is one line for operators."""


@dataclass(frozen=True, slots=True)
class Listener:
    address: Address
    starttls: bool  # False: direct TLS (XEP-0368)
    # "starttls/127.0.0.1:5222": a metrics label and log field of every session, so made once.
    name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{'starttls' if self.starttls else 'direct-tls'}/{self.address}")


def open_socket(address: Address, reuse_port: bool = False) -> socket.socket:
    """A listening socket; IPv6 sockets are v6-only so [::] and 0.0.0.0 can both be bound.

    ``reuse_port`` (workers) lets several processes bind the same address; the kernel spreads
    new connections over them. It is off otherwise, so a second instance started by mistake
    gets "address already in use" instead of silently taking half the clients.
    """
    family, socktype, proto, sockaddr = _resolve(address)
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {address}: {(exc.strerror or str(exc)).lower()}") from None
    sock.setblocking(False)
    return sock


def adopt_sockets(fds: list[int]) -> list[socket.socket]:
    """Listening TCP sockets from descriptors systemd passed (socket activation)."""
    sockets = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ListenError(f"descriptor {fd} passed by systemd is not a listening TCP socket")
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def _resolve(address: Address) -> tuple[int, int, int, Any]:
    """``address`` as (family, type, proto, sockaddr) to listen on; a ListenError if it is none."""
    try:
        infos = socket.getaddrinfo(
            address.host,
            address.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV,
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None
    family, socktype, proto, _, sockaddr = infos[0]
    return family, socktype, proto, sockaddr


def _sockaddr(address: Address) -> tuple[str, int]:
    host, port = _resolve(address)[3][:2]
    return str(host), int(port)


def take_inherited(address: Address, inherited: list[socket.socket]) -> socket.socket | None:
    """The inherited socket bound to ``address`` (removed from ``inherited``), if any."""
    wanted = _sockaddr(address)
    for sock in inherited:
        host, port = sock.getsockname()[:2]
        if (str(host), int(port)) == wanted:
            inherited.remove(sock)
            return sock
    return None


def bind(
    listeners: list[Listener], inherited: list[socket.socket], reuse_port: bool = False
) -> list[tuple[Listener, socket.socket]]:
    """A listening socket for each listener: the one systemd passed for its address, else a new
    one. Every passed socket must be claimed; on any ListenError all of them are closed."""
    sockets = []
    unclaimed = list(inherited)
    try:
        for listener in listeners:
            sock = take_inherited(listener.address, unclaimed)
            if sock is None:
                sock = open_socket(listener.address, reuse_port)
            sockets.append((listener, sock))
        if unclaimed:
            names = ", ".join(str(sock.getsockname()[:2]) for sock in unclaimed)
            raise ListenError(f"systemd passed sockets no listener in the configuration names: {names}")
    except ListenError:
        # The process gives up; systemd keeps its own copies of the sockets it passed.
        for sock in [sock for _, sock in sockets] + unclaimed:
            sock.close()
        raise
    return sockets
