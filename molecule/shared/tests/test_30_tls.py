"""TLS handshakes from inside the container with openssl s_client, like an operator would."""

from __future__ import annotations

from typing import Any

import pytest

from support import Scenario, negotiated_protocol, s_client


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
@pytest.mark.parametrize(("flag", "protocol"), [("-tls1", "TLSv1"), ("-tls1_3", "TLSv1.3")])
def test_starttls_negotiates(host: Any, scenario: Scenario, address: str, flag: str, protocol: str) -> None:
    summary = s_client(host, 5222, scenario.domain, flag, address=address)
    assert negotiated_protocol(summary) == protocol, summary


@pytest.mark.parametrize(("flag", "protocol"), [("-tls1", "TLSv1"), ("-tls1_3", "TLSv1.3")])
def test_direct_tls_negotiates(host: Any, scenario: Scenario, flag: str, protocol: str) -> None:
    if not scenario.direct_tls:
        pytest.skip("direct TLS is off in this scenario's variables")
    summary = s_client(host, 5223, scenario.domain, flag, starttls=False)
    assert negotiated_protocol(summary) == protocol, summary


def test_tls10_uses_a_forward_secret_cbc_suite(host: Any, scenario: Scenario) -> None:
    summary = s_client(host, 5222, scenario.domain, "-tls1")
    assert "Ciphersuite: ECDHE-" in summary, summary
    assert "DES" not in summary and "RC4" not in summary, summary
