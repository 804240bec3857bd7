"""After bbproxy_state: absent, the role installs the proxy again: TLS 1.0 users log in through it."""

from __future__ import annotations

from typing import Any

from lifecycle import expect_ok, run_site, running_version, source_version
from support import LoginCheck, tcp_listeners


def test_the_proxy_comes_back(host: Any, login_check: LoginCheck) -> None:
    expect_ok(run_site())
    assert running_version(host) == source_version()
    assert 522 in {listener.port for listener in tcp_listeners(host)}
    result = login_check("1.0")
    assert result.returncode == 0, result.stdout + result.stderr
