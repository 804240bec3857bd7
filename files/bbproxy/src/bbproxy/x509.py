"""What an X.509 certificate says about its expiry: subject, issuer, validity, key type.

Sans-IO and standard library only: the proxy has no runtime dependencies (the role installs
its wheel offline), ``cryptography`` is not one of them, and the ``ssl`` module decodes a
certificate only through a private function. Only the few fields of ``tbsCertificate`` that
:mod:`bbproxy.expiry` needs are read (RFC 5280, section 4.1), in DER, with every length
checked against what is left; anything else is an :class:`X509Error`. Signatures are not
checked: OpenSSL has already loaded the same file, and trust is the client's business.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

_SEQUENCE: Final = 0x30
_SET: Final = 0x31
_INTEGER: Final = 0x02
_OID: Final = 0x06
_UTC_TIME: Final = 0x17
_GENERALIZED_TIME: Final = 0x18
_VERSION: Final = 0xA0  # [0] EXPLICIT Version

# Attribute types as OpenSSL abbreviates them (X.520, RFC 4519); others print as dotted OIDs.
_ATTRIBUTES: Final = {
    "2.5.4.3": "CN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.97": "organizationIdentifier",
    "1.2.840.113549.1.9.1": "emailAddress",
    "0.9.2342.19200300.100.1.25": "DC",
}
# SubjectPublicKeyInfo algorithms -> the key type label (bbproxy_certificate_* metrics).
KEY_TYPES: Final = {
    "1.2.840.113549.1.1.1": "rsa",
    "1.2.840.113549.1.1.10": "rsa",  # RSASSA-PSS
    "1.2.840.10045.2.1": "ecdsa",
    "1.3.101.112": "ed25519",
    "1.3.101.113": "ed448",
    "1.2.840.10040.4.1": "dsa",
}
OTHER_KEY: Final = "other"
# The directory string types (RFC 5280, 4.1.2.4) and how their bytes decode.
_STRINGS: Final = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (in practice Latin-1)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}
_PEM_RE: Final = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_UNPRINTABLE_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class X509Error(ValueError):
    """Not a certificate this module can read; the message says where it stopped."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str  # "CN=example.org, O=Example" in the certificate's order
    issuer: str
    not_before: datetime  # UTC
    not_after: datetime
    key_type: str  # a KEY_TYPES value or "other"
    self_issued: bool  # subject == issuer (byte for byte): a root, when it is in the file


def parse_pem_chain(text: bytes) -> tuple[CertInfo, ...]:
    """Every ``CERTIFICATE`` block of a PEM file, in file order (the leaf first, as served)."""
    infos = []
    for number, match in enumerate(_PEM_RE.finditer(text), start=1):
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except binascii.Error:
            raise X509Error(f"certificate {number}: not valid base64") from None
        try:
            infos.append(parse_der(der))
        except X509Error as exc:
            raise X509Error(f"certificate {number}: {exc}") from None
    if not infos:
        raise X509Error("no PEM certificate found")
    return tuple(infos)


def parse_der(der: bytes) -> CertInfo:
    """The fields of one DER certificate (Certificate ::= SEQUENCE { tbsCertificate, ... })."""
    certificate = _only(der, _SEQUENCE, "Certificate")
    tbs = _Reader(_Reader(certificate).take(_SEQUENCE, "tbsCertificate"))
    if tbs.peek() == _VERSION:
        tbs.take(_VERSION, "version")
    tbs.take(_INTEGER, "serialNumber")
    tbs.take(_SEQUENCE, "signature")
    issuer = tbs.take(_SEQUENCE, "issuer")
    validity = _Reader(tbs.take(_SEQUENCE, "validity"))
    not_before = _time(*validity.any("notBefore"))
    not_after = _time(*validity.any("notAfter"))
    subject = tbs.take(_SEQUENCE, "subject")
    algorithm = _Reader(_Reader(tbs.take(_SEQUENCE, "subjectPublicKeyInfo")).take(_SEQUENCE, "algorithm"))
    key_oid = _oid(algorithm.take(_OID, "algorithm"))
    return CertInfo(
        subject=_name(subject),
        issuer=_name(issuer),
        not_before=not_before,
        not_after=not_after,
        key_type=KEY_TYPES.get(key_oid, OTHER_KEY),
        self_issued=subject == issuer,
    )


class _Reader:
    """DER elements one after another out of ``data``, each length checked."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def peek(self) -> int | None:
        return None if self.at_end() else self._data[self._pos]

    def any(self, what: str) -> tuple[int, bytes]:
        """The next element's tag and contents."""
        data, pos = self._data, self._pos
        if pos + 2 > len(data):
            raise X509Error(f"{what}: truncated")
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise X509Error(f"{what}: unexpected high tag number")
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or pos + count > len(data):
                raise X509Error(f"{what}: bad length")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise X509Error(f"{what}: truncated")
        self._pos = pos + length
        return tag, data[pos : pos + length]

    def take(self, tag: int, what: str) -> bytes:
        found, contents = self.any(what)
        if found != tag:
            raise X509Error(f"{what}: expected tag {tag:#04x}, found {found:#04x}")
        return contents


def _only(der: bytes, tag: int, what: str) -> bytes:
    reader = _Reader(der)
    contents = reader.take(tag, what)
    if not reader.at_end():
        raise X509Error(f"{what}: trailing bytes")
    return contents


def _oid(contents: bytes) -> str:
    if not contents or contents[-1] & 0x80:
        raise X509Error("bad object identifier")
    arcs, value = [], 0
    for byte in contents:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))


def _time(tag: int, contents: bytes) -> datetime:
    """UTCTime (YYMMDDHHMMSSZ, 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ): RFC 5280, 4.1.2.5."""
    text = contents.decode("ascii", "replace")
    if tag == _UTC_TIME and re.fullmatch(r"\d{12}Z", text):
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME or not re.fullmatch(r"\d{14}Z", text):
        raise X509Error(f"validity: {text!r} is not a UTC time of RFC 5280")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise X509Error(f"validity: {text!r} is not a date") from None


def _name(contents: bytes) -> str:
    """A Name (RDNSequence) as ``TYPE=value`` pairs, comma-separated, in the certificate's order."""
    return ", ".join(f"{kind}={value}" for kind, value in _attributes(contents))


def _attributes(contents: bytes) -> Iterator[tuple[str, str]]:
    rdns = _Reader(contents)
    while not rdns.at_end():
        rdn = _Reader(rdns.take(_SET, "name"))
        while not rdn.at_end():
            pair = _Reader(rdn.take(_SEQUENCE, "attribute"))
            oid = _oid(pair.take(_OID, "attribute type"))
            tag, raw = pair.any("attribute value")
            encoding = _STRINGS.get(tag)
            value = raw.decode(encoding, "replace") if encoding else "#" + raw.hex()
            # Names end up in log lines and --check-config output: no control characters.
            yield _ATTRIBUTES.get(oid, oid), _UNPRINTABLE_RE.sub("?", value)
