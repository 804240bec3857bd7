"""Upgrade: prepare.yml installed an older build (0.1.0.dev1); converge and idempotence ran site.yml
with the current one. The proxy restarted once, into the new version, and kept its settings."""

from __future__ import annotations

from typing import Any

from lifecycle import installed_version, proxy_starts, running_version, source_version
from support import LoginCheck, run_ok


def test_the_upgrade_restarted_the_proxy_exactly_once(host: Any) -> None:
    cursor = run_ok(host, "cat /var/tmp/lifecycle/before-upgrade.cursor").strip()
    starts = proxy_starts(host, cursor)
    # converge restarts it once; the idempotence run must not restart it again.
    assert starts == [source_version()], f"starts since the older build was running: {starts}"
    assert running_version(host) == installed_version(host) == source_version()


def test_only_the_current_wheel_is_kept(host: Any) -> None:
    wheels = run_ok(host, "ls /opt/bbproxy/wheels").split()
    assert [w for w in wheels if w.startswith("bbproxy-")] == [f"bbproxy-{source_version()}-py3-none-any.whl"], wheels


def test_the_configuration_is_kept(host: Any) -> None:
    # Same variables, same bbproxy.toml: the upgrade rewrote nothing the operator configured.
    run_ok(host, "sha256sum --check --quiet /var/tmp/lifecycle/before-upgrade.toml.sha256")
    assert host.file("/etc/prosody/bbproxy.d/operator.cfg.lua").contains("lifecycle scenario")


def test_users_log_in_after_the_upgrade(login_check: LoginCheck) -> None:
    result = login_check("1.0")
    assert result.returncode == 0, result.stdout + result.stderr
