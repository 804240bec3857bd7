"""Prosody keeps refusing unencrypted s2s (its default s2s_require_encryption) in backend_secure mode.

The refusal is shown at the point where it matters: a plaintext s2s stream that passes dialback
(the key is right, a.test's server confirms it over its TLS link) is still closed with
<policy-violation/>, because it was not encrypted. For that, a.test's dialback secret is pinned
for the duration of these checks (a test-only include, removed afterwards)."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Iterator

import pytest

from federation import PROSODY_INCLUDE_DIR, STARTTLS_NS, Server, raw_s2s, restart_prosody, run_ok

REFUSED = "Encrypted server-to-server communication is required but was not used"


@pytest.fixture(scope="module")
def a_dialback_secret(servers: tuple[Server, Server]) -> Iterator[str]:
    a = servers[0]
    secret = secrets.token_hex(16)
    path = f"{PROSODY_INCLUDE_DIR}/zz-molecule-dialback-secret.cfg.lua"
    run_ok(a.host, f"printf 'dialback_secret = \"%s\"\\n' {shlex.quote(secret)} > {path}")
    try:
        restart_prosody(a)
        yield secret
    finally:
        run_ok(a.host, f"rm -f {path}")
        restart_prosody(a)


def test_s2s_port_requires_starttls(servers: tuple[Server, Server]) -> None:
    a, b = servers
    features = raw_s2s(b, claimed_from=a.domain)["features"]
    assert STARTTLS_NS in features, f"{b.domain} offers no s2s STARTTLS:\n{features}"
    assert "<required/>" in features, f"{b.domain} offers s2s STARTTLS as optional:\n{features}"


def test_wrong_dialback_key_is_rejected(servers: tuple[Server, Server], a_dialback_secret: str) -> None:
    # The control: a wrong key fails dialback (so a right key below really passes it).
    a, b = servers
    after = raw_s2s(b, claimed_from=a.domain, dialback_secret="not-" + a_dialback_secret)["after"]
    assert "type='invalid'" in after or 'type="invalid"' in after, after
    assert REFUSED not in after, after


def test_plaintext_s2s_is_refused_after_valid_dialback(servers: tuple[Server, Server], a_dialback_secret: str) -> None:
    a, b = servers
    after = raw_s2s(b, claimed_from=a.domain, dialback_secret=a_dialback_secret)["after"]
    assert "policy-violation" in after, f"{b.domain} did not refuse the unencrypted s2s stream:\n{after}"
    assert REFUSED in after, after
