"""After test_20 and test_30 removed their test-only settings, federation works as deployed."""

from __future__ import annotations

from federation import PROSODY_INCLUDE_DIR, Server, run_ok, send_message


def test_no_test_only_settings_left(servers: tuple[Server, Server]) -> None:
    for server in servers:
        left = run_ok(server.host, f"ls {PROSODY_INCLUDE_DIR}").split()
        assert not [name for name in left if name.startswith("zz-molecule-")], f"{server.domain}: {left}"


def test_federation_works_again(servers: tuple[Server, Server]) -> None:
    a, b = servers
    result = send_message(a, b)
    assert result["outcome"] == "delivered", result
