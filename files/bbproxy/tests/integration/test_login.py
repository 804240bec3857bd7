"""Real XMPP logins through the proxy into a real Prosody (slixmpp via tools/xmpp_login_check.py)."""

from __future__ import annotations

import pytest

from .support import Certs, Prosody, ProxyFactory, run_login_check

pytestmark = pytest.mark.integration


def assert_logged_in(output: str, returncode: int, *expected_versions: str) -> None:
    assert returncode == 0, output
    lines = [line for line in output.splitlines() if line.startswith("OK ") and " tls=" in line]
    assert [line.split(" tls=")[1].split()[0] for line in lines] == list(expected_versions), output
    assert "OK message delivered" in output, output


@pytest.mark.parametrize("cert", ["rsa", "ecdsa"])
def test_tls10_and_tls13_users_exchange_a_message(
    shared_proxies: ProxyFactory, prosody: Prosody, certs: Certs, event_loop_name: str, cert: str
) -> None:
    proxy = shared_proxies(cert=cert, loop=event_loop_name)
    result = run_login_check(port=proxy.port, prosody=prosody, cafile=certs.cafile, tls="1.0", peer_tls="1.3")
    assert_logged_in(result.output, result.returncode, "TLSv1", "TLSv1.3")
    # Below TLS 1.2 only ECDHE + AES-CBC-SHA suites are allowed.
    legacy_cipher = result.output.splitlines()[0].split(" cipher=")[1].split()[0]
    assert legacy_cipher.startswith("ECDHE-") and legacy_cipher.endswith("-SHA"), result.output


def test_tls11_and_tls12_users_with_sasl_plain(
    shared_proxies: ProxyFactory, prosody: Prosody, certs: Certs
) -> None:
    proxy = shared_proxies(cert="ecdsa")
    result = run_login_check(
        port=proxy.port,
        prosody=prosody,
        cafile=certs.cafile,
        tls="1.1",
        peer_tls="1.2",
        extra=["--sasl-mech", "PLAIN"],
    )
    assert_logged_in(result.output, result.returncode, "TLSv1.1", "TLSv1.2")
    assert result.output.count("sasl=PLAIN") == 2, result.output


def test_direct_tls_login(
    shared_proxies: ProxyFactory, prosody: Prosody, certs: Certs, event_loop_name: str
) -> None:
    proxy = shared_proxies(cert="rsa", loop=event_loop_name, direct_tls=True)
    assert proxy.direct_tls_port is not None
    result = run_login_check(
        port=proxy.direct_tls_port,
        prosody=prosody,
        cafile=certs.cafile,
        tls="1.0",
        peer_tls="1.3",
        direct_tls=True,
    )
    assert_logged_in(result.output, result.returncode, "TLSv1", "TLSv1.3")
    assert result.output.count("alpn=xmpp-client") == 2, result.output


def test_wrong_password_is_refused_by_prosody(
    shared_proxies: ProxyFactory, prosody: Prosody, certs: Certs
) -> None:
    """The proxy relays SASL verbatim: Prosody's refusal reaches the client."""
    proxy = shared_proxies(cert="rsa")
    result = run_login_check(
        port=proxy.port,
        prosody=Prosody(
            prosody.host,
            prosody.port,
            prosody.domain,
            {**prosody.passwords, "alice": "not-the-password"},
            prosody.log,
            prosody.proc,
        ),
        cafile=certs.cafile,
        tls="1.0",
        timeout=10,
    )
    assert result.returncode == 1, result.output
    assert "SASL authentication failed" in result.output, result.output


def test_proxy_logs_one_line_per_connection_without_secrets(
    proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs
) -> None:
    proxy = proxy_factory(backend=f"{prosody.host}:{prosody.port}", cert="ecdsa")
    result = run_login_check(port=proxy.port, prosody=prosody, cafile=certs.cafile, tls="1.0", peer_tls="1.3")
    assert_logged_in(result.output, result.returncode, "TLSv1", "TLSv1.3")
    proxy.stop()
    log = proxy.log_text()
    closes = [line for line in log.splitlines() if "conn=" in line and "close=" in line]
    assert len(closes) == 2, log
    assert any("tls=TLSv1 " in line for line in closes), log
    assert any("tls=TLSv1.3 " in line for line in closes), log
    for password in prosody.passwords.values():
        assert password not in log
    assert "bbproxy-check-" not in log, "a message body reached the proxy log"
