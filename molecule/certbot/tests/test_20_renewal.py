"""`certbot renew --force-renewal` with the hook styles operators use for Prosody's import.

Each renewal: the proxy serves the new certificate within seconds, without a restart, and a TLS 1.0
session opened before it still logs in. The tests run in file order; each renewal starts from the
state the one before left.
"""

from __future__ import annotations

import shlex
from typing import Any

from renewal import (
    CERTBOT_LOG,
    HOOK,
    PROSODY_IMPORT,
    certbot,
    hook_journal,
    journal_cursor,
    lineage_fingerprint,
    live,
    renew_under_a_live_session,
    write_hook,
)
from support import Scenario, file_fingerprint, open_session, run_ok, served_fingerprint, wait_for

PROSODY_FILE_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/prosody"
LOSE_KEY_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/00-test-lose-key"


def renew_and_check(host: Any, scenario: Scenario, *certbot_args: str) -> str:
    """Renew with certbot while a TLS 1.0 session is open through the proxy; returns certbot's log."""
    domain = scenario.domain
    assert served_fingerprint(host, 5222, domain) == lineage_fingerprint(host, domain)
    new, cursor = renew_under_a_live_session(
        host,
        scenario,
        open_session(scenario),
        domain,
        lambda: served_fingerprint(host, 5222, domain),
        *certbot_args,
    )
    served = served_fingerprint(host, 5223, domain, starttls=False)
    assert served == new, "the direct-TLS port does not serve the renewed certificate"
    journal = hook_journal(host, cursor)
    assert f"{domain}: copied {live(domain)}/fullchain.pem and {live(domain)}/privkey.pem" in journal, journal
    assert hook_journal(host, cursor, errors_only=True) == ""
    # The operator's import ran too: Prosody's own store holds the renewed certificate.
    assert file_fingerprint(host, f"/etc/prosody/certs/{domain}.crt") == new
    return run_ok(host, f"cat {CERTBOT_LOG}")


def test_renewal_with_prosody_import_as_a_hook_file(host: Any, scenario: Scenario) -> None:
    write_hook(host, PROSODY_FILE_HOOK, f"exec {PROSODY_IMPORT}")
    try:
        log = renew_and_check(host, scenario)
    finally:
        run_ok(host, f"rm -f {PROSODY_FILE_HOOK}")
    assert f"Running deploy-hook command: {PROSODY_FILE_HOOK}" in log


def test_renewal_with_prosody_import_as_a_deploy_hook(host: Any, scenario: Scenario) -> None:
    """As Prosody's documentation sets it up: certbot keeps the hook in the renewal configuration
    and runs it AFTER the renewal-hooks directory, i.e. after the proxy's hook. A copy from
    Prosody's store would take the previous certificate here."""
    log = renew_and_check(host, scenario, "--deploy-hook", PROSODY_IMPORT)
    renewal_conf = host.file(f"/etc/letsencrypt/renewal/{scenario.domain}.conf").content_string
    assert f"renew_hook = {PROSODY_IMPORT}" in renewal_conf
    ours = log.index(f"Running deploy-hook command: {HOOK}")
    prosodys = log.index(f"Running deploy-hook command: {PROSODY_IMPORT}")
    assert ours < prosodys, "certbot ran the stored --deploy-hook before the hook directory"


def test_renewal_with_the_stored_deploy_hook_only(host: Any, scenario: Scenario) -> None:
    """The plain `certbot renew` of certbot's timer: the stored hook runs, the proxy follows."""
    log = renew_and_check(host, scenario)
    assert f"Running deploy-hook command: {PROSODY_IMPORT}" in log


def test_a_source_missing_at_renewal_is_an_error_in_the_journal(host: Any, scenario: Scenario) -> None:
    """A hook sorting before the proxy's moves the renewed key away: the proxy's hook must say so
    at priority err, keep serving the previous certificate (never a new chain with the old key),
    and fail, so that certbot reports it."""
    domain = scenario.domain
    key = f"{live(domain)}/privkey.pem"
    served_before = served_fingerprint(host, 5222, domain)
    write_hook(host, LOSE_KEY_HOOK, 'mv "$RENEWED_LINEAGE/privkey.pem" "$RENEWED_LINEAGE/privkey.pem.lost"')
    cursor = journal_cursor(host)
    try:
        _, output = certbot(host, "renew", "--force-renewal")
    finally:
        run_ok(host, f"rm -f {LOSE_KEY_HOOK}; if [ -L {key}.lost ]; then mv {key}.lost {key}; fi")
    renewed = lineage_fingerprint(host, domain)
    assert renewed != served_before, "certbot did not renew"
    errors = hook_journal(host, cursor, errors_only=True)
    assert f"{domain}: {key} is missing, empty or unreadable" in errors, hook_journal(host, cursor)
    assert "bbproxy-certbot-hook" in output, f"certbot did not report the hook's error:\n{output}"
    assert served_fingerprint(host, 5222, domain) == served_before
    assert file_fingerprint(host, f"/etc/bbproxy/certs/{domain}.crt") == served_before
    # Once the key is back, the hook run by hand for that lineage catches the proxy up.
    run_ok(host, f"RENEWED_LINEAGE={shlex.quote(live(domain))} RENEWED_DOMAINS={shlex.quote(domain)} {HOOK}")
    wait_for(lambda: served_fingerprint(host, 5222, domain) == renewed, "the proxy to serve the renewed cert", 15)
