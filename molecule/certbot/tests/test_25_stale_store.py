"""A renewal that Prosody's store did not get, then a role run and the deploy hook run by hand.

Both copy from the configured source (Prosody's store here), which still holds the previous
certificate when its import did not run. They must keep the renewed certificate the hook gave the
proxy, and say so, instead of putting the previous one back; `bbproxy_certificate_allow_older` puts
it back on purpose. Runs after test_20 (its stored --deploy-hook imports into Prosody's store), and
leaves the store and the proxy on the renewed certificate for the tests after it.
"""

from __future__ import annotations

from typing import Any

from renewal import HOOK, PROSODY_IMPORT, certbot, hook_journal, journal_cursor, lineage_fingerprint
from support import Scenario, expect_ok, file_fingerprint, run_ok, run_site, served_fingerprint, wait_for

COPY_TASK = "Ensure the proxy has a copy of each certificate chain"
KEY_TASK = "Ensure the proxy has a copy of each private key"


def test_a_run_after_a_renewal_prosody_missed_keeps_the_renewed_certificate(host: Any, scenario: Scenario) -> None:
    domain = scenario.domain
    store_cert, store_key = f"/etc/prosody/certs/{domain}.crt", f"/etc/prosody/certs/{domain}.key"
    proxy_cert = f"/etc/bbproxy/certs/{domain}.crt"
    # test_20's last renewal left Prosody's store behind already (its import ran while the key was
    # away): catch it up, so that the store, the lineage and the proxy start on one certificate.
    run_ok(host, PROSODY_IMPORT)
    previous = file_fingerprint(host, store_cert)
    assert previous == lineage_fingerprint(host, domain), "prosodyctl did not import the lineage"
    assert served_fingerprint(host, 5222, domain) == previous

    run_ok(host, f"cp -p {store_cert} /root/stale.crt && cp -p {store_key} /root/stale.key")
    rc, output = certbot(host, "renew", "--force-renewal")
    assert rc == 0, output
    renewed = lineage_fingerprint(host, domain)
    assert renewed != previous, "certbot did not renew"
    wait_for(lambda: served_fingerprint(host, 5222, domain) == renewed, "the hook to give the proxy the renewal", 15)
    # As if Prosody's import had never been set up: its store keeps the previous certificate.
    run_ok(host, f"mv -f /root/stale.crt {store_cert} && mv -f /root/stale.key {store_key}")
    try:
        cursor = journal_cursor(host)
        run_ok(host, HOOK)  # by hand: every configured source
        journal = hook_journal(host, cursor)
        assert f"{domain}: kept {proxy_cert} (issued " in journal, journal
        assert f"over {store_cert}, which was issued earlier" in journal, journal

        run = expect_ok(run_site())
        assert COPY_TASK not in run.changed_tasks() and KEY_TASK not in run.changed_tasks(), run.describe()
        said = " ".join(run.output.split())  # the YAML callback folds long messages
        warning = said[said.find("Warn that the proxy keeps") :][:1500]
        assert f"{proxy_cert} (issued " in warning, warning
        assert f"is newer than its source {store_cert} (issued " in warning, warning
        assert file_fingerprint(host, proxy_cert) == renewed
        assert served_fingerprint(host, 5222, domain) == renewed

        # A deliberate rollback: the source wins, cert and key together, and the proxy reloads.
        run = expect_ok(run_site({"bbproxy_certificate_allow_older": True}))
        assert COPY_TASK in run.changed_tasks() and KEY_TASK in run.changed_tasks(), run.describe()
        wait_for(lambda: served_fingerprint(host, 5222, domain) == previous, "the proxy to serve the older one", 15)
    finally:
        # Prosody's import catches its store up; a plain run then copies the renewed certificate.
        run_ok(host, PROSODY_IMPORT)
        run = expect_ok(run_site())
    assert COPY_TASK in run.changed_tasks(), run.describe()
    wait_for(lambda: served_fingerprint(host, 5222, domain) == renewed, "the proxy to serve the renewal", 15)
