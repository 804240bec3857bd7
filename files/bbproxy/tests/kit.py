"""The test kit: what the unit tests, the integration tests, the torture run and the benchmark's
clients all need, in one place (not a test module).

Stream headers, client TLS contexts, trustme certificates, loopback ports, reading a socket
until a needle, and the client side of SASL SCRAM-SHA-1. Standard library and bbproxy only at
import time (trustme is imported where the certificates are made), so the benchmark's load
generator, a stdlib-only subprocess, can use it.

Scripts under bench/ import it with one line, ``import _path`` (bench/_path.py puts files/bbproxy
and files/bbproxy/src first on sys.path), then ``from tests.kit import ...``.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import re
import secrets
import socket
import ssl
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bbproxy.tls import TLS_VERSIONS

if TYPE_CHECKING:
    import trustme

DOMAIN = "example.test"
LOOPBACK = "127.0.0.1"

# --------------------------------------------------------------------------- XMPP bytes

STREAM_NS = "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
# The defined condition of a <stream:error/> (RFC 6120 §4.9.3): its first child's name.
STREAM_ERROR_RE = re.compile(rb"<stream:error>\s*<([a-z-]+)[\s/>]")


def stream_header(to: str = DOMAIN, *, prolog: bool = True, extra: str = "") -> bytes:
    """A client's opening stream header (RFC 6120 §4.2); ``extra`` goes after version='1.0'."""
    head = "<?xml version='1.0'?>" if prolog else ""
    return f"{head}<stream:stream {STREAM_NS} to='{to}' version='1.0'{extra}>".encode()


def stream_error_condition(data: bytes) -> str | None:
    """The defined condition of the first ``<stream:error/>`` in ``data``."""
    match = STREAM_ERROR_RE.search(data)
    return match.group(1).decode() if match else None


# --------------------------------------------------------------------------- SASL SCRAM-SHA-1


@functools.lru_cache(maxsize=256)
def scram_salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802: PBKDF2-HMAC-SHA-1. Cached, as RFC 5802 lets a client
    cache it: a server keeps a user's salt, so a load generator pays for it once per user."""
    return hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)


