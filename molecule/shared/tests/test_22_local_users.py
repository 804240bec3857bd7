"""A local user without privileges gets nothing from Prosody's backend ports (issue 15, item 1).

The backend port takes plaintext c2s marked secure (PLAIN offered, and with the PROXY protocol any
claimed client address); the direct-TLS port takes the spliced sessions. A local user who could
bind either while Prosody restarts would sit between the proxy and Prosody; one who could connect
would be treated like the proxy. Each check runs as `nobody` with no capability, and each has a
control that shows the same probe succeeding where it should.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from support import main_pid, run_ok, socket_as, systemctl_show

BACKEND_PORT = 522  # bbproxy_backend_port
PROSODY_TLS_PORT = 523  # bbproxy_prosody_tls_port ("legacy-only" routing)
LOOPBACK = ("127.0.0.1", "::1")


@pytest.fixture(scope="module")
def backend_ports(proxy_config: dict[str, Any]) -> list[int]:
    """The backend ports Prosody listens on in this scenario."""
    return [BACKEND_PORT] + ([PROSODY_TLS_PORT] if proxy_config["tls"]["routing"] == "legacy-only" else [])


def test_backend_ports_are_privileged(host: Any) -> None:
    start = int(run_ok(host, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"))
    assert BACKEND_PORT < start and PROSODY_TLS_PORT < start, start


def test_prosody_gets_only_the_bind_capability(host: Any) -> None:
    shown = systemctl_show(host, "prosody", "AmbientCapabilities", "CapabilityBoundingSet", "ExecStartPre")
    assert shown["AmbientCapabilities"] == "cap_net_bind_service", shown
    assert shown["CapabilityBoundingSet"] == "cap_net_bind_service", shown
    assert "/usr/sbin/nft" in shown["ExecStartPre"] and "backend-guard.nft" in shown["ExecStartPre"], shown


def test_local_user_cannot_bind_the_backend_ports(host: Any, backend_ports: list[int]) -> None:
    for port in backend_ports:
        for address in LOOPBACK:
            got = socket_as(host, "nobody", "bind", address, port)
            assert got == "PermissionError", f"nobody binding [{address}]:{port}: {got}"
    # Control: the same user binds the old, unprivileged backend port at once.
    assert socket_as(host, "nobody", "bind", "127.0.0.1", 5200) == "ok"


def test_only_the_proxy_user_can_connect_to_the_backend_ports(host: Any, backend_ports: list[int]) -> None:
    for port in backend_ports:
        for address in LOOPBACK:
            got = socket_as(host, "nobody", "connect", address, port)
            assert got == "ConnectionRefusedError", f"nobody connecting to [{address}]:{port}: {got}"
            # Control: Prosody is there, and the proxy's user reaches it.
            assert socket_as(host, "bbproxy", "connect", address, port) == "ok", (address, port)


def test_guard_counts_the_refused_connections(host: Any) -> None:
    """The refusals above came from the role's nftables table, not from something else."""
    uid = run_ok(host, "id -u bbproxy").strip()
    rules = [line for line in run_ok(host, "nft list table inet bbproxy_guard").splitlines() if "dport" in line]
    backend = [line for line in rules if f"{BACKEND_PORT}" in line and "reject" in line]
    assert backend, rules
    assert f"meta skuid != {uid} " in backend[0] or 'meta skuid != "bbproxy"' in backend[0], rules
    assert "counter packets 0 " not in backend[0], rules


def test_local_user_cannot_hold_the_metrics_slots(host: Any, proxy_config: dict[str, Any]) -> None:
    """Only bbproxy_metrics_local_users (root here) reach the metrics endpoint, so nobody else can
    occupy its scrape slots."""
    listen = proxy_config.get("metrics_listen", "")
    if not listen:
        pytest.skip("metrics are off in this scenario")
    address, _, port = listen.rpartition(":")
    address = address.strip("[]")
    got = socket_as(host, "nobody", "connect", address, int(port))
    assert got == "ConnectionRefusedError", f"nobody connecting to the metrics endpoint: {got}"
    # Control: root (in bbproxy_metrics_local_users) scrapes.
    url = f"http://{listen}/metrics"
    fetch = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=10).read().decode())"
    assert "bbproxy_" in run_ok(host, f"python3 -c {shlex.quote(fetch)}")


def public_listeners(proxy_config: dict[str, Any]) -> list[tuple[str, int]]:
    """(address without brackets, port) of every STARTTLS and direct-TLS listener the proxy has."""
    listeners = []
    for entry in proxy_config["listen"] + proxy_config.get("direct_tls_listen", []):
        address, _, port = entry.rpartition(":")
        listeners.append((address.strip("[]"), int(port)))
    return listeners


def test_public_ports_are_held_by_systemd(host: Any, proxy_config: dict[str, Any]) -> None:
    """bbproxy.socket (socket activation): systemd itself holds each public listening socket, and
    the proxy serves from that same socket, so a proxy restart never lets the port go."""
    assert host.service("bbproxy.socket").is_running, run_ok(host, "systemctl status --no-pager bbproxy.socket || true")
    assert host.service("bbproxy.socket").is_enabled
    proxy_pid = main_pid(host, "bbproxy")
    for address, port in public_listeners(proxy_config):
        # One line per listening socket; -p names every process holding it.
        lines = run_ok(host, f"ss -Hltnp 'sport = :{port}'").splitlines()
        local = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        mine = [line for line in lines if line.split()[3] == local]
        assert len(mine) == 1, f"{local}: want exactly one listening socket, ss says:\n" + "\n".join(lines)
        assert '("systemd",pid=1,' in mine[0], f"{local} is not held by systemd: {mine[0]}"
        assert f"pid={proxy_pid}," in mine[0], f"the proxy (pid {proxy_pid}) does not serve {local}: {mine[0]}"
