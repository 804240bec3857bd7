"""Daily operations (issue 17, item 5): log priorities in the journal, and partial runs with tags.

These change the container's state (Prosody stopped for a moment, UFW rules, a certificate) and put
it back, so they run after everything else (files run in name order).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import (
    LEGACY_CIPHERS,
    REPO,
    Scenario,
    expect_ok,
    file_fingerprint,
    journal_cursor,
    journal_since,
    listening,
    main_pid,
    negotiated_protocol,
    run_ok,
    run_site,
    served_cert_path,
    served_fingerprint,
    tls10_cert_path,
    wait_for,
)

BACKEND_PORT = 522  # bbproxy_backend_port
SSH_PORT = 22  # what the role allows first (no ansible_port, no SSH_CONNECTION through podman)
CERT_DIR = "/etc/prosody/certs"  # bbproxy_cert_dir: the certificate sources
ROLE = REPO / "roles" / "bbproxy"
# Files the role writes that a certificates-only or firewall-only run must leave alone.
PROSODY_CONFIG = "/etc/prosody/prosody.cfg.lua"
PROXY_CONFIG = "/etc/bbproxy/bbproxy.toml"
TOUCHED = {PROSODY_CONFIG: "-- changed by test_70_daily_ops\n", PROXY_CONFIG: "# changed by test_70_daily_ops\n"}


# ---- log priorities ------------------------------------------------------------------------------


def bbproxy_journal(host: Any, cursor: str, priority: str) -> list[dict[str, Any]]:
    """The proxy's journal entries after CURSOR at PRIORITY or more severe (here: the only warning,
    which --after-cursor would skip: support.journal_since)."""
    return journal_since(host, cursor, "bbproxy", priority)


def test_warnings_reach_the_journal_as_warnings(host: Any, scenario: Scenario) -> None:
    """A TLS 1.0 client while Prosody is down: the proxy's "backend unavailable" warning is filed
    at priority 4 (its "<4>" prefix stripped), so `journalctl -p warning` shows it, and the info
    lines of the same session (its close line) are not among the warnings."""
    cursor = journal_cursor(host)
    run_ok(host, "systemctl stop prosody")
    try:
        # The proxy terminates TLS 1.0 in every routing mode, then opens its backend connection.
        # s_client inside the container (it trusts any certificate: test_50 replaced the served
        # one) stays connected for 3 s, so the failed connect is the session's, not a race.
        domain = shlex.quote(scenario.domain)
        summary = host.run(
            "timeout 20 sh -c 'sleep 3' | timeout 20 openssl s_client -connect 127.0.0.1:5222 -starttls xmpp "
            f"-xmpphost {domain} -servername {domain} -tls1 -cipher {shlex.quote(LEGACY_CIPHERS)} -brief 2>&1"
        ).stdout
        assert negotiated_protocol(summary) == "TLSv1", summary
    finally:
        run_ok(host, "systemctl start prosody")
        wait_for(lambda: listening(host, BACKEND_PORT), f"Prosody to listen on {BACKEND_PORT} again")

    def warned() -> bool:
        return any("unavailable" in str(e["MESSAGE"]) for e in bbproxy_journal(host, cursor, "warning"))

    deadline = time.monotonic() + 15
    while not warned():
        if time.monotonic() > deadline:
            everything = "\n".join(f"{e['PRIORITY']} {e['MESSAGE']}" for e in bbproxy_journal(host, cursor, "debug"))
            pytest.fail(f"no backend warning in `journalctl -p warning -u bbproxy`; all since:\n{everything}")
        time.sleep(0.5)
    warnings = bbproxy_journal(host, cursor, "warning")
    for entry in warnings:
        message = str(entry["MESSAGE"])
        assert not message.startswith("<"), f"the priority prefix reached the journal: {message!r}"
        assert message.startswith(("WARNING ", "ERROR ", "CRITICAL ")), f"not a warning: {message!r}"
        assert int(entry["PRIORITY"]) <= 4, entry
    unavailable = [e for e in warnings if "unavailable" in str(e["MESSAGE"])]
    assert all(e["PRIORITY"] == "4" for e in unavailable), unavailable
    # The same session's info lines are there, at priority 6, only without -p warning.
    infos = [e for e in bbproxy_journal(host, cursor, "debug") if str(e["MESSAGE"]).startswith("INFO ")]
    assert infos, "no info line since the cursor: the check above proves nothing"
    assert all(e["PRIORITY"] == "6" for e in infos), infos


# ---- partial runs (tags) ---------------------------------------------------------------------------


def task_names(*paths: Path) -> set[str]:
    """The names of the tasks (blocks included) and handlers in the role's files PATHS."""
    names: set[str] = set()

    def collect(tasks: list[dict[str, Any]]) -> None:
        for task in tasks:
            names.add(str(task.get("name", "")))
            collect(task.get("block", []))

    for path in paths:
        collect(yaml.safe_load(path.read_text()) or [])
    return names


def ufw_allows(host: Any, port: int) -> bool:
    """Whether UFW has an IPv4 allow rule for PORT/tcp from anywhere (its own rule tuples)."""
    pattern = rf"^### tuple ### allow (tcp|any) {port} 0\.0\.0\.0/0 any 0\.0\.0\.0/0 in"
    return host.run(f"grep -Eq {shlex.quote(pattern)} /etc/ufw/user.rules").rc == 0


