"""bbproxy_legacy_source "acme" (issue 21, item 1): the role asks pebble for a second lineage with
EAB, an RSA key and the alternate chain; TLS 1.0 clients get that chain, TLS 1.3 clients the main one;
certbot renews it through the same deploy hook, the proxy reloads and live sessions stay.

The role runs here from the checks (site.yml with these variables), after test_20's renewals of the
main certificate, which compare what TLS 1.0 clients get with the main lineage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from legacy import ROOT_ALTERNATE, common_name, login, main_fingerprint, pebble_eab, refused, verifying_context
from renewal import hook_journal, lineage_fingerprint, live, renew_under_a_live_session
from support import Scenario, expect_ok, open_session, run_ok, run_site, served_fingerprint

LINEAGE = "bbproxy-legacy"
# Another URL of the same pebble: certbot keeps accounts per directory URL, so the role's certbot
# registers a new account, and pebble refuses it without the EAB the role must pass.
SERVER = "https://127.0.0.1:14000/dir"


def legacy_vars(host: Any) -> dict[str, Any]:
    kid, hmac_key = pebble_eab(host)
    return {
        "bbproxy_legacy_source": "acme",
        "bbproxy_legacy_acme": {
            "server": SERVER,
            "eab_kid": kid,
            "eab_hmac_key": hmac_key,
            "preferred_chain": common_name(host, ROOT_ALTERNATE),
            "challenge_args": ["--webroot", "--webroot-path", "/var/lib/bbproxy-acme-webroot"],
            "server_ca_bundle": "/etc/pebble/tls-ca.crt",
        },
    }


@pytest.fixture(scope="module")
def converged(host: Any) -> dict[str, Any]:
    settings = legacy_vars(host)
    run = expect_ok(run_site(settings))
    assert "Request the legacy certificate from the ACME CA" in run.changed_tasks(), run.describe()
    assert settings["bbproxy_legacy_acme"]["eab_hmac_key"] not in run.output, "the role printed the HMAC key"
    return settings


def test_the_role_requested_the_preferred_chain_with_an_rsa_key(host: Any, converged: dict[str, Any]) -> None:
    conf = host.file(f"/etc/letsencrypt/renewal/{LINEAGE}.conf").content_string
    assert f"preferred_chain = {converged['bbproxy_legacy_acme']['preferred_chain']}" in conf, conf
    assert "key_type = rsa" in conf, conf
    assert f"server = {SERVER}" in conf, conf
    chain_top = run_ok(host, f"openssl x509 -noout -issuer -nameopt multiline -in {live(LINEAGE)}/chain.pem")
    assert converged["bbproxy_legacy_acme"]["preferred_chain"] in chain_top
    assert "rsaEncryption" in run_ok(host, f"openssl x509 -noout -text -in {live(LINEAGE)}/cert.pem")


def test_a_second_run_changes_nothing(host: Any, converged: dict[str, Any]) -> None:
    run = expect_ok(run_site(converged))
    assert run.changed == 0, run.changed_tasks()


def test_tls10_client_trusting_only_the_old_root_logs_in(
    host: Any, scenario: Scenario, converged: dict[str, Any], roots: dict[str, Path]
) -> None:
    assert login(scenario, roots["alternate"], legacy=True) == lineage_fingerprint(host, LINEAGE)
    assert refused(scenario, roots["default"], legacy=True), "TLS 1.0 clients got the main chain"


def test_modern_client_still_validates_the_main_chain(
    host: Any, scenario: Scenario, converged: dict[str, Any], roots: dict[str, Path]
) -> None:
    main = main_fingerprint(host, scenario.domain)
    assert main != lineage_fingerprint(host, LINEAGE)
    assert login(scenario, roots["default"], legacy=False) == main
    assert refused(scenario, roots["alternate"], legacy=False), "a TLS 1.3 client got the legacy chain"


def test_renewal_of_the_legacy_lineage_reaches_the_proxy(
    host: Any, scenario: Scenario, converged: dict[str, Any], roots: dict[str, Path]
) -> None:
    main = main_fingerprint(host, scenario.domain)
    new, cursor = renew_under_a_live_session(
        host,
        scenario,
        open_session(scenario, verifying_context(roots["alternate"], legacy=True)),
        LINEAGE,
        lambda: served_fingerprint(host, 5222, scenario.domain),
        "--cert-name",
        LINEAGE,
    )
    served = served_fingerprint(host, 5222, scenario.domain, tls_flag="-tls1_3")
    assert served == main, "a TLS 1.3 client got the renewed legacy chain"
    journal = hook_journal(host, cursor)
    assert f"legacy chain: copied {live(LINEAGE)}/fullchain.pem and {live(LINEAGE)}/privkey.pem" in journal, journal
    assert hook_journal(host, cursor, errors_only=True) == ""
    # The renewal kept the operator's chain: a client trusting only the old root still validates it.
    assert login(scenario, roots["alternate"], legacy=True) == new
