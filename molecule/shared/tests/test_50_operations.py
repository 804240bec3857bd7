"""Day-2 operations: Prosody restarts under the proxy, certificates renewed with a SIGHUP reload.

These tests change the container's state, so they run last (files run in name order, tests in
file order) and the certificate test is the very last one.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import socket
import ssl
import warnings
from typing import Any

from support import (
    LoginCheck,
    Scenario,
    file_fingerprint,
    listening,
    main_pid,
    read_until,
    run_ok,
    served_fingerprint,
    socket_as,
    stream_header,
    tls10_cert_path,
    wait_for,
)

BACKEND_PORT = 522  # bbproxy_backend_port
PROSODY_TLS_PORT = 523  # bbproxy_prosody_tls_port


def test_prosody_restart_keeps_proxy_up(host: Any, login_check: LoginCheck) -> None:
    proxy_pid = main_pid(host, "bbproxy")
    run_ok(host, "systemctl restart prosody")
    wait_for(lambda: listening(host, BACKEND_PORT), f"Prosody to listen on {BACKEND_PORT} again")
    assert host.service("bbproxy").is_running
    assert main_pid(host, "bbproxy") == proxy_pid, "restarting Prosody restarted the proxy"
    result = login_check("1.0")
    assert result.returncode == 0, f"no login after the Prosody restart: {result.stdout}{result.stderr}"


def test_squatting_while_prosody_is_down_gets_nothing(host: Any, login_check: LoginCheck) -> None:
    """Prosody stopped (as during a restart, an upgrade or a crash): its ports are free, yet a
    local user still cannot take them."""
    run_ok(host, "systemctl stop prosody")
    try:
        assert not listening(host, BACKEND_PORT)
        for port in (BACKEND_PORT, PROSODY_TLS_PORT):
            for address in ("127.0.0.1", "::1"):
                got = socket_as(host, "nobody", "bind", address, port)
                assert got == "PermissionError", f"nobody took [{address}]:{port} while Prosody was down: {got}"
    finally:
        run_ok(host, "systemctl start prosody")
    wait_for(lambda: listening(host, BACKEND_PORT), f"Prosody to listen on {BACKEND_PORT} again")
    result = login_check("1.0")
    assert result.returncode == 0, f"no login after Prosody came back: {result.stdout}{result.stderr}"


def legacy_client_context() -> ssl.SSLContext:
    """A TLS 1.0 client like a BlackBerry 10; it trusts anything (fingerprints are compared)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def open_session(scenario: Scenario) -> ssl.SSLSocket:
    """STARTTLS with TLS 1.0 through the published port, up to Prosody's SASL features."""
    raw = socket.create_connection(("127.0.0.1", scenario.host_port(5222)), timeout=15)
    raw.sendall(stream_header(scenario.domain))
    assert b"starttls" in read_until(raw, b"</stream:features>")
    raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    # Read exactly the <proceed/> element: a byte more would be the server's TLS data.
    proceed = b""
    while not re.search(rb"<proceed[^>]*/>", proceed) and len(proceed) < 1024:
        byte = raw.recv(1)
        if not byte:
            break
        proceed += byte
    assert re.search(rb"<proceed[^>]*/>", proceed), proceed
    session = legacy_client_context().wrap_socket(raw, server_hostname=scenario.domain)
    session.sendall(stream_header(scenario.domain))
    features = read_until(session, b"</stream:features>")
    assert b"PLAIN" in features, f"no SASL PLAIN from Prosody behind the proxy: {features!r}"
    return session


def fingerprint_of(session: ssl.SSLSocket) -> str:
    der = session.getpeercert(binary_form=True)
    assert der
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def test_sighup_serves_new_cert_and_keeps_sessions(host: Any, scenario: Scenario, proxy_config: dict[str, Any]) -> None:
    cert, key = tls10_cert_path(proxy_config, scenario.domain)  # what served_fingerprint() sees
    old = file_fingerprint(host, cert)
    assert served_fingerprint(host, 5222, scenario.domain) == old
    session = open_session(scenario)
    try:
        assert fingerprint_of(session) == old
        # A renewal: new key and certificate written in place (owner and mode stay), then reload.
        domain = shlex.quote(scenario.domain)
        run_ok(
            host,
            "set -e; d=$(mktemp -d); "
            f"openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={domain} "
            f"-addext subjectAltName=DNS:{domain} -keyout $d/key -out $d/crt 2>/dev/null; "
            f"cat $d/key > {shlex.quote(key)}; cat $d/crt > {shlex.quote(cert)}; rm -r $d",
        )
        new = file_fingerprint(host, cert)
        assert new != old
        proxy_pid = main_pid(host, "bbproxy")
        run_ok(host, "systemctl reload bbproxy")
        wait_for(
            lambda: served_fingerprint(host, 5222, scenario.domain) == new, "new handshakes to get the new cert", 15
        )
        assert main_pid(host, "bbproxy") == proxy_pid, "the reload restarted the proxy"
        if scenario.direct_tls:
            assert served_fingerprint(host, 5223, scenario.domain, starttls=False) == new
        # The session opened before the reload still relays to Prosody: log in on it.
        user = scenario.users[0]
        token = base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode()
        session.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        reply = read_until(session, b"success")
        assert b"<success" in reply, f"the pre-reload session no longer works: {reply!r}"
    finally:
        session.close()
