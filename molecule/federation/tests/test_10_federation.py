"""A user of a.test writes to a user of b.test: both log in through their own server's proxy with
TLS 1.0, and the message crosses an encrypted s2s link (bbproxy_prosody_tls_mode: backend_secure)."""

from __future__ import annotations

from typing import Any

import pytest

from federation import Server, log_mark, log_since, restart_prosody, s2s_sessions, send_message


@pytest.fixture(scope="module")
def first_contact(servers: tuple[Server, Server]) -> dict[str, Any]:
    """Fresh Prosodys (no s2s link yet), then alice@a.test -> bob@b.test; what each server logged."""
    a, b = servers
    for server in servers:
        restart_prosody(server)
    marks = {server.domain: log_mark(server) for server in servers}
    result = send_message(a, b)
    logs = {server.domain: log_since(server, marks[server.domain]) for server in servers}
    return {"result": result, "logs": logs}


def test_message_from_a_reaches_b_through_both_proxies(first_contact: dict[str, Any], servers: Any) -> None:
    a, b = servers
    result = first_contact["result"]
    assert result["outcome"] == "delivered", f"{a.user} -> {b.user} not delivered: {result}\n{first_contact['logs']}"
    assert result["from"] == a.user, result
    # Both users came through the proxies with TLS 1.0 (the legacy devices' version).
    assert result["sender_tls"] == "TLSv1", result
    assert result["receiver_tls"] == "TLSv1", result


def test_s2s_streams_were_encrypted(first_contact: dict[str, Any], servers: Any) -> None:
    a, b = servers
    logs = first_contact["logs"]
    # Prosody logs (info) "Stream encrypted (TLSv1.3 with ...)" when s2s STARTTLS completes.
    assert "Stream encrypted (TLSv1." in logs[a.domain], logs[a.domain]
    assert f"Outgoing s2s connection {a.domain}->{b.domain} complete" in logs[a.domain], logs[a.domain]
    assert "Stream encrypted (TLSv1." in logs[b.domain], logs[b.domain]
    assert f"Incoming s2s connection {a.domain}->{b.domain} complete" in logs[b.domain], logs[b.domain]


def test_prosody_lists_the_s2s_links_as_tls(first_contact: dict[str, Any], servers: Any) -> None:
    assert first_contact["result"]["outcome"] == "delivered"
    for server, peer in (servers, servers[::-1]):
        links = [row for row in s2s_sessions(server) if row.get("Remote") == peer.domain]
        assert links, f"{server.domain}: no s2s session with {peer.domain} in s2s:show()"
        for row in links:
            assert row["Security"].startswith("TLSv1."), f"{server.domain}: unencrypted s2s link {row}"


def test_reply_from_b_reaches_a(first_contact: dict[str, Any], servers: Any) -> None:
    a, b = servers
    result = send_message(b, a)
    assert result["outcome"] == "delivered", f"{b.user} -> {a.user} not delivered: {result}"
    assert result["from"] == b.user, result
