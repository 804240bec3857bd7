"""`openssl s_client` negotiates every supported TLS version through the proxy (STARTTLS and direct TLS)."""

from __future__ import annotations

import pytest

from .support import Certs, Prosody, ProxyFactory, run_s_client

pytestmark = pytest.mark.integration

VERSION_FLAGS = {"-tls1": "TLSv1", "-tls1_1": "TLSv1.1", "-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}


def assert_negotiated(result_output: str, returncode: int, protocol: str | None, expected: str) -> None:
    assert returncode == 0, f"s_client failed:\n{result_output}"
    assert protocol == expected, f"expected {expected}, got {protocol}:\n{result_output}"
    assert "Verify return code: 0 (ok)" in result_output, result_output


@pytest.mark.parametrize("cert", ["rsa", "ecdsa"])
@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1", "-tls1_2", "-tls1_3"])
def test_starttls_negotiates_version(
    shared_proxies: ProxyFactory, certs: Certs, cert: str, flag: str
) -> None:
    proxy = shared_proxies(cert=cert)
    result = run_s_client(proxy.port, version_flag=flag, cafile=certs.cafile)
    assert_negotiated(result.output, result.returncode, result.protocol, VERSION_FLAGS[flag])


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_3"])
def test_starttls_tls_on_each_event_loop(
    shared_proxies: ProxyFactory, certs: Certs, event_loop_name: str, flag: str
) -> None:
    proxy = shared_proxies(cert="ecdsa", loop=event_loop_name)
    result = run_s_client(proxy.port, version_flag=flag, cafile=certs.cafile)
    assert_negotiated(result.output, result.returncode, result.protocol, VERSION_FLAGS[flag])


@pytest.mark.parametrize("cert", ["rsa", "ecdsa"])
def test_starttls_without_sni_gets_the_domain_certificate(
    shared_proxies: ProxyFactory, certs: Certs, cert: str
) -> None:
    """Old clients (Java 6) send no SNI; the stream 'to' picks the certificate."""
    proxy = shared_proxies(cert=cert)
    result = run_s_client(proxy.port, version_flag="-tls1", cafile=certs.cafile, sni=False)
    assert_negotiated(result.output, result.returncode, result.protocol, "TLSv1")


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_2", "-tls1_3"])
def test_direct_tls_negotiates_version_and_alpn(
    shared_proxies: ProxyFactory, certs: Certs, flag: str
) -> None:
    proxy = shared_proxies(cert="rsa", direct_tls=True)
    assert proxy.direct_tls_port is not None
    result = run_s_client(
        proxy.direct_tls_port, version_flag=flag, cafile=certs.cafile, starttls=False, alpn="xmpp-client"
    )
    assert_negotiated(result.output, result.returncode, result.protocol, VERSION_FLAGS[flag])
    assert "ALPN protocol: xmpp-client" in result.output, result.output


def test_min_tls_refuses_older_versions(proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs) -> None:
    proxy = proxy_factory(backend=f"{prosody.host}:{prosody.port}", min_tls="1.2")
    refused = run_s_client(proxy.port, version_flag="-tls1", cafile=certs.cafile)
    assert refused.returncode != 0, refused.output
    accepted = run_s_client(proxy.port, version_flag="-tls1_2", cafile=certs.cafile)
    assert_negotiated(accepted.output, accepted.returncode, accepted.protocol, "TLSv1.2")


@pytest.mark.parametrize("cert", ["rsa", "ecdsa"])
def test_tls12_client_offering_only_sha1_signatures_gets_no_sha1_signature(
    shared_proxies: ProxyFactory, certs: Certs, cert: str
) -> None:
    """A TLS 1.2 client (AEAD suites) whose signature_algorithms name only SHA-1 must not get a
    SHA-1-signed key exchange (issue 15 item 4): it gets the modern context, at OpenSSL's
    default security level, which refuses. Before the split, @SECLEVEL=0 on the one context let
    OpenSSL sign its ServerKeyExchange with SHA-1. The client runs at SECLEVEL=0, or it would
    not even offer SHA-1."""
    proxy = shared_proxies(cert=cert)
    key = "RSA" if cert == "rsa" else "ECDSA"
    sha1 = run_s_client(
        proxy.port, version_flag="-tls1_2", cafile=certs.cafile,
        extra=["-cipher", "DEFAULT:@SECLEVEL=0", "-sigalgs", f"{key}+SHA1"],
    )  # fmt: skip
    assert "Peer signing digest: SHA1" not in sha1.output, sha1.output
    # Refused: no signature algorithm in common, a handshake_failure alert and no cipher.
    assert sha1.returncode != 0 and "alert handshake failure" in sha1.output, sha1.output
    assert sha1.cipher in (None, "(NONE)"), sha1.output
    # The control: the same client with SHA-256 signatures gets its TLS 1.2 handshake.
    sha256 = run_s_client(
        proxy.port, version_flag="-tls1_2", cafile=certs.cafile,
        extra=["-cipher", "DEFAULT:@SECLEVEL=0", "-sigalgs", f"{key}+SHA256"],
    )  # fmt: skip
    assert_negotiated(sha256.output, sha256.returncode, sha256.protocol, "TLSv1.2")
    assert "Peer signing digest: SHA256" in sha256.output, sha256.output
