"""Helpers for the certbot checks: certbot against the container's pebble, the journal, the lineage."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

from support import Scenario, authenticate, file_fingerprint, fingerprint_of, main_pid, run_ok, wait_for

# prepare.yml: pebble's HTTPS is signed by this CA; certbot's client (requests) must trust it.
ACME_ENV = "REQUESTS_CA_BUNDLE=/etc/pebble/tls-ca.crt"
HOOK = "/etc/letsencrypt/renewal-hooks/deploy/zz-bbproxy"
HOOK_TAG = "bbproxy-certbot-hook"
CERTBOT_LOG = "/var/log/letsencrypt/letsencrypt.log"  # certbot starts a new one per run
# What Prosody's documentation has operators run after each renewal.
PROSODY_IMPORT = "prosodyctl --root cert import /etc/letsencrypt/live"


def live(domain: str) -> str:
    return f"/etc/letsencrypt/live/{domain}"


def lineage_fingerprint(host: Any, domain: str) -> str:
    """SHA-256 fingerprint of the leaf certbot holds for DOMAIN now."""
    return file_fingerprint(host, f"{live(domain)}/cert.pem")


def certbot(host: Any, *args: str) -> tuple[int, str]:
    """Run certbot in the container against pebble: (exit code, stdout+stderr)."""
    # Without a terminal, `certbot renew` first sleeps up to 8 minutes (spreading the load of timers).
    sleep = ["--no-random-sleep-on-renew"] if args[:1] == ("renew",) else []
    command = f"{ACME_ENV} timeout 120 certbot --non-interactive {shlex.join([*args, *sleep])} 2>&1"
    result = host.run(command)
    return result.rc, str(result.stdout)


def journal_cursor(host: Any) -> str:
    last = run_ok(host, "journalctl -n 1 --show-cursor --no-pager -o cat").splitlines()[-1]
    assert last.startswith("-- cursor: "), last
    return last.removeprefix("-- cursor: ")


def hook_journal(host: Any, cursor: str, *, errors_only: bool = False) -> str:
    """What the proxy's certbot hook logged after CURSOR (priority err and worse only, if asked).

    Filtered here, not with journalctl's -t/-p: systemd 252's --after-cursor with a match skips the
    first matching entry when the cursor's own entry doesn't match."""
    output = run_ok(host, f"journalctl --no-pager -o json --after-cursor {shlex.quote(cursor)}")
    lines = []
    for line in output.splitlines():
        entry = json.loads(line)
        if entry.get("SYSLOG_IDENTIFIER") != HOOK_TAG:
            continue
        if errors_only and int(entry.get("PRIORITY", 6)) > 3:  # 3 = err
            continue
        lines.append(str(entry.get("MESSAGE", "")))
    return "".join(f"{line}\n" for line in lines)


def write_hook(host: Any, path: str, body: str) -> None:
    """An executable shell script at PATH (a file in certbot's renewal-hooks directory)."""
    script = shlex.quote(f"#!/bin/sh\n{body}\n")
    run_ok(host, f"printf '%s' {script} > {shlex.quote(path)} && chmod 0755 {shlex.quote(path)}")


def renew_under_a_live_session(
    host: Any,
    scenario: Scenario,
    session: Any,
    lineage: str,
    served: Callable[[], str],
    *certbot_args: str,
) -> tuple[str, str]:
    """`certbot renew --force-renewal` of LINEAGE while SESSION (a TLS 1.0 session through the proxy,
    opened on its current certificate) stays open: new handshakes (``served()``) get the renewed
    certificate within seconds, the proxy is not restarted, and SESSION still logs in. Closes
    SESSION; returns (new fingerprint, the journal cursor from before the renewal)."""
    try:
        old = lineage_fingerprint(host, lineage)
        assert fingerprint_of(session) == old
        proxy_pid = main_pid(host, "bbproxy")
        cursor = journal_cursor(host)
        rc, output = certbot(host, "renew", "--force-renewal", *certbot_args)
        assert rc == 0, output
        new = lineage_fingerprint(host, lineage)
        assert new != old, "certbot did not renew"
        wait_for(lambda: served() == new, "new handshakes to get the renewed certificate", 15)
        assert main_pid(host, "bbproxy") == proxy_pid, "the renewal restarted the proxy"
        reply = authenticate(session, scenario.users[0])
        assert b"<success" in reply, f"the session opened before the renewal no longer works: {reply!r}"
    finally:
        session.close()
    return new, cursor
