"""The one place that builds SSLContexts: version policy, suites, certificates, SNI.

Certificate files are loaded and inspected by :mod:`bbproxy.certificates`.

Every certificate set (the default chain, each domain's, the legacy chain) gets two
contexts, one per :class:`Policy` class (issue 15):

* **modern**: TLS 1.2 with forward-secret AEAD suites only, and TLS 1.3, at OpenSSL's
  default security level (2 on Debian 12), which forbids SHA-1 signatures;
* **legacy**: TLS 1.0 (or ``min_tls``) up to 1.2 with ECDHE AES-CBC-SHA only, and
  ``@SECLEVEL=0``, because TLS 1.0/1.1 sign handshakes with MD5+SHA-1. It exists only
  while ``min_tls`` is below 1.2.

The ClientHello picks the class (:func:`policy_for`): a client gets the legacy context only
if it cannot use the modern one (it offers nothing above TLS 1.1, or no suite of the modern
list), so ``@SECLEVEL=0`` never reaches a client that could do better. OpenSSL's
configuration for the rest of the process is untouched.

Session tickets are off (``OP_NO_TICKET``): Python cannot set or rotate the ticket key, so
one random key would protect every ticket for the life of the process (and of its forked
workers). Resumption is by session ID from each context's own cache (TLS 1.3: stateful
tickets from the same cache); see docs/security.md, "Tickets and forward secrecy".
"""

from __future__ import annotations

import enum
import ssl
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from .certificates import CertChoice, cert_pairs, load_pair, suite_ids

# Re-exported (`X as X`): callers have always imported these from here.
from .certificates import CertificateError as CertificateError
from .certificates import CertPair as CertPair
from .hello_message import TLS_1_2, ClientHello

# TLS 1.2: forward secret AEAD suites only, ECDSA first (cheaper handshakes).
MODERN_SUITES: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
# TLS 1.0-1.2 for clients without any of the above: what BlackBerry 10, Android 4.x, Windows
# Phone 8 and Java 7 offer (and, at TLS 1.2, Safari 5-8 and Chrome 30). Forward secret ECDHE
# with AES-CBC-SHA; never RC4, 3DES (SWEET32), NULL, EXPORT or anonymous.
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


class Policy(enum.Enum):
    """The two TLS policies; each certificate set has a context for each (when both exist)."""

    MODERN = "modern"  # TLS 1.2 AEAD + TLS 1.3, OpenSSL's default security level
    LEGACY = "legacy"  # TLS min_tls-1.2, ECDHE AES-CBC-SHA, @SECLEVEL=0
    # A hello the router could not read (ClientHelloError): both of the above in one context,
    # as before issue 15, so a device is never lost to a parser limit (see docs/security.md).
    UNREAD = "unread"


def has_legacy_policy(min_tls: str) -> bool:
    """Whether ``min_tls`` leaves anything for the legacy context: TLS 1.0 or 1.1."""
    return TLS_VERSIONS[min_tls] < ssl.TLSVersion.TLSv1_2


def cipher_string(policy: Policy, plain_rsa: bool = False) -> str:
    """The OpenSSL cipher string (TLS <= 1.2 suites) of a policy's contexts."""
    if policy is Policy.MODERN:
        return MODERN_SUITES  # and OpenSSL's default security level: no SHA-1 signatures
    legacy = f"{LEGACY_SUITES}:{LEGACY_PLAIN_RSA_SUITES}" if plain_rsa else LEGACY_SUITES
    if policy is Policy.UNREAD:
        legacy = f"{MODERN_SUITES}:{legacy}"  # AEAD first (server preference)
    # SECLEVEL=0 only lifts the MD5+SHA-1 signature ban; the explicit list keeps weak suites out.
    return f"{legacy}:@SECLEVEL=0"


def policy_for(max_version: int, offered: Iterable[int], modern_suites: frozenset[int]) -> Policy:
    """The policy a ClientHello needs: modern unless the client cannot use it.

    ``max_version`` is the highest version the hello offers (``ClientHello.max_version``),
    ``offered`` its cipher suites, ``modern_suites`` the suite ids the modern context accepts
    (TLS 1.3's included). A TLS 1.2 hello without one of them (Safari 5-8, Chrome 30: CBC
    only) would get nothing from the modern context, so it gets the legacy one, at TLS 1.2.
    """
    if max_version >= TLS_1_2 and not modern_suites.isdisjoint(offered):
        return Policy.MODERN
    return Policy.LEGACY


