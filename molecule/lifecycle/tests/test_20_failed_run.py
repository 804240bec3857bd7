"""A run that fails midway: a newer build (0.1.1.dev1) is installed, then the proxy's own check
rejects the configuration (a prefix length of 33, which the role's pattern lets through). The proxy
keeps serving throughout, and the corrected run converges with the new build running."""

from __future__ import annotations

from typing import Any

from lifecycle import AFTER_TEST_20 as NEWER
from lifecycle import build_wheel, converges_to, installed_version, journal_cursor, run_site
from support import LoginCheck, run_ok


def test_a_failed_run_then_a_corrected_one_converges(host: Any, login_check: LoginCheck) -> None:
    wheel = str(build_wheel(NEWER))
    config_before = run_ok(host, "sha256sum /etc/bbproxy/bbproxy.toml")
    cursor = journal_cursor(host)

    failed = run_site({"bbproxy_package_wheel": wheel, "bbproxy_legacy_tls_networks": ["10.0.0.0/33"]})
    assert failed.rc != 0 and failed.failed, failed.describe()
    assert "Ensure bbproxy.toml is configured" in failed.output, failed.describe()
    # Midway: the new build is installed; the rejected configuration never replaced the live one.
    assert installed_version(host) == NEWER
    assert run_ok(host, "sha256sum /etc/bbproxy/bbproxy.toml") == config_before
    result = login_check("1.0")
    assert result.returncode == 0, f"the proxy stopped serving after the failed run:\n{result.stdout}{result.stderr}"

    # Whether the failed run's forced handlers or the corrected run restarted it: once, into NEWER.
    converges_to(host, login_check, NEWER, {"bbproxy_package_wheel": wheel}, cursor)
