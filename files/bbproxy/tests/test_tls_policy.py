"""The two policy classes, handshake by handshake in memory against the proxy's own contexts.

The modern context: TLS 1.2 forward-secret AEAD and TLS 1.3 at OpenSSL's default security
level. The legacy context: TLS 1.0-1.2 with ECDHE AES-CBC-SHA, plain-RSA AES-CBC-SHA only when
``tls.legacy_plain_rsa`` asks for it, ``@SECLEVEL=0``. 3DES, RC4 and NULL never, whatever a
client offers. Which hello gets which context: ``policy_for``.
"""

from __future__ import annotations

import ssl
import warnings
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from bbproxy.certificates import CertPair, suite_ids
from bbproxy.clienthello import ClientHelloParser
from bbproxy.tls import Policy, build_context, policy_for


def issue_pair(tmp_path_factory: pytest.TempPathFactory, key_type: trustme.KeyType) -> CertPair:
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert("example.test", key_type=key_type)
    directory = tmp_path_factory.mktemp(key_type.name.lower())
    cert, key = directory / "leaf.crt", directory / "leaf.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return CertPair(Path(cert), Path(key))


@pytest.fixture(scope="module")
def rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    return issue_pair(tmp_path_factory, trustme.KeyType.RSA)


@pytest.fixture(scope="module")
def ecdsa_pair(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    return issue_pair(tmp_path_factory, trustme.KeyType.ECDSA)


def client(version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    try:
        ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip(f"this OpenSSL cannot even offer {ciphers}")
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """The negotiated suite, or None if the server refused the client."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client_ctx.wrap_bio(c_in, c_out)
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(8):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if c.cipher() and s.cipher():
            cipher = s.cipher()
            return cipher[0] if cipher else None
    return None


TLS10, TLS12 = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2


LEGACY, MODERN = Policy.LEGACY, Policy.MODERN


def test_tls10_gets_ecdhe_cbc_sha(rsa_pair: CertPair) -> None:
    assert handshake(build_context(rsa_pair, LEGACY, "1.0"), client(TLS10, "ALL")) == "ECDHE-RSA-AES128-SHA"


def test_plain_rsa_is_an_opt_in_for_clients_without_ecdhe(rsa_pair: CertPair) -> None:
    java6 = client(TLS10, "AES128-SHA:AES256-SHA")
    assert handshake(build_context(rsa_pair, LEGACY, "1.0"), java6) is None
    assert handshake(build_context(rsa_pair, LEGACY, "1.0", plain_rsa=True), java6) == "AES128-SHA"
    # Opting in changes nothing for clients that can do ECDHE.
    opted_in = build_context(rsa_pair, LEGACY, "1.0", True)
    assert handshake(opted_in, client(TLS10, "ALL")) == "ECDHE-RSA-AES128-SHA"


def raw_hello(version: int, suites: list[int]) -> bytes:
    """A minimal ClientHello offering exactly ``suites`` (OpenSSL 3 clients cannot offer 3DES/RC4)."""
    body = version.to_bytes(2, "big") + bytes(32) + b"\x00"
    body += (2 * len(suites)).to_bytes(2, "big") + b"".join(s.to_bytes(2, "big") for s in suites)
    body += b"\x01\x00"  # compression: null only
    extensions = (
        b"\x00\x0a\x00\x04\x00\x02\x00\x17"  # supported_groups: secp256r1
        b"\x00\x0b\x00\x02\x01\x00"  # ec_point_formats: uncompressed
        b"\x00\x0d\x00\x04\x00\x02\x04\x01"  # signature_algorithms: rsa_pkcs1_sha256
    )
    body += len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def server_answer(server_ctx: ssl.SSLContext, hello: bytes) -> str:
    """'server-hello' if the server accepted the offer, else OpenSSL's reason."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(hello)
    try:
        server.do_handshake()
    except ssl.SSLWantReadError:
        return "server-hello" if outgoing.read()[:1] == b"\x16" else "nothing"
    except ssl.SSLError as exc:
        return str(exc.reason)
    return "done"


WEAK = {"DES-CBC3-SHA": 0x000A, "ECDHE-RSA-DES-CBC3-SHA": 0xC012, "RC4-SHA": 0x0005, "NULL-SHA": 0x0002}


@pytest.mark.parametrize("plain_rsa", [False, True])
@pytest.mark.parametrize("weak", sorted(WEAK))
@pytest.mark.parametrize(
    ("policy", "version", "good"),
    [(LEGACY, 0x0301, 0xC013), (LEGACY, 0x0303, 0xC013), (MODERN, 0x0303, 0xC02F)],
    ids=["legacy-tls1.0", "legacy-tls1.2", "modern-tls1.2"],
)
def test_weak_suites_never_negotiate(
    rsa_pair: CertPair, weak: str, plain_rsa: bool, policy: Policy, version: int, good: int
) -> None:
    ctx = build_context(rsa_pair, policy, "1.0", plain_rsa)
    assert server_answer(ctx, raw_hello(version, [WEAK[weak]])) == "NO_SHARED_CIPHER"
    # The same hello with one acceptable suite added is answered: the refusal is about the suite.
    assert server_answer(ctx, raw_hello(version, [WEAK[weak], good])) == "server-hello"


def test_the_modern_context_has_no_cbc_and_no_tls_below_1_2(rsa_pair: CertPair) -> None:
    modern = build_context(rsa_pair, MODERN, "1.0", plain_rsa=True)
    suite = handshake(modern, client(TLS12, "ALL"))
    assert suite is not None and ("GCM" in suite or "CHACHA20" in suite)
    assert handshake(modern, client(TLS12, "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA")) is None
    assert handshake(modern, client(TLS10, "ALL")) is None
    assert modern.security_level >= 1  # OpenSSL's default: no SHA-1 signatures at TLS 1.2
    assert all("CBC" not in c["description"] or "TLSv1.3" in c["protocol"] for c in modern.get_ciphers())


def test_the_legacy_context_serves_cbc_only_clients_up_to_tls_1_2(rsa_pair: CertPair) -> None:
    legacy = build_context(rsa_pair, LEGACY, "1.0")
    # Safari 5-8 and Chrome 30: TLS 1.2 without an AEAD suite.
    assert handshake(legacy, client(TLS12, "ECDHE-RSA-AES128-SHA")) == "ECDHE-RSA-AES128-SHA"
    assert legacy.maximum_version == ssl.TLSVersion.TLSv1_2
    assert legacy.security_level == 0
    with pytest.raises(ValueError, match="no legacy policy"):
        build_context(rsa_pair, LEGACY, "1.2")


def hello_of(ctx: ssl.SSLContext) -> tuple[int, tuple[int, ...]]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    with pytest.raises(ssl.SSLWantReadError):
        ctx.wrap_bio(incoming, outgoing).do_handshake()
    hello = ClientHelloParser().feed(outgoing.read())
    assert hello is not None
    return hello.max_version, hello.ciphers


@pytest.mark.parametrize(
    ("version", "ciphers", "expected"),
    [
        (TLS10, "ALL", LEGACY),
        (TLS12, "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA", LEGACY),  # no AEAD: Safari 5-8
        (TLS12, "AES128-GCM-SHA256", LEGACY),  # AEAD, but none the modern context has
        (TLS12, "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256", MODERN),
        (ssl.TLSVersion.TLSv1_3, "ECDHE-RSA-AES128-SHA", MODERN),  # TLS 1.3 suites count
    ],
)
def test_policy_for_real_hellos(
    rsa_pair: CertPair, version: ssl.TLSVersion, ciphers: str, expected: Policy
) -> None:
    modern_suites = suite_ids(build_context(rsa_pair, MODERN, "1.0"))
    ctx = client(version, ciphers)
    if version is ssl.TLSVersion.TLSv1_3:
        ctx.minimum_version = TLS12
    assert policy_for(*hello_of(ctx), modern_suites) is expected


@given(
    max_version=st.sampled_from([0, 0x0300, 0x0301, 0x0302, 0x0303, 0x0304]),
    offered=st.lists(st.integers(0, 0xFFFF), max_size=40),
)
def test_policy_for_property(max_version: int, offered: list[int]) -> None:
    """Modern exactly when the hello offers TLS 1.2+ and a suite of the modern list."""
    modern_suites = frozenset({0xC02B, 0xC02F, 0x1301, 0x1302})
    policy = policy_for(max_version, offered, modern_suites)
    assert (policy is MODERN) == (max_version >= 0x0303 and bool(modern_suites & set(offered)))


@pytest.mark.parametrize("version", [TLS10, TLS12], ids=["tls1.0", "tls1.2"])
def test_dual_certificates_serve_each_client_the_key_type_it_can_use(
    rsa_pair: CertPair, ecdsa_pair: CertPair, version: ssl.TLSVersion
) -> None:
    policy = LEGACY if version is TLS10 else MODERN
    both = build_context((rsa_pair, ecdsa_pair), policy, "1.0")
    assert "ECDSA" in (
        handshake(both, client(version, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256")) or ""
    )
    rsa_only = handshake(both, client(version, "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256"))
    assert rsa_only is not None and "RSA" in rsa_only
    # The control: with the ECDSA certificate alone, an RSA-only client has nothing in common.
    ecdsa_only = build_context(ecdsa_pair, policy, "1.0")
    assert handshake(ecdsa_only, client(version, "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256")) is None


def test_modern_suites_are_those_the_certificates_can_sign(rsa_pair: CertPair, ecdsa_pair: CertPair) -> None:
    """IE 11 on Windows 7/8.1 offers AEAD only with ECDSA: with an RSA certificate the modern
    context has nothing for it, so it must count as needing the legacy context."""
    rsa = suite_ids(build_context(rsa_pair, MODERN, "1.0"))
    ecdsa = suite_ids(build_context(ecdsa_pair, MODERN, "1.0"))
    both = suite_ids(build_context((rsa_pair, ecdsa_pair), MODERN, "1.0"))
    assert 0xC02F in rsa and 0xC02B not in rsa  # ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-...
    assert 0xC02B in ecdsa and 0xC02F not in ecdsa
    assert both == rsa | ecdsa and 0x1301 in rsa & ecdsa  # TLS 1.3 suites name no key type
    ie11 = [0xC02B, 0xC013]  # ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-SHA
    assert policy_for(0x0303, ie11, rsa) is LEGACY
    assert policy_for(0x0303, ie11, both) is MODERN
