"""Who listens where, and what UFW lets in."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from support import Scenario, run_ok, tcp_listeners

BACKEND_PORT = 522  # bbproxy_backend_port: below 1024, so only Prosody can bind it
S2S_PORT = 5269  # Prosody's s2s listener: on by default (bbproxy_prosody_s2s_enabled)


def proxy_ports(scenario: Scenario) -> list[int]:
    return [5222, 5223] if scenario.direct_tls else [5222]


def test_proxy_listens_on_all_addresses(host: Any, scenario: Scenario) -> None:
    listeners = {(lst.address, lst.port) for lst in tcp_listeners(host)}
    for port in proxy_ports(scenario):
        assert ("0.0.0.0", port) in listeners, f"nothing on 0.0.0.0:{port}: {sorted(listeners)}"
        assert ("::", port) in listeners, f"nothing on [::]:{port}: {sorted(listeners)}"


def test_direct_tls_port_follows_the_switch(host: Any, scenario: Scenario) -> None:
    on_5223 = [lst for lst in tcp_listeners(host) if lst.port == 5223]
    assert bool(on_5223) == scenario.direct_tls, on_5223


def test_backend_listens_on_loopback_only(host: Any) -> None:
    backend = [lst for lst in tcp_listeners(host) if lst.port == BACKEND_PORT]
    assert backend, f"Prosody is not listening on {BACKEND_PORT}"
    public = [lst for lst in backend if not ipaddress.ip_address(lst.address).is_loopback]
    assert not public, f"Prosody's plaintext c2s port is reachable from outside: {public}"


def test_backend_is_prosody(host: Any) -> None:
    # The process behind the backend port is Prosody (lua), not something else that happens to be there.
    owners = run_ok(host, f"ss -Hltnp 'sport = :{BACKEND_PORT}'")
    assert "lua" in owners or "prosody" in owners, owners


@pytest.fixture(scope="module")
def ufw_status(host: Any) -> str:
    return run_ok(host, "ufw status")


def ufw_rules(status: str) -> list[tuple[str, str, str]]:
    """(To, Action, From) of each rule line of `ufw status`, e.g. ("5222/tcp (v6)", "ALLOW", ...)."""
    rules = []
    for line in status.splitlines():
        rule = re.sub(r"\s+# .*$", "", line)  # the rule's comment, e.g. "# SSH (bbproxy role)"
        columns = re.split(r"\s{2,}", rule.strip())
        if len(columns) == 3 and columns[0] not in ("To", "--"):
            rules.append((columns[0], columns[1], columns[2]))
    return rules


def test_ufw_active(ufw_status: str) -> None:
    assert ufw_status.startswith("Status: active"), ufw_status


def test_ufw_allows_proxy_ports_and_never_limits(ufw_status: str, scenario: Scenario) -> None:
    rules = ufw_rules(ufw_status)
    for port in proxy_ports(scenario):
        for target in (f"{port}/tcp", f"{port}/tcp (v6)"):
            actions = [action for to, action, _ in rules if to == target]
            assert actions == ["ALLOW"], f"want one {target} ALLOW rule, got {actions}:\n{ufw_status}"
        limits = [rule for rule in rules if rule[0].startswith(str(port)) and "LIMIT" in rule[1]]
        assert not limits, f"LIMIT rule on {port} (reconnect storms get dropped):\n{ufw_status}"


def test_ufw_keeps_ssh_open(ufw_status: str) -> None:
    ssh = [rule for rule in ufw_rules(ufw_status) if rule[0] in ("22/tcp", "22", "OpenSSH", "SSH")]
    assert any(action.startswith("ALLOW") for _, action, _ in ssh), f"SSH is not allowed:\n{ufw_status}"


def test_ufw_does_not_open_backend(ufw_status: str) -> None:
    backend = [rule for rule in ufw_rules(ufw_status) if rule[0].split("/")[0].split()[0] == str(BACKEND_PORT)]
    assert not backend, ufw_status


def test_ufw_allows_s2s_by_default(host: Any, ufw_status: str) -> None:
    # The role's defaults keep federation (bbproxy_prosody_s2s_enabled) and open what Prosody serves
    # (bbproxy_firewall_open_prosody_ports): without the rule, UFW's default deny drops inbound s2s.
    s2s = [lst for lst in tcp_listeners(host) if lst.port == S2S_PORT]
    public = [lst for lst in s2s if not ipaddress.ip_address(lst.address).is_loopback]
    assert public, f"Prosody does not listen on {S2S_PORT} publicly"
    rules = ufw_rules(ufw_status)
    for target in (f"{S2S_PORT}/tcp", f"{S2S_PORT}/tcp (v6)"):
        actions = [action for to, action, _ in rules if to == target]
        assert actions == ["ALLOW"], f"want one {target} ALLOW rule, got {actions}:\n{ufw_status}"
