"""UFW as the role leaves it by default, on both servers: enabled, default deny, and 5269 allowed
because Prosody serves s2s (bbproxy_firewall_open_prosody_ports); no extra ports in group_vars."""

from __future__ import annotations

from federation import S2S_PORT, Server, connect_from, ufw_allowed

# Nothing listens here and no rule allows it: what UFW does with every port it doesn't allow.
UNALLOWED_PORT = 5270


def test_ufw_allows_s2s_on_both(servers: tuple[Server, Server]) -> None:
    for server in servers:
        allowed = ufw_allowed(server, S2S_PORT)
        assert len(allowed) == 2, f"{server.instance}: want {S2S_PORT}/tcp allowed for IPv4 and IPv6: {allowed}"


def test_ufw_filters_between_the_servers(servers: tuple[Server, Server]) -> None:
    # The control: UFW really drops what it doesn't allow on this network (a port without a rule
    # times out instead of being refused), so the s2s rule is what lets federation in.
    a, b = servers
    assert connect_from(b, a, UNALLOWED_PORT) == "timeout"
    assert connect_from(a, b, UNALLOWED_PORT) == "timeout"


def test_each_server_reaches_the_others_s2s_port(servers: tuple[Server, Server]) -> None:
    a, b = servers
    assert connect_from(b, a, S2S_PORT) == "connected"
    assert connect_from(a, b, S2S_PORT) == "connected"
