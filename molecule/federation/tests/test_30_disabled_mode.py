"""The design card's mode, bbproxy_prosody_tls_mode: disabled (`modules_disabled = { "tls" }` in the
VirtualHost), breaks federation: that is why backend_secure exists.

The mode is reproduced on a.test for these checks only, with the setting the role's "disabled"
template writes, in a test-only include (removed afterwards, see test_40)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from federation import (
    PROSODY_INCLUDE_DIR,
    STARTTLS_NS,
    Server,
    log_mark,
    log_since,
    raw_s2s,
    restart_prosody,
    run_ok,
    send_message,
    wait_for,
)

INCLUDE = f"{PROSODY_INCLUDE_DIR}/zz-molecule-tls-disabled.cfg.lua"


@pytest.fixture(scope="module")
def a_without_mod_tls(servers: tuple[Server, Server]) -> Iterator[Server]:
    a, b = servers
    # What templates/etc/prosody/prosody.cfg.lua.j2 writes in each VirtualHost in "disabled" mode.
    run_ok(a.host, f'printf \'VirtualHost "%s"\\n\\tmodules_disabled = {{ "tls" }}\\n\' {a.domain} > {INCLUDE}')
    try:
        restart_prosody(a)
        restart_prosody(b)  # no s2s link from before survives on either side
        yield a
    finally:
        run_ok(a.host, f"rm -f {INCLUDE}")
        restart_prosody(a)
        restart_prosody(b)


def test_disabled_mode_offers_no_s2s_starttls(servers: tuple[Server, Server], a_without_mod_tls: Server) -> None:
    a, b = servers
    features = raw_s2s(a, claimed_from=b.domain)["features"]
    assert "<stream:features" in features, features
    assert STARTTLS_NS not in features, f"{a.domain} still offers s2s STARTTLS with mod_tls disabled:\n{features}"


def test_disabled_mode_breaks_federation(servers: tuple[Server, Server], a_without_mod_tls: Server) -> None:
    a, b = servers
    mark = log_mark(b)
    # Through backend_secure this message arrives within a second (test_10, test_40).
    result = send_message(a, b, timeout=10)
    assert result["outcome"] != "delivered", f"federated without s2s TLS: {result}"
    assert result["sender_tls"] == "TLSv1", result  # c2s through the proxy still works in this mode

    # Why: b.test checks a.test's dialback key over a new s2s stream to a.test, which must be
    # encrypted; a.test can't do STARTTLS any more and closes it.
    def verification_refused() -> bool:
        return f"Outgoing s2s stream {b.domain}->{a.domain} closed: unsupported-stanza-type" in log_since(b, mark)

    wait_for(verification_refused, f"{b.domain} to log that {a.domain} refused its STARTTLS", timeout=15)
