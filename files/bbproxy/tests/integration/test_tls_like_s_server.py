"""The proxy answers a TLS client as ``openssl s_server`` does (tlsfuzzer's findings, issue 16).

Each test sends the same bytes to ``openssl s_server -www`` set up like the proxy's context
(support.s_server_argv) and to the proxy's direct-TLS and STARTTLS listeners (an echo backend
behind it), and expects the same answer from all three. The client runs over MemoryBIOs on a
plain socket, so a test decides what each write carries and sees every record that comes back.
TLS 1.2 and 1.0 only: there the record types are in the clear (an alert is an alert).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support import (
    DOMAIN,
    LOOPBACK,
    STARTTLS,
    Certs,
    ProxyFactory,
    RecordingBackend,
    client_context,
    connect,
    open_stream,
    read_proceed,
    running_s_server,
)

pytestmark = pytest.mark.integration

TARGETS = ("s_server", "direct-tls", "starttls")
RECORD_VERSION = {"1.0": b"\x03\x01", "1.2": b"\x03\x03"}
ALERT = 0x15
# A warning-level unsupported_certificate alert: what tlsfuzzer's test-ssl-death-alert.py sends.
WARNING_ALERT_BODY = b"\x01\x2b"
TIMEOUT = 10.0

Connect = Callable[[], socket.socket]


@pytest.fixture(params=TARGETS)
def target(
    request: pytest.FixtureRequest, certs: Certs, proxy_factory: ProxyFactory, tmp_path: Path
) -> Iterator[Connect]:
    """A function that opens a connection at the point where the client's ClientHello goes."""
    if request.param == "s_server":
        with running_s_server(certs.pair("rsa"), tmp_path) as port:
            yield lambda: socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
        return
    backend = RecordingBackend(echo=True)
    try:
        proxy = proxy_factory(backend=backend.address, direct_tls=True)
        if request.param == "direct-tls":
            assert proxy.direct_tls_port is not None
            port = proxy.direct_tls_port
            yield lambda: socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
        else:

            def starttls() -> socket.socket:
                sock = connect(proxy.port, TIMEOUT)
                open_stream(sock)
                sock.sendall(STARTTLS)
                read_proceed(sock)
                return sock

            yield starttls
    finally:
        backend.close()


class Client:
    """One TLS connection driven by hand: TLS over MemoryBIOs, the bytes on a plain socket."""

    def __init__(
        self, sock: socket.socket, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
    ) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=DOMAIN, session=session)

    def _pump(self, step: Callable[[], object]) -> None:
        """Run ``step`` (a handshake or a shutdown) until it stops wanting the peer's bytes."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                step()
                self.sock.sendall(self.outgoing.read())
                return
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
            data = self.recv(deadline)
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()  # the next step raises: the server closed (or was silent)

    def recv(self, deadline: float) -> bytes:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            return self.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return b""

    def handshake(self, version: str, warning_alerts: int = 0) -> str:
        """The ClientHello with ``warning_alerts`` alert records behind it in ONE write, then the
        rest of the handshake. Returns "ok", or OpenSSL's reason for the failure."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        alert = bytes([ALERT]) + RECORD_VERSION[version] + b"\x00\x02" + WARNING_ALERT_BODY
        self.sock.sendall(self.outgoing.read() + alert * warning_alerts)
        try:
            self._pump(self.tls.do_handshake)
        except ssl.SSLError as exc:
            return str(exc.reason)
        return "ok"

    def close(self) -> list[int]:
        """Send close_notify, then read to the end: the type of every record the server sent
        after it (and the server's close_notify must be among them)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self.sock.sendall(self.outgoing.read())
        data, deadline = b"", time.monotonic() + TIMEOUT
        while chunk := self.recv(deadline):
            data += chunk
        types = []
        pos = 0
        while pos + 5 <= len(data):
            types.append(data[pos])
            pos += 5 + int.from_bytes(data[pos + 3 : pos + 5], "big")
        self.incoming.write(data)
        self.tls.unwrap()  # raises unless the server's close_notify is in there
        return types


@pytest.mark.parametrize(
    ("version", "alerts", "expected"),
    [
        ("1.2", 0, "ok"),
        ("1.0", 0, "ok"),
        # tlsfuzzer's test-ssl-death-alert.py: OpenSSL takes four warnings in a row ...
        ("1.2", 4, "ok"),
        # ... and ends the handshake at the fifth (CVE-2016-8610).
        ("1.2", 5, "SSLV3_ALERT_UNEXPECTED_MESSAGE"),
    ],
)
def test_warning_alerts_behind_the_hello_and_close_notify_as_from_s_server(
    target: Connect, certs: Certs, version: str, alerts: int, expected: str
) -> None:
    """Records in the ClientHello's write reach OpenSSL as on a direct socket, and a client that
    sends close_notify gets close_notify back and nothing else, as from s_server: before the
    fix the proxy sent a stream error (application data) first, which tlsfuzzer rejects."""
    with target() as sock:
        client = Client(sock, client_context(version, certs.cafile))
        outcome = client.handshake(version, alerts)
        assert outcome == expected
        if outcome == "ok":
            assert client.close() == [ALERT]


@pytest.mark.parametrize("version", ["1.2", "1.0"])
def test_session_id_resumption(target: Connect, certs: Certs, version: str) -> None:
    """A client resumes by session ID on its next connection, at TLS 1.2 (the modern context)
    and at TLS 1.0 (the legacy one): each class's context keeps its own session cache."""
    ctx = client_context(version, certs.cafile)
    ctx.options |= ssl.OP_NO_TICKET  # the session ID, not a ticket
    with target() as sock:
        first = Client(sock, ctx)
        assert first.handshake(version) == "ok"
        assert first.close() == [ALERT]
        session = first.tls.session
    assert session is not None and session.id
    with target() as sock:
        second = Client(sock, ctx, session=session)
        assert second.handshake(version) == "ok"
        assert second.tls.session_reused
        assert second.tls.session is not None and second.tls.session.id == session.id
        assert second.close() == [ALERT]


@pytest.mark.parametrize("version", ["1.2", "1.0"])
def test_no_session_tickets_and_a_ticket_client_still_resumes(
    target: Connect, certs: Certs, version: str
) -> None:
    """Tickets are off (docs/security.md, "Tickets and forward secrecy"): a client that asks for
    one gets none, and resumes by the session ID it also sent."""
    ctx = client_context(version, certs.cafile)  # tickets allowed: the client asks for one
    with target() as sock:
        first = Client(sock, ctx)
        assert first.handshake(version) == "ok"
        assert first.close() == [ALERT]
        session = first.tls.session
    assert session is not None and session.id and not session.has_ticket
    with target() as sock:
        second = Client(sock, ctx, session=session)
        assert second.handshake(version) == "ok"
        assert second.tls.session_reused
        assert second.close() == [ALERT]
