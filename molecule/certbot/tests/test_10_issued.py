"""The certificate prepare.yml got from pebble is the one the proxy serves after converge."""

from __future__ import annotations

from typing import Any

from renewal import HOOK, lineage_fingerprint, live
from support import Scenario, run_ok, served_fingerprint


def test_the_lineage_is_an_acme_certificate(host: Any, scenario: Scenario) -> None:
    issuer = run_ok(host, f"openssl x509 -noout -issuer -in {live(scenario.domain)}/cert.pem")
    assert "Pebble" in issuer, issuer


def test_proxy_serves_the_acme_certificate(host: Any, scenario: Scenario) -> None:
    lineage = lineage_fingerprint(host, scenario.domain)
    assert served_fingerprint(host, 5222, scenario.domain) == lineage
    assert served_fingerprint(host, 5223, scenario.domain, starttls=False) == lineage


def test_the_role_installed_the_deploy_hook(host: Any) -> None:
    hook = host.file(HOOK)
    assert hook.is_file
    assert hook.user == "root"
    assert hook.mode == 0o755
