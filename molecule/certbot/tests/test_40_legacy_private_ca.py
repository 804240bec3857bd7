"""bbproxy_legacy_source "private_ca" (issue 21, item 2): the role makes a CA on the controller (this
machine, a temporary directory), signs a leaf whose key is made on the target, serves that chain to
TLS 1.0 clients only, publishes the CA certificate, and re-issues the leaf near its expiry.

Runs after test_30 (which left the ACME legacy chain in place): the same scenario, converged again
with the private CA as the legacy source.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from legacy import login, main_fingerprint, refused, verifying_context
from support import (
    Scenario,
    authenticate,
    expect_ok,
    file_fingerprint,
    fingerprint_of,
    main_pid,
    open_session,
    run_ok,
    run_site,
    served_fingerprint,
    wait_for,
)

PUBLISH = "/var/www/bbproxy-legacy-ca"
LEAF = "/etc/bbproxy/legacy-private-ca/leaf.crt"


def private_vars(ca_dir: Path, **overrides: int) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "controller_dir": str(ca_dir),
        "publish_dir": PUBLISH,
        "leaf_days": 30,
        "renew_days": 10,
    }
    settings.update(overrides)
    return {"bbproxy_legacy_source": "private_ca", "bbproxy_legacy_private_ca": settings}


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: Any) -> Path:
    ca = tmp_path_factory.mktemp("legacy-ca") / "ca"
    run = expect_ok(run_site(private_vars(ca)))
    assert "Sign the legacy leaf with the private CA on the controller" in run.changed_tasks(), run.describe()
    return ca


def host_fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().split("=", 1)[-1]


def test_the_ca_key_stays_on_the_controller(host: Any, ca_dir: Path) -> None:
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    # A line from the middle: the first lines of any two RSA 2048 keys in PKCS#8 begin alike.
    key_line = (ca_dir / "ca.key").read_text().splitlines()[12]
    found = host.run(f"grep -rlF {shlex.quote(key_line)} /etc /opt /root /tmp /var/www /var/lib 2>/dev/null")
    assert not found.stdout.strip(), f"the CA key is on the target: {found.stdout}"


def test_the_ca_certificate_is_published(host: Any, ca_dir: Path) -> None:
    ca = host_fingerprint(ca_dir / "ca.crt")
    assert file_fingerprint(host, f"{PUBLISH}/legacy-ca.crt") == ca
    der = run_ok(host, f"openssl x509 -inform DER -noout -fingerprint -sha256 -in {PUBLISH}/legacy-ca.cer")
    assert der.strip().split("=", 1)[-1] == ca


def test_tls10_client_trusting_only_the_private_ca_logs_in(host: Any, scenario: Scenario, ca_dir: Path) -> None:
    assert login(scenario, ca_dir / "ca.crt", legacy=True) == file_fingerprint(host, LEAF)


def test_modern_clients_never_see_the_private_chain(
    host: Any, scenario: Scenario, ca_dir: Path, roots: dict[str, Path]
) -> None:
    assert login(scenario, roots["default"], legacy=False) == main_fingerprint(host, scenario.domain)
    assert refused(scenario, ca_dir / "ca.crt", legacy=False), "a TLS 1.3 client got the private chain"


def test_a_second_run_changes_nothing(ca_dir: Path) -> None:
    run = expect_ok(run_site(private_vars(ca_dir)))
    assert run.changed == 0, run.changed_tasks()


def test_the_leaf_is_reissued_within_renew_days_of_its_expiry(host: Any, scenario: Scenario, ca_dir: Path) -> None:
    """The 30-day leaf expires within 31 days: the next run re-issues it; the proxy reloads."""
    old = file_fingerprint(host, LEAF)
    session = open_session(scenario, verifying_context(ca_dir / "ca.crt", legacy=True))
    try:
        assert fingerprint_of(session) == old
        proxy_pid = main_pid(host, "bbproxy")
        run = expect_ok(run_site(private_vars(ca_dir, leaf_days=60, renew_days=31)))
        assert "Sign the legacy leaf with the private CA on the controller" in run.changed_tasks(), run.describe()
        new = file_fingerprint(host, LEAF)
        assert new != old, "the leaf was not re-issued"
        wait_for(lambda: served_fingerprint(host, 5222, scenario.domain) == new, "TLS 1.0 to get the new leaf", 15)
        assert main_pid(host, "bbproxy") == proxy_pid, "the re-issue restarted the proxy"
        reply = authenticate(session, scenario.users[0])
        assert b"<success" in reply, f"the session opened before the re-issue no longer works: {reply!r}"
    finally:
        session.close()
    assert login(scenario, ca_dir / "ca.crt", legacy=True) == new
