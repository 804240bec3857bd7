"""bbproxy_state: absent removes the proxy and leaves Prosody serving its clients itself, with its
own TLS, on the ports the proxy had; accounts, certificates, the operator's settings and the
firewall rules stay. A second run changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import expect_ok, run_site
from support import LoginCheck, Scenario, negotiated_protocol, run_ok, s_client, tcp_listeners

REMOVED = [
    "/etc/systemd/system/bbproxy.service",
    "/etc/systemd/system/bbproxy.socket",
    "/etc/bbproxy",
    "/opt/bbproxy",
    "/var/lib/bbproxy",
]


@pytest.fixture(scope="module")
def removed(host: Any, login_check: LoginCheck) -> Any:
    # login_check reads the served certificate from the proxy's configuration: before it goes.
    expect_ok(run_site({"bbproxy_state": "absent"}))
    return host


def test_the_proxy_is_gone(removed: Any) -> None:
    host = removed
    assert [path for path in REMOVED if host.file(path).exists] == []
    assert not host.service("bbproxy").is_running
    assert "bbproxy.service" not in run_ok(host, "systemctl list-unit-files --no-legend bbproxy.service || true")
    assert not host.service("bbproxy.socket").is_running
    assert "bbproxy.socket" not in run_ok(host, "systemctl list-unit-files --no-legend bbproxy.socket || true")
    assert not host.user("bbproxy").exists
    assert not host.group("bbproxy").exists


def test_prosody_listens_on_the_proxys_ports_itself(removed: Any, scenario: Scenario) -> None:
    ports = {listener.port for listener in tcp_listeners(removed)}
    expected = {5222, 5223} if scenario.direct_tls else {5222}
    assert expected <= ports, ports
    assert not {522, 523} & ports, f"Prosody still listens on the proxy's backend ports: {ports}"
    owners = run_ok(removed, "ss -Hltnp 'sport = :5222'")
    assert "lua" in owners and "bbproxy" not in owners, owners


def test_prosody_negotiates_its_own_tls(removed: Any, scenario: Scenario) -> None:
    modern = s_client(removed, 5222, scenario.domain, "-tls1_2")
    assert negotiated_protocol(modern) == "TLSv1.2", modern
    # Prosody on OpenSSL 3: what bbproxy was there for. TLS 1.0-only clients can't log in any more.
    legacy = s_client(removed, 5222, scenario.domain, "-tls1")
    assert negotiated_protocol(legacy) is None, legacy


def test_accounts_log_in_to_prosody_directly(removed: Any, login_check: LoginCheck, scenario: Scenario) -> None:
    result = login_check("1.2")
    assert result.returncode == 0, result.stdout + result.stderr
    if scenario.direct_tls:
        result = login_check("1.3", direct_tls=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_operator_settings_and_firewall_stay(removed: Any) -> None:
    assert removed.file("/etc/prosody/bbproxy.d/operator.cfg.lua").contains("lifecycle scenario")
    config = removed.file("/etc/prosody/prosody.cfg.lua").content_string
    assert "bbproxy_backend" not in config and "/opt/bbproxy" not in config
    rules = run_ok(removed, "ufw status")
    assert "5222/tcp" in rules and "ALLOW" in rules, rules


def test_a_second_absent_run_changes_nothing(removed: Any) -> None:
    again = expect_ok(run_site({"bbproxy_state": "absent"}))
    assert again.changed == 0, again.describe()