class ScramSha1:
    """The client side of RFC 5802 SCRAM-SHA-1, sans IO: ``first()`` is the client-first message
    (for ``<auth>``), ``final(server_first)`` the client-final (for ``<response>``), and
    ``verify(server_final)`` checks the server's signature (from ``<success>``). Payloads are the
    raw messages; base64 them for XMPP. ``gs2_header`` and ``cb_data``: channel binding (-PLUS)."""

    def __init__(self, user: str, password: str, *, gs2_header: bytes = b"n,,", cb_data: bytes = b"") -> None:
        self._password = password
        self.gs2_header = gs2_header
        self.cb_data = cb_data
        self.first_bare = f"n={user},r={secrets.token_urlsafe(18)}".encode()
        self._auth_message = b""
        self._salted = b""

    def first(self) -> bytes:
        return self.gs2_header + self.first_bare

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(item.split(b"=", 1) for item in server_first.split(b","))
        if not attrs[b"r"].startswith(self.first_bare.split(b",r=", 1)[1]):
            raise ValueError("the server's nonce does not extend ours")
        self._salted = scram_salted_password(self._password, base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
        without_proof = b"c=" + base64.b64encode(self.gs2_header + self.cb_data) + b",r=" + attrs[b"r"]
        self._auth_message = self.first_bare + b"," + server_first + b"," + without_proof
        client_key = hmac.digest(self._salted, b"Client Key", "sha1")
        signature = hmac.digest(hashlib.sha1(client_key).digest(), self._auth_message, "sha1")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> bool:
        """Whether ``v=`` is the signature only a server that knows the password can make."""
        server_key = hmac.digest(self._salted, b"Server Key", "sha1")
        expected = b"v=" + base64.b64encode(hmac.digest(server_key, self._auth_message, "sha1"))
        return bool(self._auth_message) and hmac.compare_digest(server_final, expected)


# --------------------------------------------------------------------------- TLS clients

# Python deprecates TLSVersion.TLSv1/TLSv1_1; the tests use them on purpose.
DEPRECATED_TLS_MESSAGE = r"ssl\.TLSVersion\.TLSv1(_1)? is deprecated"
# Every suite OpenSSL has, SHA-1/MD5 handshake signatures included (what TLS 1.0/1.1 need).
ANY_SECLEVEL = "DEFAULT:@SECLEVEL=0"


def client_context(
    version: str | ssl.TLSVersion,
    trust: Path | trustme.CA | None,
    *,
    ciphers: str | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """A client SSLContext pinned to exactly one TLS version.

    ``trust``: a CA file, a trustme CA, or None for no certificate check at all (the benchmark's
    clients: their CPU is not what is measured). ``ciphers``: the cipher string, by default
    ``ANY_SECLEVEL`` for TLS 1.0/1.1 and OpenSSL's default above. ``alpn``: protocols offered.
    """
    pinned = version if isinstance(version, ssl.TLSVersion) else TLS_VERSIONS[version]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATED_TLS_MESSAGE, category=DeprecationWarning)
        ctx.minimum_version = pinned
        ctx.maximum_version = pinned
    if ciphers is None and pinned < ssl.TLSVersion.TLSv1_2:
        ciphers = ANY_SECLEVEL
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if trust is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(trust, Path):
        ctx.load_verify_locations(cafile=str(trust))
    else:
        trust.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def padded_alpn(names: int) -> list[str]:
    """ALPN ``xmpp-client`` and then ``names`` names of 250 bytes that nobody serves: each makes a
    ClientHello ~250 bytes longer, and the server ignores them (0: ~0.1 KiB, 63: ~16 KiB)."""
    return ["xmpp-client", *(f"{i:03d}" + "p" * 247 for i in range(names))]


# --------------------------------------------------------------------------- certificates


@dataclasses.dataclass(frozen=True)
class CertPair:
    cert: Path  # leaf + intermediate, PEM
    key: Path


@dataclasses.dataclass(frozen=True)
class Certs:
    cafile: Path  # the root only: clients verify the chain the proxy sends
    rsa: CertPair
    ecdsa: CertPair
    other_key: Path  # a valid RSA key that matches neither certificate

    def pair(self, kind: str) -> CertPair:
        return {"rsa": self.rsa, "ecdsa": self.ecdsa}[kind]

    def pairs(self, kind: str) -> tuple[CertPair, ...]:
        """``rsa``, ``ecdsa``, or ``rsa+ecdsa``: both, one per key type (the proxy picks per client)."""
        return tuple(self.pair(k) for k in kind.split("+"))


def make_certs(directory: Path, domain: str = DOMAIN) -> Certs:
    """A trustme root (ca.pem), an RSA and an ECDSA leaf for ``domain``, each under an
    intermediate of its own key type, and a spare RSA key, written into ``directory``."""
    import trustme

    root = trustme.CA(key_type=trustme.KeyType.RSA)
    cafile = directory / "ca.pem"
    root.cert_pem.write_to_path(str(cafile))

    def issue(kind: str, key_type: trustme.KeyType) -> CertPair:
        intermediate = root.create_child_ca(key_type=key_type)
        leaf = intermediate.issue_cert(domain, key_type=key_type)
        cert, key = directory / f"{kind}.crt", directory / f"{kind}.key"
        # Leaf + intermediate (trustme leaves the root out): clients that trust only the root
        # verify, so this also proves the proxy sends the full chain.
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return CertPair(cert, key)

    other_key = directory / "other.key"
    root.issue_cert("other.test", key_type=trustme.KeyType.RSA).private_key_pem.write_to_path(str(other_key))
    return Certs(cafile, issue("rsa", trustme.KeyType.RSA), issue("ecdsa", trustme.KeyType.ECDSA), other_key)


# --------------------------------------------------------------------------- sockets


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def recv_until(
    sock: socket.socket | ssl.SSLSocket, needle: bytes | re.Pattern[bytes], timeout: float, chunk: int = 65536
) -> bytes:
    """Read until ``needle`` (bytes, or a regex that searches) is in the data, EOF, a reset or the
    deadline; returns everything read. The caller checks for the needle."""

    def found(data: bytes) -> bool:
        return bool(needle.search(data)) if isinstance(needle, re.Pattern) else needle in data

    deadline = time.monotonic() + timeout
    data = b""
    while not found(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            received = sock.recv(chunk)
        except (TimeoutError, ConnectionResetError, ssl.SSLEOFError):
            break
        if not received:
            break
        data += received
    return data


def recv_until_closed(sock: socket.socket | ssl.SSLSocket, timeout: float) -> tuple[bytes, bool]:
    """Read until EOF or the deadline. Returns (data, closed_by_peer)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, False
        sock.settimeout(remaining)
        try:
            received = sock.recv(65536)
        except TimeoutError:
            return data, False
        except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError):  # reset, broken pipe...
            return data, True
        if not received:
            return data, True
        data += received
