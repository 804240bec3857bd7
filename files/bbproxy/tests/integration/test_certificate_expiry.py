"""Certificate expiry through the real proxy process: the gauges on /metrics after start and
after a SIGHUP with a replaced certificate, the warning and error lines in its log, and what
``--check-config`` says about a legacy chain whose cross-sign expires before its leaf."""

from __future__ import annotations

import re
import signal
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ..cert_factory import CROSS_NAME, ROOT_NAME, Chain, days_from_now, make_chain
from .support import (
    DOMAIN,
    LOOPBACK,
    Certs,
    ProxyFactory,
    RecordingBackend,
    free_port,
    run_proxy_once,
    wait_until,
    write_toml,
)

pytestmark = pytest.mark.integration

LEAF = "bbproxy_certificate_expiry_timestamp_seconds"
LINK = "bbproxy_certificate_chain_expiry_timestamp_seconds"


def gauges(port: int) -> dict[tuple[str, str, str, str], float]:
    """The certificate gauges of a /metrics scrape, by (name, chain, domain, key_type)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, s.labels["chain"], s.labels["domain"], s.labels["key_type"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in (LEAF, LINK)
    }


def test_gauges_and_warnings_at_start_and_after_a_reload(
    proxy_factory: ProxyFactory, recording_backend: RecordingBackend, tmp_path: Path, certs: Certs
) -> None:
    pytest.importorskip("prometheus_client", reason="prometheus-client (bbproxy[metrics]) is not installed")
    # The legacy chain's leaf expires in 10 days, its cross-sign in 5: two warning lines.
    legacy = make_chain(
        tmp_path, "legacy", leaf_not_after=days_from_now(10), intermediate_not_after=days_from_now(5)
    )
    domain = make_chain(tmp_path, "domain", leaf_not_after=days_from_now(-2), key_type="ecdsa")  # expired
    metrics_port = free_port()
    config = {
        "metrics_listen": f"{LOOPBACK}:{metrics_port}",
        "certificates": {DOMAIN: {"cert": str(domain.cert), "key": str(domain.key)}},
        "tls": {"legacy_cert": str(legacy.cert), "legacy_key": str(legacy.key)},
    }
    proxy = proxy_factory(backend=recording_backend.address, config=config)
    values = gauges(metrics_port)
    assert values[(LEAF, "legacy", "", "rsa")] == legacy.leaf_not_after.timestamp()
    assert values[(LINK, "legacy", "", "rsa")] == legacy.intermediate_not_after.timestamp()
    assert values[(LEAF, "domain", DOMAIN, "ecdsa")] == domain.leaf_not_after.timestamp()
    assert (LEAF, "default", "", "rsa") in values  # the fixture's certificate
    log = proxy.log_text()
    assert re.search(
        rf"WARNING legacy chain \(rsa, {re.escape(str(legacy.cert))}\): the leaf .* expires .* \(in 9 day",
        log,
    ), log
    assert re.search(
        rf"WARNING legacy chain .*certificate 2 of 2, .*CN={CROSS_NAME} .*\(in 4 day.*before the leaf", log
    ), log
    assert re.search(
        rf"ERROR {re.escape(DOMAIN)} \(ecdsa, .*\): the leaf .* expired .* \(2 day\(s\) ago\)", log
    ), log

    # Renewed: new files in place, SIGHUP; the gauges follow, the warnings are gone.
    renewed = make_chain(tmp_path, "renewed", leaf_not_after=days_from_now(90))
    legacy.cert.write_bytes(renewed.cert.read_bytes())
    legacy.key.write_bytes(renewed.key.read_bytes())
    before = log.count("WARNING")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "certificates reloaded" in proxy.log_text(), 10, "the reload")
    wait_until(
        lambda: gauges(metrics_port)[(LEAF, "legacy", "", "rsa")] != legacy.leaf_not_after.timestamp(),
        10,
        "new gauges",
    )
    values = gauges(metrics_port)
    assert values[(LEAF, "legacy", "", "rsa")] == renewed.leaf_not_after.timestamp()
    assert (
        values[(LINK, "legacy", "", "rsa")] == renewed.leaf_not_after.timestamp()
    )  # the leaf is weakest now
    assert proxy.log_text().count("WARNING") == before


def test_check_config_names_where_the_legacy_chain_ends_and_its_weakest_link(
    certs: Certs, tmp_path: Path
) -> None:
    """A GTS-like legacy chain: the cross-sign to the old root ends 2028-01-28, before the leaf."""
    legacy: Chain = make_chain(
        tmp_path,
        "legacy",
        leaf_not_after=datetime(2028, 3, 1, tzinfo=UTC),
        intermediate_not_after=datetime(2028, 1, 28, tzinfo=UTC),
    )
    config = write_toml(
        tmp_path / "bbproxy.toml",
        {
            "listen": [f"{LOOPBACK}:5222"],
            "backend": f"{LOOPBACK}:5200",
            "domains": [DOMAIN],
            "cert": str(certs.rsa.cert),
            "key": str(certs.rsa.key),
            "tls": {"legacy_cert": str(legacy.cert), "legacy_key": str(legacy.key)},
        },
    )
    result = run_proxy_once(["--check-config", "--config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(f"legacy chain (rsa, {legacy.cert}): 2 certificate(s)")
    leaf, ends, weakest = lines[start + 1 : start + 4]
    assert leaf.startswith(
        f"  leaf: C=BE, O=bbproxy tests, CN={DOMAIN}, expires 2028-03-01 00:00:00 UTC (in "
    )
    assert ends.startswith(
        f"  ends at: C=BE, O=bbproxy tests, CN={CROSS_NAME}, expires 2028-01-28 00:00:00 UTC"
    )
    assert ends.endswith(f"; clients must trust its issuer C=BE, O=bbproxy tests, CN={ROOT_NAME}")
    assert weakest.startswith(f"  weakest link: C=BE, O=bbproxy tests, CN={CROSS_NAME} (issued by ")
    assert "expires 2028-01-28 00:00:00 UTC" in weakest
    # An expired certificate is said, but is no configuration error: the chain can be renewed later.
    expired = make_chain(tmp_path, "expired", leaf_not_after=days_from_now(-1))
    result = run_proxy_once(
        ["--check-config", "--config", str(config), "--cert", str(expired.cert), "--key", str(expired.key)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"bbproxy: error: default certificate (rsa, {expired.cert}): the leaf " in result.stdout
