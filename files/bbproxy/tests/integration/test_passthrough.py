"""ClientHello routing against a real Prosody that has its own direct-TLS port on loopback.

With ``tls.routing = "legacy-only"`` a modern client that asked the proxy for STARTTLS ends
up in a TLS session with Prosody itself. The proof is channel binding: the client logs in
with SCRAM-SHA-1-PLUS, binding the login to *its* TLS session (tls-unique, RFC 5929), and
Prosody checks the binding against *its* TLS session. Both are the same session only if the
proxy did not terminate the TLS. A TLS 1.0 client through the same proxy is terminated by
the proxy (it sees the proxy's certificate) and logs in over the plaintext port as before.

Prosody 0.12 (Debian 12) offers tls-unique up to TLS 1.2 only, so the bound login uses
TLS 1.2; the Debian 13 Molecule scenario covers Prosody 13.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..kit import ScramSha1
from .support import (
    DOMAIN,
    LOOPBACK,
    PROSODY_CONFIG,
    Certs,
    Prosody,
    ProxyFactory,
    connect,
    free_port,
    port_accepts,
    recv_until,
    run_login_check,
    running_prosody,
    starttls_over,
    stream_header,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"


@dataclass(frozen=True)
class TlsProsody:
    prosody: Prosody
    tls_port: int


@pytest.fixture(scope="module")
def tls_prosody(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[TlsProsody]:
    """Prosody with its plaintext port (for the proxy's own TLS) and a direct-TLS port of its own.

    Its certificate is the ECDSA one; the proxies here use the RSA one, so a client can tell
    from the certificate whose TLS it got.
    """
    directory = tmp_path_factory.mktemp("prosody-tls")
    port, tls_port = free_port(), free_port()
    config = PROSODY_CONFIG.format(dir=directory, port=port, domain=DOMAIN).replace(
        "c2s_direct_tls_ports = {}",
        f"c2s_direct_tls_ports = {{ {tls_port} }}\n"
        f'ssl = {{ certificate = "{certs.ecdsa.cert}"; key = "{certs.ecdsa.key}" }}',
    )
    with running_prosody(
        directory,
        config,
        ("alice", "bob"),
        lambda: port_accepts(port) and port_accepts(tls_port),
        f"listen on {LOOPBACK}:{port} and {tls_port}",
    ) as (proc, passwords, log, _):
        yield TlsProsody(Prosody(LOOPBACK, port, DOMAIN, passwords, log, proc), tls_port)


def starttls(port: int, version: str, cafile: Path) -> ssl.SSLSocket:
    return starttls_over(connect(port), version, cafile)


def leaf_der(chain: Path) -> bytes:
    """The first certificate of a PEM chain file, DER-encoded (what getpeercert returns)."""
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(chain.read_text().split(end)[0] + end + "\n")


def mechanisms(features: bytes) -> list[str]:
    return re.findall(r"<mechanism>([^<]+)</mechanism>", features.decode())


def scram_sha1_plus(tls: ssl.SSLSocket, user: str, password: str, cb_data: bytes) -> bytes:
    """RFC 5802 SCRAM-SHA-1-PLUS with tls-unique (kit.ScramSha1); returns Prosody's final answer
    (success/failure)."""
    scram = ScramSha1(user, password, gs2_header=b"p=tls-unique,,", cb_data=cb_data)
    tls.sendall(
        f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-1-PLUS'>".encode()
        + base64.b64encode(scram.first())
        + b"</auth>"
    )
    answer = recv_until(tls, b"</challenge>", 10)
    match = re.search(rb"<challenge[^>]*>([^<]+)</challenge>", answer)
    assert match is not None, f"no SCRAM challenge: {answer!r}"
    final = scram.final(base64.b64decode(match.group(1)))
    tls.sendall(f"<response xmlns='{SASL_NS}'>".encode() + base64.b64encode(final) + b"</response>")
    result = recv_until(tls, b">", 10)
    result += (
        recv_until(tls, b"</success>", 2) if b"<success" in result else recv_until(tls, b"</failure>", 2)
    )
    if b"<success" in result:
        verifier = re.search(rb"<success[^>]*>([^<]+)</success>", result)
        assert verifier is not None
        assert scram.verify(base64.b64decode(verifier.group(1)))
    return result


def legacy_only(proxy_factory: ProxyFactory, tp: TlsProsody) -> int:
    proxy = proxy_factory(
        backend=f"{tp.prosody.host}:{tp.prosody.port}",
        config={"tls": {"routing": "legacy-only", "backend": f"{LOOPBACK}:{tp.tls_port}"}},
    )
    return proxy.port


def test_modern_client_gets_prosodys_tls_and_a_channel_bound_login(
    tls_prosody: TlsProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    port = legacy_only(proxy_factory, tls_prosody)
    with starttls(port, "1.2", certs.cafile) as tls:
        assert tls.getpeercert(binary_form=True) == leaf_der(certs.ecdsa.cert), "not Prosody's certificate"
        tls.sendall(stream_header())
        features = recv_until(tls, b"</stream:features>", 10)
        assert "SCRAM-SHA-1-PLUS" in mechanisms(features), features
        cb_data = tls.get_channel_binding("tls-unique")
        assert cb_data is not None
        result = scram_sha1_plus(tls, "alice", tls_prosody.prosody.passwords["alice"], cb_data)
        assert b"<success" in result, result


def test_a_wrong_channel_binding_is_refused(
    tls_prosody: TlsProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    """The control for the test above: Prosody really checks the binding."""
    port = legacy_only(proxy_factory, tls_prosody)
    with starttls(port, "1.2", certs.cafile) as tls:
        tls.sendall(stream_header())
        recv_until(tls, b"</stream:features>", 10)
        result = scram_sha1_plus(tls, "alice", tls_prosody.prosody.passwords["alice"], b"\0" * 12)
        assert b"<failure" in result, result


def test_terminated_sessions_are_never_offered_channel_binding(
    tls_prosody: TlsProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    """terminate-all: the proxy's TLS ends at the proxy, so Prosody must not offer -PLUS."""
    proxy = proxy_factory(backend=f"{tls_prosody.prosody.host}:{tls_prosody.prosody.port}")
    with starttls(proxy.port, "1.2", certs.cafile) as tls:
        tls.sendall(stream_header())
        features = recv_until(tls, b"</stream:features>", 10)
        offered = mechanisms(features)
        assert "PLAIN" in offered and not any(m.endswith("-PLUS") for m in offered), offered


def test_tls10_client_is_terminated_by_the_proxy_and_logs_in(
    tls_prosody: TlsProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    port = legacy_only(proxy_factory, tls_prosody)
    with starttls(port, "1.0", certs.cafile) as tls:
        assert tls.version() == "TLSv1"
        assert tls.getpeercert(binary_form=True) == leaf_der(certs.rsa.cert), "not the proxy's certificate"
        tls.sendall(stream_header())
        features = recv_until(tls, b"</stream:features>", 10)
        assert not any(m.endswith("-PLUS") for m in mechanisms(features))
    result = run_login_check(port=port, prosody=tls_prosody.prosody, cafile=certs.cafile, tls="1.0")
    assert result.returncode == 0, result.output
    # And a modern client through the same proxy completes a full login too (slixmpp, TLS 1.3).
    result = run_login_check(port=port, prosody=tls_prosody.prosody, cafile=certs.cafile, tls="1.3")
    assert result.returncode == 0, result.output


def test_legacy_client_outside_the_allow_list_is_refused(
    tls_prosody: TlsProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    proxy = proxy_factory(
        backend=f"{tls_prosody.prosody.host}:{tls_prosody.prosody.port}",
        config={"tls": {"legacy_networks": ["192.0.2.0/24"]}},
    )
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        starttls(proxy.port, "1.0", certs.cafile)
    # The alert leaves at once; the log line at the end of that loop turn (logsink): wait for it.
    line = "legacy TLS refused: address not in tls.legacy_networks: versions=TLSv1 "
    wait_until(lambda: line in proxy.log_text(), 5, "the refusal's log line")
    with starttls(proxy.port, "1.3", certs.cafile) as tls:  # modern clients are not affected
        assert tls.version() == "TLSv1.3"
