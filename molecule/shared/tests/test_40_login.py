"""Full XMPP logins from the host through the published ports, and what must never get through."""

from __future__ import annotations

import base64
import secrets
import socket
import time
from typing import Any

import pytest

from support import LoginCheck, ProsodyLog, Scenario, read_until, stream_header


def assert_login(result: Any) -> None:
    assert result.returncode == 0, f"login check failed: {result.stdout}{result.stderr}"


def test_tls10_login_and_message(login_check: LoginCheck, scenario: Scenario, prosody_log: ProsodyLog) -> None:
    mark = prosody_log.mark()
    result = login_check("1.0")
    assert_login(result)
    assert "tls=TLSv1 " in result.stdout or "tls=TLSv1\n" in result.stdout, result.stdout
    # The positive control for test_pre_tls_auth_never_reaches_prosody: a real login shows up.
    time.sleep(1)
    logged = prosody_log.since(mark)
    assert scenario.users[0].jid in logged, f"Prosody's log does not show {scenario.users[0].jid}:\n{logged}"


def test_tls13_login_and_message(login_check: LoginCheck) -> None:
    result = login_check("1.3")
    assert_login(result)
    assert "tls=TLSv1.3" in result.stdout, result.stdout


def test_direct_tls10_login_and_message(login_check: LoginCheck, scenario: Scenario) -> None:
    if not scenario.direct_tls:
        pytest.skip("direct TLS is off in this scenario's variables")
    assert_login(login_check("1.0", direct_tls=True))


def test_pre_tls_auth_never_reaches_prosody(scenario: Scenario, prosody_log: ProsodyLog) -> None:
    """SASL before STARTTLS would send the password in clear: refuse it, never relay it."""
    probe = f"probe{secrets.token_hex(4)}"
    credentials = base64.b64encode(f"\0{probe}\0not-a-password".encode()).decode()
    mark = prosody_log.mark()
    with socket.create_connection(("127.0.0.1", scenario.host_port(5222)), timeout=10) as sock:
        sock.sendall(stream_header(scenario.domain))
        features = read_until(sock, b"</stream:features>")
        assert b"starttls" in features, features
        sock.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>".encode())
        reply = read_until(sock, b"</stream:stream>")
    assert b"<stream:error>" in reply, f"pre-TLS <auth> was not refused with a stream error: {reply!r}"
    assert b"success" not in reply, reply
    time.sleep(1)
    logged = prosody_log.since(mark)
    assert probe not in logged, f"Prosody saw the pre-TLS auth attempt:\n{logged}"
    assert "Client connected" not in logged, f"a session reached Prosody:\n{logged}"
