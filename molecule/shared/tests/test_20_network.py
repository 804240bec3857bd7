"""Who listens where, and what UFW lets in."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from support import Scenario, run_ok, tcp_listeners

BACKEND_PORT = 5200


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
    # The process behind 5200 is Prosody (lua), not something else that happens to be there.
    owners = run_ok(host, f"ss -Hltnp 'sport = :{BACKEND_PORT}'")
    assert "lua" in owners or "prosody" in owners, owners


@pytest.fixture(scope="module")
def ufw_status(host: Any) -> str:
    return run_ok(host, "ufw status")


def ufw_rules(status: str, port: str) -> list[str]:
    """Rule lines whose 'To' column is PORT (v4 and v6)."""
    return [line for line in status.splitlines() if re.match(rf"^{re.escape(port)}(\s|$)", line)]


def test_ufw_active(ufw_status: str) -> None:
    assert ufw_status.startswith("Status: active"), ufw_status


def test_ufw_allows_proxy_ports_and_never_limits(ufw_status: str, scenario: Scenario) -> None:
    for port in proxy_ports(scenario):
        rules = ufw_rules(ufw_status, f"{port}/tcp") + ufw_rules(ufw_status, f"{port}/tcp (v6)")
        allow = [r for r in rules if re.search(r"\sALLOW(\sIN)?\s", r)]
        assert len(allow) == 2, f"want {port}/tcp ALLOW for v4 and v6:\n{ufw_status}"
        limits = [line for line in ufw_status.splitlines() if line.startswith(f"{port}") and "LIMIT" in line]
        assert not limits, f"LIMIT rule on {port} (reconnect storms get dropped):\n{ufw_status}"


def test_ufw_keeps_ssh_open(ufw_status: str) -> None:
    ssh = [line for line in ufw_status.splitlines() if re.match(r"^(22/tcp|22|OpenSSH|SSH)\s.*ALLOW", line)]
    assert ssh, f"SSH is not allowed:\n{ufw_status}"


def test_ufw_does_not_open_backend(ufw_status: str) -> None:
    assert not ufw_rules(ufw_status, f"{BACKEND_PORT}/tcp"), ufw_status
    assert not ufw_rules(ufw_status, str(BACKEND_PORT)), ufw_status
