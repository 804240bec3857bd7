"""Sans-IO reader of a TLS server's first answer to a ClientHello, for tests that send raw hellos.

Feed it what the server sends (``receive_data``), then ``receive_eof`` if it closes; it decides
as soon as the bytes allow:

* :class:`Negotiated` -- the ServerHello's version (``supported_versions`` for TLS 1.3) and
  cipher suite, and the key type of the leaf certificate (``RSA``/``EC``) from the Certificate
  message. TLS 1.3 encrypts the Certificate (and the CertificateVerify whose signature scheme
  would name the key type), so a client that never finishes the key exchange cannot see it:
  the type is then ``encrypted``.
* :class:`HelloRetry` -- a TLS 1.3 HelloRetryRequest (the server wants another key share).
* :class:`Alert` -- an alert record before any of the above (level, description).
* :class:`Closed` -- the connection ended before any of the above.

No socket, no clock: the caller owns the connection and the deadline. Anything that is not
TLS from a server raises :class:`TlsRecordError`.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from bbproxy.clienthello import VERSION_NAMES

CHANGE_CIPHER_SPEC: Final = 20
ALERT: Final = 21
HANDSHAKE: Final = 22
APPLICATION_DATA: Final = 23
_SERVER_HELLO: Final = 2
_CERTIFICATE: Final = 11
_SERVER_HELLO_DONE: Final = 14
_EXT_SUPPORTED_VERSIONS: Final = 43
_EXT_KEY_SHARE: Final = 51
_TLS_1_3: Final = 0x0304
# RFC 8446 4.1.3: a HelloRetryRequest is a ServerHello with this random.
HELLO_RETRY_RANDOM: Final = hashlib.sha256(b"HelloRetryRequest").digest()

# RFC 5246 7.2, RFC 8446 6, RFC 7301 3.2.
ALERT_DESCRIPTIONS: Final = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}
ALERT_LEVELS: Final = {1: "warning", 2: "fatal"}
# RFC 8446 4.2.7 / RFC 8422 5.1.1: the groups a HelloRetryRequest may ask for.
GROUP_NAMES: Final = {
    0x0017: "secp256r1",
    0x0018: "secp384r1",
    0x0019: "secp521r1",
    0x001D: "x25519",
    0x001E: "x448",
    0x0100: "ffdhe2048",
    0x0101: "ffdhe3072",
    0x0102: "ffdhe4096",
}


class TlsRecordError(ValueError):
    """The server's bytes are not a TLS answer this reader understands."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    version: str  # "TLSv1.2"
    cipher: str  # OpenSSL's name, e.g. "ECDHE-RSA-AES128-SHA"
    certificate: str  # "RSA", "EC", ... or "encrypted" (TLS 1.3)

    def __str__(self) -> str:
        return f"{self.version} {self.cipher} {self.certificate}"


@dataclass(frozen=True, slots=True)
class HelloRetry:
    cipher: str
    group: str

    def __str__(self) -> str:
        return f"hello_retry_request {self.cipher} {self.group}"


@dataclass(frozen=True, slots=True)
class Alert:
    level: str
    description: str

    def __str__(self) -> str:
        return f"alert {self.level} {self.description}"


@dataclass(frozen=True, slots=True)
class Closed:
    def __str__(self) -> str:
        return "closed"


Outcome = Negotiated | HelloRetry | Alert | Closed


@functools.cache
def cipher_names() -> dict[int, str]:
    """IANA suite number -> OpenSSL name, for every suite this OpenSSL knows."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {int(c["id"]) & 0xFFFF: str(c["name"]) for c in ctx.get_ciphers()}


def cipher_name(value: int) -> str:
    return cipher_names().get(value, f"0x{value:04x}")


def version_name(value: int) -> str:
    return VERSION_NAMES.get(value, f"0x{value:04x}")


def key_type(der: bytes) -> str:
    """The public key type of a DER certificate: RSA, EC, DSA, Ed25519, Ed448."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise TlsRecordError(f"unreadable certificate: {exc}") from None
    kinds = (
        (rsa.RSAPublicKey, "RSA"),
        (ec.EllipticCurvePublicKey, "EC"),
        (dsa.DSAPublicKey, "DSA"),
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
    )
    return next((name for cls, name in kinds if isinstance(key, cls)), type(key).__name__)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise TlsRecordError("truncated handshake message")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    def done(self) -> bool:
        return self.pos >= len(self.data)