def checksums(host: Any, paths: list[str]) -> str:
    return run_ok(host, "sha256sum " + " ".join(shlex.quote(p) for p in paths))


@pytest.fixture(scope="module")
def touched(host: Any) -> Iterator[str]:
    """A converged server an operator then changed by hand: the SSH rule deleted from UFW, a line
    added to prosody.cfg.lua and to bbproxy.toml. Yields their checksums; puts everything back."""
    assert ufw_allows(host, SSH_PORT), "the role's SSH rule is missing before the test"
    for path, line in TOUCHED.items():
        run_ok(host, f"cp -p {path} {path}.test70 && printf %s {shlex.quote(line)} >> {path}")
    run_ok(host, f"ufw delete allow {SSH_PORT}/tcp")
    assert not ufw_allows(host, SSH_PORT)
    try:
        yield checksums(host, list(TOUCHED))
    finally:
        for path in TOUCHED:
            run_ok(host, f"mv {path}.test70 {path}")
        if not ufw_allows(host, SSH_PORT):
            run_ok(host, f"ufw allow {SSH_PORT}/tcp comment 'SSH (bbproxy role)'")


def test_tags_certificates_copies_the_certificate_and_touches_nothing_else(
    host: Any, scenario: Scenario, proxy_config: dict[str, Any], touched: str
) -> None:
    domain = scenario.domain
    source_cert, source_key = f"{CERT_DIR}/{domain}.crt", f"{CERT_DIR}/{domain}.key"
    copy_cert, _ = served_cert_path(proxy_config, domain)
    old = file_fingerprint(host, copy_cert)
    # The certificate source renewed in place (same key, as certbot's --reuse-key would).
    quoted = shlex.quote(domain)
    run_ok(
        host,
        f"set -e; d=$(mktemp -d); openssl req -x509 -key {shlex.quote(source_key)} -days 30 -subj /CN={quoted} "
        f"-addext subjectAltName=DNS:{quoted} -out $d/crt 2>/dev/null; cat $d/crt > {shlex.quote(source_cert)}; "
        "rm -r $d",
    )
    assert file_fingerprint(host, source_cert) != old
    proxy_pid = main_pid(host, "bbproxy")

    run = expect_ok(run_site(tags="certificates"))

    new = file_fingerprint(host, copy_cert)
    assert new == file_fingerprint(host, source_cert) != old, "the proxy's copy is not the renewed source"
    assert checksums(host, list(TOUCHED)) == touched, "a certificates-only run rewrote a configuration"
    assert not ufw_allows(host, SSH_PORT), "a certificates-only run changed the firewall"
    assert main_pid(host, "bbproxy") == proxy_pid, "a certificates-only run restarted the proxy"
    allowed = task_names(
        ROLE / "tasks" / "certificates.yml", ROLE / "tasks" / "restart_pending.yml", ROLE / "handlers" / "main.yml"
    )
    changed = run.changed_tasks()
    assert "Ensure the proxy has a copy of each certificate chain" in changed, run.describe()
    assert set(changed) <= allowed, f"changed outside the certificates: {set(changed) - allowed}\n{run.describe()}"
    if tls10_cert_path(proxy_config, domain)[0] == copy_cert:  # no separate legacy chain
        wait_for(lambda: served_fingerprint(host, 5222, domain) == new, "the proxy to serve the new certificate", 15)


def test_tags_firewall_restores_the_firewall_and_touches_nothing_else(host: Any, touched: str) -> None:
    proxy_pid = main_pid(host, "bbproxy")
    run = expect_ok(run_site(tags="firewall"))
    assert ufw_allows(host, SSH_PORT), "the firewall-only run did not restore the SSH rule"
    assert checksums(host, list(TOUCHED)) == touched, "a firewall-only run rewrote a configuration"
    assert main_pid(host, "bbproxy") == proxy_pid
    allowed = task_names(ROLE / "tasks" / "firewall.yml")
    changed = run.changed_tasks()
    assert changed and set(changed) <= allowed, f"changed outside the firewall: {changed}\n{run.describe()}"


def test_direct_tls_off_keeps_a_port_another_rule_allows(host: Any) -> None:
    """With direct TLS off, its port is closed, unless another rule wants it: here 5223 is an extra
    port and 5222 (also named as a direct-TLS listener) is the STARTTLS port. Both stay allowed, and
    the second run changes nothing (no delete-and-add on every run)."""
    settings = {
        "bbproxy_direct_tls_enabled": False,
        "bbproxy_direct_tls_listen": ["0.0.0.0:5222", "0.0.0.0:5223"],
        "bbproxy_firewall_extra_ports": ["5223/tcp"],
    }
    try:
        expect_ok(run_site(settings, tags="firewall"))
        assert ufw_allows(host, 5222), "the STARTTLS port was closed with the direct TLS ports"
        assert ufw_allows(host, 5223), "an extra port was closed with the direct TLS ports"
        again = expect_ok(run_site(settings, tags="firewall"))
        assert again.changed == 0, f"changed: {again.changed_tasks()}\n{again.describe()}"
        assert ufw_allows(host, 5222) and ufw_allows(host, 5223)
    finally:
        expect_ok(run_site(tags="firewall"))  # the scenario's own rules again
    assert ufw_allows(host, 5222) and ufw_allows(host, 5223)
