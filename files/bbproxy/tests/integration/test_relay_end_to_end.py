"""After TLS: bytes relayed verbatim both ways under backpressure, half-close passed on, no leaks."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from pathlib import Path

import pytest

from .support import (
    STARTTLS,
    Certs,
    ProxyFactory,
    RecordingBackend,
    client_context,
    connect,
    open_stream,
    read_proceed,
    recv_until_closed,
    stream_header,
    wait_until,
)

pytestmark = pytest.mark.integration

PAYLOAD = 4 * 1024 * 1024  # well past every socket and TLS buffer: backpressure must engage


def tls_session(port: int, cafile: Path, version: str) -> ssl.SSLSocket:
    sock = connect(port)
    open_stream(sock)
    sock.sendall(STARTTLS)
    read_proceed(sock)
    return client_context(version, cafile).wrap_socket(sock, server_hostname="example.test")


def pump(
    tls: ssl.SSLSocket, payload: bytes, timeout: float, *, half_close_early: bool, expect: int | None = None
) -> tuple[bytes, bool]:
    """Send ``payload`` while reading the echo, without threads.

    The client's write side is then half-closed at the TCP level (an SSLSocket cannot send
    close_notify and keep reading): right after the last byte is sent with
    ``half_close_early``, else once the whole echo (``expect`` bytes, default the payload's
    length) is back. Returns (echo, closed by the proxy).
    """
    expected = len(payload) if expect is None else expect
    tls.setblocking(False)
    deadline = time.monotonic() + timeout
    sent, received = 0, bytearray()
    shut = False
    while True:
        if time.monotonic() > deadline:
            return bytes(received), False
        want_write = sent < len(payload)
        if not want_write and not shut and (half_close_early or len(received) >= expected):
            shut = True
            socket.socket.shutdown(tls, socket.SHUT_WR)
        readable, writable, _ = select.select([tls], [tls] if want_write else [], [], 0.5)
        if readable or tls.pending():
            try:
                chunk: bytes | None = tls.recv(65536)
            except ssl.SSLWantReadError:
                chunk = None
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
                chunk = b""
            if chunk == b"":
                return bytes(received), True
            if chunk:
                received += chunk
        if writable and want_write:
            try:
                sent += tls.send(payload[sent : sent + 65536])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                return bytes(received), True  # closed by the proxy before we were done


def start_relay(tls: ssl.SSLSocket, backend: RecordingBackend, index: int) -> None:
    """Send our stream header and wait for its echo: the relay is up end to end."""
    tls.sendall(stream_header())
    backend.wait_for_bytes(index, stream_header())
    echoed = b""
    while len(echoed) < len(stream_header()):
        chunk = tls.recv(4096)
        assert chunk, "closed before the echo of our stream header"
        echoed += chunk
    assert echoed == stream_header()


@pytest.mark.parametrize("version", ["1.0", "1.3"])
def test_relay_is_verbatim_both_ways_with_backpressure(
    proxy_factory: ProxyFactory, certs: Certs, event_loop_name: str, version: str
) -> None:
    backend = RecordingBackend(echo=True)
    try:
        proxy = proxy_factory(backend=backend.address, loop=event_loop_name)
        payload = os.urandom(PAYLOAD)
        with tls_session(proxy.port, certs.cafile, version) as tls:
            start_relay(tls, backend, 0)
            echoed, closed = pump(tls, payload, timeout=60, half_close_early=False)
        assert len(echoed) == len(payload), f"{len(echoed)} bytes echoed\n{proxy.log_text()[-2000:]}"
        assert echoed == payload
        assert closed, "the client's EOF did not end the session"
        assert backend.connections == [stream_header() + payload]  # nothing from before TLS, nothing lost
        wait_until(lambda: backend.saw_eof(0), 5, "the client's EOF to reach the backend")
        assert proxy.is_running()
    finally:
        backend.close()


def test_client_half_close_still_gets_the_backends_answer(proxy_factory: ProxyFactory, certs: Certs) -> None:
    """A client that half-closes right after sending still receives what the backend sends back."""
    backend = RecordingBackend(echo=True)
    try:
        proxy = proxy_factory(backend=backend.address)
        payload = os.urandom(256 * 1024)
        with tls_session(proxy.port, certs.cafile, "1.2") as tls:
            start_relay(tls, backend, 0)
            echoed, closed = pump(tls, payload, timeout=20, half_close_early=True)
        assert backend.connections == [stream_header() + payload]
        assert len(echoed) == len(payload), f"{len(echoed)} of {len(payload)} echoed bytes arrived"
        assert closed
    finally:
        backend.close()


def test_client_data_before_the_backend_is_up_is_kept(proxy_factory: ProxyFactory, certs: Certs) -> None:
    """A client may pipeline after TLS; a slow backend connect must cost time, not the session."""
    backend = RecordingBackend(echo=True, stalled=True)
    try:
        proxy = proxy_factory(backend=backend.address)
        payload = stream_header() + os.urandom(256 * 1024)
        with tls_session(proxy.port, certs.cafile, "1.3") as tls:
            tls.setblocking(False)
            sent, deadline = 0, time.monotonic() + 2
            while sent < len(payload) and time.monotonic() < deadline:  # as much as the proxy takes
                with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    sent += tls.send(payload[sent : sent + 65536])
                select.select([], [tls], [], 0.05)
            backend.start()  # the proxy's SYN retry (after ~1 s) now gets through
            tls.setblocking(True)
            tls.settimeout(10)
            tls.sendall(payload[sent:])
            echoed, _ = pump(tls, b"", timeout=20, half_close_early=False, expect=len(payload))
        assert len(echoed) == len(payload), proxy.log_text()[-2000:]
        assert echoed == payload
    finally:
        backend.close()


def test_backend_half_close_reaches_the_client(proxy_factory: ProxyFactory, certs: Certs) -> None:
    """The backend ends the stream: the client reads everything, then the connection closes."""
    backend = RecordingBackend()
    try:
        proxy = proxy_factory(backend=backend.address)
        with tls_session(proxy.port, certs.cafile, "1.2") as tls:
            tls.sendall(stream_header())
            backend.wait_for_bytes(0, stream_header())
            backend.close()
            data, closed = recv_until_closed(tls, 10)
        assert closed, data
    finally:
        backend.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_no_leaked_sockets(proxy_factory: ProxyFactory, certs: Certs) -> None:
    """Sessions of every kind come and go; the proxy's descriptor count returns to where it was."""
    backend = RecordingBackend(echo=True)
    try:
        proxy = proxy_factory(backend=backend.address, config={"limits": {"pre_tls_timeout": 1.0}})
        baseline = open_fds(proxy.pid)
        for round_ in range(5):
            # refused before TLS, abandoned mid-handshake, relayed and closed, left to time out
            with connect(proxy.port) as sock:
                sock.sendall(b"garbage")
                recv_until_closed(sock, 5)
            with connect(proxy.port) as sock:
                open_stream(sock)
                sock.sendall(STARTTLS)
                read_proceed(sock)
                sock.sendall(b"\x16\x03\x01\x00")  # a ClientHello cut short, then gone
            index = backend.connection_count
            with tls_session(proxy.port, certs.cafile, "1.0" if round_ % 2 else "1.3") as tls:
                tls.sendall(stream_header())
                backend.wait_for_bytes(index, stream_header())
            with connect(proxy.port):
                pass
        silent = connect(proxy.port)  # closed by the pre-TLS timeout
        try:
            wait_until(
                lambda: open_fds(proxy.pid) <= baseline + 1, 10, "the proxy to close finished sessions"
            )
            recv_until_closed(silent, 5)
        finally:
            silent.close()
        wait_until(lambda: open_fds(proxy.pid) <= baseline, 10, "the proxy's fd count to return to baseline")
    finally:
        backend.close()