@dataclass(frozen=True, slots=True)
class _ServerHello:
    version: int
    cipher: int
    retry_group: int | None  # set for a HelloRetryRequest


def parse_server_hello(body: bytes) -> _ServerHello:
    """A ServerHello body (after the 4-byte handshake header)."""
    r = _Reader(body)
    version = r.uint(2)
    random = r.take(32)
    r.vector(1)  # session id
    cipher = r.uint(2)
    r.uint(1)  # compression method
    group: int | None = None
    if not r.done():
        extensions = _Reader(r.vector(2))
        while not extensions.done():
            ext_type, data = extensions.uint(2), extensions.vector(2)
            if ext_type == _EXT_SUPPORTED_VERSIONS:
                version = int.from_bytes(data, "big")
            elif ext_type == _EXT_KEY_SHARE:
                group = int.from_bytes(data[:2], "big")
    retry = random == HELLO_RETRY_RANDOM
    return _ServerHello(version, cipher, group if retry else None)


def parse_certificate(body: bytes) -> str:
    """The leaf's key type from a TLS <= 1.2 Certificate body."""
    chain = _Reader(_Reader(body).vector(3))
    if chain.done():
        return "none"
    return key_type(chain.vector(3))


class ServerFlightReader:
    """Reads records until the server's answer to one ClientHello is known."""

    def __init__(self) -> None:
        self._records = bytearray()
        self._handshake = bytearray()  # handshake messages, reassembled across records
        self._hello: _ServerHello | None = None
        self._certificate: str | None = None
        self.outcome: Outcome | None = None

    def receive_data(self, data: bytes) -> Outcome | None:
        self._records += data
        while self.outcome is None and len(self._records) >= 5:
            content_type = self._records[0]
            length = int.from_bytes(self._records[3:5], "big")
            if content_type not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA):
                raise TlsRecordError(f"not a TLS record: {bytes(self._records[:5]).hex()}")
            if len(self._records) < 5 + length:
                break
            payload = bytes(self._records[5 : 5 + length])
            del self._records[: 5 + length]
            if content_type == ALERT:
                self._alert(payload)
            elif content_type == HANDSHAKE:
                self._handshake += payload
                self._messages()
            elif self._hello is None:
                raise TlsRecordError(f"record type {content_type} before the ServerHello")
        return self.outcome

    def receive_eof(self) -> Outcome:
        if self.outcome is None:
            self.outcome = Closed()
        return self.outcome

    def _alert(self, payload: bytes) -> None:
        if len(payload) != 2:
            # After a TLS 1.3 ServerHello alerts are encrypted; the outcome is decided by then.
            raise TlsRecordError(f"alert record of {len(payload)} bytes")
        self.outcome = Alert(
            ALERT_LEVELS.get(payload[0], str(payload[0])),
            ALERT_DESCRIPTIONS.get(payload[1], str(payload[1])),
        )

    def _messages(self) -> None:
        while self.outcome is None and len(self._handshake) >= 4:
            length = int.from_bytes(self._handshake[1:4], "big")
            if len(self._handshake) < 4 + length:
                return
            msg_type = self._handshake[0]
            body = bytes(self._handshake[4 : 4 + length])
            del self._handshake[: 4 + length]
            if msg_type == _SERVER_HELLO:
                self._server_hello(parse_server_hello(body))
            elif self._hello is None:
                raise TlsRecordError(f"handshake message {msg_type} before the ServerHello")
            elif msg_type == _CERTIFICATE:
                self._certificate = parse_certificate(body)
            elif msg_type == _SERVER_HELLO_DONE:
                self.outcome = Negotiated(
                    version_name(self._hello.version),
                    cipher_name(self._hello.cipher),
                    self._certificate or "none",  # anonymous suites send no Certificate
                )

    def _server_hello(self, hello: _ServerHello) -> None:
        self._hello = hello
        if hello.retry_group is not None:
            group = GROUP_NAMES.get(hello.retry_group, f"0x{hello.retry_group:04x}")
            self.outcome = HelloRetry(cipher_name(hello.cipher), group)
        elif hello.version == _TLS_1_3:
            self.outcome = Negotiated(version_name(hello.version), cipher_name(hello.cipher), "encrypted")