def build_context(pairs: CertChoice, policy: Policy, min_tls: str, plain_rsa: bool = False) -> ssl.SSLContext:
    """A server context for one certificate chain (or one per key type) under ``policy``.

    Modern: TLS max(``min_tls``, 1.2) and up. Legacy: ``min_tls`` to TLS 1.2 (the 1.2 is for
    TLS 1.2 clients that offer no AEAD suite; a client below 1.2 never sees it). Unread:
    ``min_tls`` and up. The last two only with ``min_tls`` below 1.2.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lowest = TLS_VERSIONS[min_tls]
    with warnings.catch_warnings():
        # Naming TLSVersion.TLSv1 warns; serving legacy clients is the point of this proxy.
        warnings.simplefilter("ignore", DeprecationWarning)
        if policy is Policy.MODERN:
            ctx.minimum_version = max(lowest, ssl.TLSVersion.TLSv1_2)
            ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
        else:
            if lowest >= ssl.TLSVersion.TLSv1_2:
                raise ValueError(f"no {policy.value} policy with min_tls {min_tls}")
            ctx.minimum_version = lowest
            ctx.maximum_version = (
                ssl.TLSVersion.TLSv1_2 if policy is Policy.LEGACY else ssl.TLSVersion.MAXIMUM_SUPPORTED
            )
    ctx.set_ciphers(cipher_string(policy, plain_rsa))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    # No stateless tickets: their key would be random per process, never rotated and shared by
    # forked workers (docs/security.md). TLS <= 1.2 resumes by session ID from this context's
    # cache; TLS 1.3 gets stateful tickets (a session ID in ticket form) from the same cache.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.set_alpn_protocols([ALPN_XMPP_CLIENT])
    for pair in cert_pairs(pairs):
        load_pair(ctx, pair)
    return ctx


def self_test(server_ctx: ssl.SSLContext, version: str, policy: Policy | None = None) -> str | None:
    """Handshake with ``server_ctx`` in memory at exactly ``version``; None, or why it failed.

    No socket is involved: two SSLObjects talk over MemoryBIOs, which takes about a
    millisecond. The client offers the suites of ``policy`` (by default the one a client
    of that version gets): what legacy devices offer below TLS 1.2.
    """
    if policy is None:
        policy = Policy.LEGACY if has_legacy_policy(version) else Policy.MODERN
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # the certificate's trust is the client's business
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client_ctx.minimum_version = client_ctx.maximum_version = TLS_VERSIONS[version]
    client_ctx.set_ciphers(cipher_string(policy))
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


@dataclass(frozen=True, slots=True)
class PolicyContexts:
    """One certificate set's contexts: the modern one; the legacy and unread ones if ``min_tls``
    is below 1.2 (otherwise every class gets the modern one)."""

    modern: ssl.SSLContext
    legacy: ssl.SSLContext | None
    unread: ssl.SSLContext | None
    modern_suites: frozenset[int]  # what the modern context can negotiate with these certificates

    def get(self, policy: Policy) -> ssl.SSLContext:
        if policy is Policy.LEGACY and self.legacy is not None:
            return self.legacy
        if policy is Policy.UNREAD and self.unread is not None:
            return self.unread
        return self.modern

    def contexts(self) -> tuple[tuple[Policy, ssl.SSLContext], ...]:
        found = ((Policy.MODERN, self.modern), (Policy.LEGACY, self.legacy), (Policy.UNREAD, self.unread))
        return tuple((policy, ctx) for policy, ctx in found if ctx is not None)

    @classmethod
    def build(cls, pairs: CertChoice, min_tls: str, plain_rsa: bool) -> PolicyContexts:
        modern = build_context(pairs, Policy.MODERN, min_tls)
        if not has_legacy_policy(min_tls):
            return cls(modern, None, None, suite_ids(modern))
        return cls(
            modern,
            build_context(pairs, Policy.LEGACY, min_tls, plain_rsa),
            build_context(pairs, Policy.UNREAD, min_tls, plain_rsa),
            suite_ids(modern),
        )


class TlsContexts:
    """All server contexts: per certificate set (the default, one per domain, the legacy chain)
    one per policy class. The domain is picked by SNI or, with no SNI, by stream ``to``; the
    class by the ClientHello (:meth:`choose`).

    ``legacy_chain``, when set, serves every legacy client (below TLS 1.2, or named in
    ``tls.legacy_ja3``) whatever the domain: a chain old devices trust (BlackBerry 10 does
    not trust ISRG Root X1, for one).
    """

    __slots__ = ("_by_domain", "_default", "_owner", "default", "legacy_chain", "min_tls")

    def __init__(
        self,
        default: PolicyContexts,
        by_domain: Mapping[str, PolicyContexts],
        legacy_chain: PolicyContexts | None = None,
        min_tls: str = "1.0",
    ) -> None:
        self._default = default
        self.default = default.modern  # where a session without a domain starts
        self.legacy_chain = legacy_chain
        self.min_tls = min_tls
        self._by_domain = dict(by_domain)
        # Which set and class each context is: the SNI callback keeps the class it was given.
        self._owner: dict[int, tuple[PolicyContexts, Policy]] = {}
        for contexts in (default, *self._by_domain.values(), *([legacy_chain] if legacy_chain else [])):
            for policy, ctx in contexts.contexts():
                self._owner[id(ctx)] = (contexts, policy)
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
        default = PolicyContexts.build(default_pair, min_tls, plain_rsa)
        by_domain = {
            d: PolicyContexts.build(per_domain[d], min_tls, plain_rsa) for d in domains if d in per_domain
        }
        legacy = None if legacy_pair is None else PolicyContexts.build(legacy_pair, min_tls, plain_rsa)
        checks = [("default", default), *by_domain.items()]
        if legacy is not None:
            checks.append(("legacy", legacy))
        modern_min = min_tls if not has_legacy_policy(min_tls) else "1.2"
        for name, contexts in checks:
            for policy, ctx in contexts.contexts():
                version = modern_min if policy is Policy.MODERN else min_tls
                problem = self_test(ctx, version, policy)
                if problem is not None:
                    raise CertificateError(
                        f"TLS {version} self-test failed for the {name} certificate "
                        f"({policy.value} context): {problem}"
                    )
        return cls(default, by_domain, legacy, min_tls)

    def for_domain(self, domain: str | None) -> ssl.SSLContext:
        """The modern context of ``domain``'s certificate set: what a session starts with."""
        if domain is None:
            return self.default
        return self._by_domain.get(domain, self._default).modern

    def choose(self, start: ssl.SSLContext, hello: ClientHello | None, legacy_chain: bool) -> ssl.SSLContext:
        """The context for a ClientHello (None: one the router could not read): its certificate
        set, and in that set the policy class the hello needs (:func:`policy_for`).

        The set: the legacy chain when ``legacy_chain`` and one is configured; else the one
        the hello's SNI names (the SNI callback would switch to it anyway, and its key types
        decide what the modern context can offer); else ``start``'s (the stream ``to``).
        """
        if legacy_chain and self.legacy_chain is not None:
            contexts = self.legacy_chain
        elif hello is not None and hello.sni is not None and hello.sni.rstrip(".").lower() in self._by_domain:
            contexts = self._by_domain[hello.sni.rstrip(".").lower()]
        else:
            owner = self._owner.get(id(start))
            contexts = owner[0] if owner is not None else self._default
        if hello is None:
            return contexts.get(Policy.UNREAD)
        return contexts.get(policy_for(hello.max_version, hello.ciphers, contexts.modern_suites))

    def describe(self) -> str:
        """One line for the start-up log and --check-config: which contexts exist."""
        sets = ["default", *self._by_domain]
        if self.legacy_chain is not None:
            sets.append("legacy chain")
        modern_min = "1.2" if has_legacy_policy(self.min_tls) else self.min_tls
        classes = [f"modern (TLS {modern_min}-1.3, AEAD)"]
        if self._default.legacy is not None:
            classes.append(f"legacy (TLS {self.min_tls}-1.2, CBC-SHA, SECLEVEL=0)")
            classes.append(f"unread hello (TLS {self.min_tls}-1.3, both)")
        count = len(sets) * len(classes)
        return (
            f"{count} TLS context(s): {' + '.join(classes)} x certificate set(s) {', '.join(sets)}; "
            "session tickets off, resumption by session ID per process"
        )

    def _on_sni(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is None:
            return  # keep the context chosen from the stream 'to' (or the default)
        contexts = self._by_domain.get(server_name.rstrip(".").lower())
        owner = self._owner.get(id(sslobj.context))
        if contexts is None or owner is None or owner[0] is self.legacy_chain:
            return  # an unknown name, or the legacy chain (which SNI does not override)
        ctx = contexts.get(owner[1])  # the same class: the policy was the hello's choice
        if sslobj.context is not ctx:
            sslobj.context = ctx
