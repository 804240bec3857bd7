"""The one place that builds SSLContexts: version policy, suites, certificates, SNI.

OpenSSL 3 refuses TLS 1.0/1.1 at its default security level because those versions
sign handshakes with MD5+SHA-1. They are enabled here, for these contexts only, with
three settings together: the minimum version, an explicit list of CBC-SHA suites, and
``@SECLEVEL=0``. OpenSSL's configuration for the rest of the process is untouched.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# TLS 1.2: forward secret AEAD suites only, ECDSA first (cheaper handshakes).
MODERN_SUITES: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
# TLS 1.0/1.1: what BlackBerry 10, Android 4.x, Windows Phone 8 and Java 7 offer. Forward
# secret ECDHE with AES-CBC-SHA; never RC4, 3DES (SWEET32), NULL, EXPORT or anonymous.
LEGACY_SUITES: Final = (
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
# Opt-in for TLS 1.0/1.1 clients without ECDHE (Java 6): RSA key exchange, no forward secrecy.
LEGACY_PLAIN_RSA_SUITES: Final = "AES128-SHA:AES256-SHA"
ALPN_XMPP_CLIENT: Final = "xmpp-client"

TLS_VERSIONS: Final[Mapping[str, ssl.TLSVersion]] = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


# OpenSSL's reasons for a key that belongs to no certificate of the chain: same type but
# another key, or another type altogether (an RSA key for an ECDSA certificate).
_MISMATCH_REASONS: Final = frozenset({"KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED", "KEY_TYPE_MISMATCH"})


class CertificateError(Exception):
    """A certificate or key could not be loaded; the message is one line for operators."""


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


# One certificate, or one per key type (RSA + ECDSA): OpenSSL then shows each client the one
# its offer can use (ECDSA suites -> ECDSA), so old RSA-only devices and new ones are both served.
CertChoice = CertPair | tuple[CertPair, ...]


def cert_pairs(choice: CertChoice) -> tuple[CertPair, ...]:
    return choice if isinstance(choice, tuple) else (choice,)


def cipher_string(min_tls: str, plain_rsa: bool = False) -> str:
    """The OpenSSL cipher string (TLS <= 1.2 suites) for a minimum version."""
    if TLS_VERSIONS[min_tls] >= ssl.TLSVersion.TLSv1_2:
        return MODERN_SUITES
    legacy = f"{LEGACY_SUITES}:{LEGACY_PLAIN_RSA_SUITES}" if plain_rsa else LEGACY_SUITES
    # SECLEVEL=0 only lifts the MD5+SHA-1 signature ban; the explicit list keeps weak suites out.
    return f"{MODERN_SUITES}:{legacy}:@SECLEVEL=0"


def build_context(pairs: CertChoice, min_tls: str, plain_rsa: bool = False) -> ssl.SSLContext:
    """A server context for one certificate chain (or one per key type) under the version policy."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        # Naming TLSVersion.TLSv1 warns; serving legacy clients is the point of this proxy.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = TLS_VERSIONS[min_tls]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(cipher_string(min_tls, plain_rsa))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    ctx.set_alpn_protocols([ALPN_XMPP_CLIENT])
    for pair in cert_pairs(pairs):
        _load_pair(ctx, pair)
    return ctx


def _load_pair(ctx: ssl.SSLContext, pair: CertPair) -> None:
    for path in (pair.cert, pair.key):
        # load_cert_chain's own errors do not always say which file; check both first.
        try:
            with path.open("rb"):
                pass
        except FileNotFoundError:
            raise CertificateError(f"cannot read {path}: file not found") from None
        except PermissionError:
            raise CertificateError(f"cannot read {path}: permission denied") from None
        except OSError as exc:
            raise CertificateError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
    try:
        ctx.load_cert_chain(pair.cert, pair.key)
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if reason.upper() in _MISMATCH_REASONS:
            raise CertificateError(f"key {pair.key} does not match certificate {pair.cert}") from None
        raise CertificateError(f"cannot load {pair.cert} / {pair.key}: {reason}") from None
    except OSError as exc:
        raise CertificateError(f"cannot load {pair.cert} / {pair.key}: {exc.strerror or exc}") from None


def self_test(server_ctx: ssl.SSLContext, version: str) -> str | None:
    """Handshake with ``server_ctx`` in memory at exactly ``version``; None, or why it failed.

    No socket is involved: two SSLObjects talk over MemoryBIOs, which takes about a
    millisecond. The client offers what legacy devices offer at that version.
    """
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # the certificate's trust is the client's business
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client_ctx.minimum_version = client_ctx.maximum_version = TLS_VERSIONS[version]
    client_ctx.set_ciphers(cipher_string(version))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(8):  # a full handshake needs at most 4 flights
        for name, side in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return str(exc.reason or exc)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return None if client.version() == server.version() else "the two sides disagree on the version"
    return "the handshake did not finish"


class TlsContexts:
    """All server contexts: one per domain, picked by SNI or, with no SNI, by stream ``to``.

    ``legacy``, when set, serves every legacy client (below TLS 1.2) whatever the domain: a
    chain old devices trust (BlackBerry 10 does not trust ISRG Root X1, for one).
    """

    __slots__ = ("_by_domain", "default", "legacy")

    def __init__(
        self,
        default: ssl.SSLContext,
        by_domain: Mapping[str, ssl.SSLContext],
        legacy: ssl.SSLContext | None = None,
    ) -> None:
        self.default = default
        self.legacy = legacy
        self._by_domain = dict(by_domain)
        for ctx in {id(c): c for c in (default, *self._by_domain.values())}.values():
            ctx.sni_callback = self._on_sni

    @classmethod
    def load(
        cls,
        domains: tuple[str, ...],
        default_pair: CertChoice,
        per_domain: Mapping[str, CertChoice],
        min_tls: str,
        plain_rsa: bool = False,
        legacy_pair: CertChoice | None = None,
    ) -> TlsContexts:
        """Load every certificate once; raise CertificateError naming the first bad file.

        Each context must also pass :func:`self_test` at the lowest version it promises, so a
        build of OpenSSL without TLS 1.0 (or a certificate it cannot sign old handshakes with)
        stops the start, or the reload, with one clear line instead of failing every device.
        """
        default = build_context(default_pair, min_tls, plain_rsa)
        by_domain = {d: build_context(per_domain[d], min_tls, plain_rsa) for d in domains if d in per_domain}
        legacy = None if legacy_pair is None else build_context(legacy_pair, min_tls, plain_rsa)
        checks = [("default", default), *by_domain.items()]
        if legacy is not None:
            checks.append(("legacy", legacy))
        for name, ctx in checks:
            problem = self_test(ctx, min_tls)
            if problem is not None:
                raise CertificateError(
                    f"TLS {min_tls} self-test failed for the {name} certificate: {problem}"
                )
        return cls(default, by_domain, legacy)

    def for_domain(self, domain: str | None) -> ssl.SSLContext:
        if domain is None:
            return self.default
        return self._by_domain.get(domain, self.default)

    def _on_sni(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is None:
            return  # keep the context chosen from the stream 'to' (or the default)
        ctx = self._by_domain.get(server_name.rstrip(".").lower())
        if ctx is not None and sslobj.context is not ctx and sslobj.context is not self.legacy:
            sslobj.context = ctx
