"""Backend outages, stopping on SIGTERM, and start-up failures an operator can meet."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from .support import (
    DOMAIN,
    LOOPBACK,
    STARTTLS,
    Certs,
    Prosody,
    ProxyFactory,
    RecordingBackend,
    client_context,
    connect,
    free_port,
    open_stream,
    port_accepts,
    read_proceed,
    recv_until,
    recv_until_closed,
    run_login_check,
    run_proxy_once,
    stream_error_condition,
    stream_header,
)

pytestmark = pytest.mark.integration

BACKEND_DOWN_CONDITIONS = {"remote-connection-failed", "internal-server-error"}


def starttls_session(port: int, cafile: Path, version: str = "1.0") -> ssl.SSLSocket:
    """A client that has done STARTTLS and the handshake; returns the TLS socket."""
    sock = connect(port)
    open_stream(sock)
    sock.sendall(STARTTLS)
    read_proceed(sock)
    return client_context(version, cafile).wrap_socket(sock, server_hostname=DOMAIN)


def test_backend_down_then_back(
    proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs, event_loop_name: str
) -> None:
    backend_port = free_port()  # nothing listens here yet
    proxy = proxy_factory(backend=f"{LOOPBACK}:{backend_port}", loop=event_loop_name)

    for version in ("1.0", "1.3"):  # twice: the proxy keeps serving after a failure
        with starttls_session(proxy.port, certs.cafile, version) as tls:
            tls.sendall(stream_header())
            data, closed = recv_until_closed(tls, 15.0)
        assert closed, data
        assert data.startswith(b"<?xml") or data.startswith(b"<stream:stream"), data
        assert stream_error_condition(data) in BACKEND_DOWN_CONDITIONS, data
        assert proxy.is_running()

    down = run_login_check(port=proxy.port, prosody=prosody, cafile=certs.cafile, tls="1.0", timeout=15)
    assert down.returncode == 1, down.output

    # The backend comes back on the same port (a relay to the real Prosody).
    backend = RecordingBackend(forward_to=(prosody.host, prosody.port), port=backend_port)
    try:
        up = run_login_check(port=proxy.port, prosody=prosody, cafile=certs.cafile, tls="1.0", peer_tls="1.3")
        assert up.returncode == 0, up.output + proxy.log_text()[-3000:]
        assert backend.connection_count == 2
    finally:
        backend.close()


def test_backend_down_error_answers_the_clients_stream_header(
    proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs
) -> None:
    proxy = proxy_factory(backend=f"{LOOPBACK}:{free_port()}")
    with starttls_session(proxy.port, certs.cafile, "1.3") as tls:
        early, closed = recv_until_closed(tls, 0.5)
        assert early == b"" and not closed, f"sent before the client's stream header: {early!r}"
        tls.sendall(stream_header())
        data, closed = recv_until_closed(tls, 10.0)
    assert closed and stream_error_condition(data) in BACKEND_DOWN_CONDITIONS, data
    for version in ("1.0", "1.3"):
        down = run_login_check(port=proxy.port, prosody=prosody, cafile=certs.cafile, tls=version, timeout=10)
        assert "stream error <remote-connection-failed/>" in down.output, down.output


def test_under_the_journal_each_line_carries_its_priority(proxy_factory: ProxyFactory, certs: Certs) -> None:
    """stderr as the journal stream (JOURNAL_STREAM names it, as systemd does): every line starts
    with its sd-daemon(3) priority, the backend outage "<4>", the rest "<6>", with no timestamp
    (journald strips the prefix and files the line at it). Without it, no line has a prefix."""
    for journal in (True, False):
        proxy = proxy_factory(backend=f"{LOOPBACK}:{free_port()}", journal=journal)
        with starttls_session(proxy.port, certs.cafile, "1.0") as tls:
            tls.sendall(stream_header())
            recv_until_closed(tls, 10.0)
        proxy.stop()
        lines = proxy.log_text().splitlines()
        warnings = [line for line in lines if "WARNING conn=" in line and " unavailable: " in line]
        assert len(warnings) == 1, lines
        if journal:
            assert warnings[0].startswith("<4>WARNING conn="), warnings
            assert all(re.match(r"<[2-7]>[A-Z]+ ", line) for line in lines), lines
            assert sum(line.startswith("<6>INFO ") for line in lines) >= 2, lines
        else:
            assert not any(line.startswith("<") for line in lines), lines


def test_backend_closing_mid_session_closes_the_client(proxy_factory: ProxyFactory, certs: Certs) -> None:
    backend = RecordingBackend()  # records, answers nothing
    try:
        proxy = proxy_factory(backend=backend.address)
        with starttls_session(proxy.port, certs.cafile, "1.3") as tls:
            tls.sendall(stream_header())
            received = backend.wait_for_bytes(0, b"<stream:stream")
            assert received == stream_header()  # verbatim, and nothing from before TLS
            backend.close()
            data, closed = recv_until_closed(tls, 10.0)
        assert closed, data
        assert proxy.is_running()
    finally:
        backend.close()


def test_sigterm_drains_then_ends_sessions_with_system_shutdown(
    proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs
) -> None:
    grace = 2.0
    proxy = proxy_factory(
        backend=f"{prosody.host}:{prosody.port}", config={"limits": {"shutdown_grace": grace}}
    )
    pre_tls = connect(proxy.port)
    open_stream(pre_tls)
    relayed = starttls_session(proxy.port, certs.cafile, "1.0")
    relayed.sendall(stream_header())
    assert b"</stream:features>" in recv_until(relayed, b"</stream:features>", 10.0)

    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    try:
        # The listeners close at once, so a restarted instance could bind ...
        deadline = time.monotonic() + 5
        while port_accepts(proxy.port):
            assert time.monotonic() < deadline, "the listener still accepts after SIGTERM"
            time.sleep(0.05)
        # ... while live sessions go on relaying during the grace period: Prosody answers.
        relayed.sendall(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AG5vYm9keQB3cm9uZw==</auth>"
        )
        assert b"<not-authorized/>" in recv_until(relayed, b"</failure>", 10.0)
        # Then both are ended with system-shutdown, so clients reconnect promptly.
        pre_data, pre_closed = recv_until_closed(pre_tls, 10.0)
        relayed_data, relayed_closed = recv_until_closed(relayed, 10.0)
        status = proxy.proc.wait(timeout=15)
    finally:
        pre_tls.close()
        relayed.close()
    elapsed = time.monotonic() - started
    assert pre_closed and relayed_closed
    assert stream_error_condition(pre_data) == "system-shutdown", pre_data
    assert stream_error_condition(relayed_data) == "system-shutdown", relayed_data
    assert status == 0, proxy.log_text()
    assert grace <= elapsed < grace + 10
    assert "Traceback" not in proxy.log_text()
    proxy.stopped = True


def test_port_in_use_is_one_line_and_exit_1(certs: Certs) -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_proxy_once(
            [
                "--listen",
                f"{LOOPBACK}:{port}",
                "--backend",
                f"{LOOPBACK}:1",
                "--cert",
                str(certs.rsa.cert),
                "--key",
                str(certs.rsa.key),
                "--domain",
                DOMAIN,
            ]
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if str(port) in line]
    assert len(errors) == 1, output
