"""The ClientHello handshake message: what it offers (:class:`ClientHello`), and its decoding.

:func:`parse_client_hello` reads a TLS handshake body, :func:`parse_sslv2_client_hello` the
SSLv2-compatible form; :mod:`bbproxy.clienthello` reassembles either from the records a client
sends. Any malformed input is a :class:`ClientHelloError`, never another exception.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

VERSION_NAMES: Final = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}

TLS_1_2: Final = 0x0303  # as ClientHellos spell TLS 1.2
_EXT_SERVER_NAME: Final = 0
_EXT_GROUPS: Final = 10
_EXT_POINT_FORMATS: Final = 11
_EXT_ALPN: Final = 16
_EXT_SIGALGS: Final = 13
_EXT_SUPPORTED_VERSIONS: Final = 43
_EXT_READ: Final = frozenset(
    {_EXT_SERVER_NAME, _EXT_GROUPS, _EXT_POINT_FORMATS, _EXT_SIGALGS, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS}
)
_EXT_HEADER: Final = struct.Struct("!HH")  # extension type, data length
CLIENT_HELLO: Final = 1  # the handshake message type (the record parser checks it too)


class ClientHelloError(ValueError):
    """Not a (complete, well-formed) TLS ClientHello."""


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0A0A, 0x1A1A, ...) are noise, left out of fingerprints."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


# The same 16 values as a set: the fingerprint of every legacy handshake filters ~60 numbers.
GREASE: Final = frozenset(0x0A0A + 0x1010 * i for i in range(16))


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    supported_versions: tuple[int, ...]
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    groups: tuple[int, ...]
    point_formats: tuple[int, ...]
    sni: str | None
    alpn: tuple[str, ...]
    sigalgs: tuple[int, ...] = ()  # signature_algorithms, in the client's order (JA4)

    @property
    def max_version(self) -> int:
        """The highest version the client can really get: from ``supported_versions`` (RFC 8446
        §4.2.1) the highest version this side knows, values it does not know ignored (0 if none
        is known: there is no version in common); without it ``legacy_version``, at most TLS 1.2.

        Routing and the legacy allow-list are decided from this, so a hello offering
        ``{0x0305, 0x0301}`` is the TLS 1.0 client it is, not a "newer" one.
        """
        if self.supported_versions:
            return max((v for v in self.supported_versions if v in VERSION_NAMES), default=0)
        return min(self.legacy_version, TLS_1_2)

    def ja3_string(self) -> str:
        def dashed(values: tuple[int, ...]) -> str:
            return "-".join([str(v) for v in values if v not in GREASE])

        return ",".join(
            (
                str(self.legacy_version),
                dashed(self.ciphers),
                dashed(self.extensions),
                dashed(self.groups),
                dashed(self.point_formats),
            )
        )

    def ja3(self) -> str:
        return hashlib.md5(self.ja3_string().encode(), usedforsecurity=False).hexdigest()

    def family(self, name: str | None = None) -> str:
        """``TLSv1/<name>``: a label for counting devices of one kind (metrics); ``name`` is the
        family name from bbproxy.fingerprints (the JA3 hash when none is given)."""
        return f"{_version_name(self.max_version)}/{name or self.ja3()}"

    def summary(self, ja3: str | None = None) -> str:
        """One log-friendly line; no field comes from the client unescaped.

        ``ja3``: the hash if the caller has it already (it is the costly part).
        """
        versions = self.supported_versions or (self.legacy_version,)
        return (
            f"versions={','.join(_version_name(v) for v in versions if not is_grease(v))} "
            f"ciphers={_hex_list(self.ciphers)} sni={_safe(self.sni) if self.sni else '-'} "
            f"alpn={','.join(_safe(p) for p in self.alpn) or '-'} groups={_hex_list(self.groups)} "
            f"ja3={ja3 or self.ja3()}"
        )


def _version_name(value: int) -> str:
    return VERSION_NAMES.get(value, f"0x{value:04x}")


def _hex_list(values: tuple[int, ...]) -> str:
    return ",".join([f"{v:04x}" for v in values if v not in GREASE]) or "-"


def _safe(text: str) -> str:
    """Printable ASCII only, bounded: SNI and ALPN are client-controlled."""
    return "".join(c if 0x21 <= ord(c) < 0x7F else "?" for c in text[:64])


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ClientHelloError("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        end = self.pos + n
        if end > len(self.data):
            raise ClientHelloError("truncated ClientHello")
        value = int.from_bytes(self.data[self.pos : end], "big")
        self.pos = end
        return value

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _u16_list(data: bytes) -> tuple[int, ...]:
    if len(data) % 2:
        raise ClientHelloError("odd-length list")
    return tuple(struct.unpack(f"!{len(data) // 2}H", data))


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse a ClientHello handshake body (after the 4-byte handshake header)."""
    r = _Reader(body)
    legacy_version = r.uint(2)
    r.take(32)  # random
    r.vector(1)  # session id
    ciphers = _u16_list(r.vector(2))
    r.vector(1)  # compression methods
    extensions: list[int] = []
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    sigalgs: tuple[int, ...] = ()
    versions: tuple[int, ...] = ()
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    if not r.done():
        block = r.vector(2)
        pos, end = 0, len(block)
        while pos < end:  # type, length, data; a _Reader only for the few extensions read
            if pos + 4 > end:
                raise ClientHelloError("truncated ClientHello")
            ext_type, length = _EXT_HEADER.unpack_from(block, pos)
            pos += 4 + length
            if pos > end:
                raise ClientHelloError("truncated ClientHello")
            extensions.append(ext_type)
            if ext_type not in _EXT_READ:
                continue
            data = _Reader(block[pos - length : pos])
            if ext_type == _EXT_GROUPS:
                groups = _u16_list(data.vector(2))
            elif ext_type == _EXT_POINT_FORMATS:
                point_formats = tuple(data.vector(1))
            elif ext_type == _EXT_SIGALGS:
                sigalgs = _u16_list(data.vector(2))
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _u16_list(data.vector(1))
            elif ext_type == _EXT_SERVER_NAME and data.data:
                names = _Reader(data.vector(2))
                while not names.done():
                    name_type, name = names.uint(1), names.vector(2)
                    if name_type == 0:
                        sni = name.decode("ascii", "replace")
            elif ext_type == _EXT_ALPN:
                protocols = _Reader(data.vector(2))
                found = []
                while not protocols.done():
                    found.append(protocols.vector(1).decode("ascii", "replace"))
                alpn = tuple(found)
    return ClientHello(
        legacy_version=legacy_version,
        supported_versions=tuple([v for v in versions if v not in GREASE]),
        ciphers=ciphers,
        extensions=tuple(extensions),
        groups=groups,
        point_formats=point_formats,
        sni=sni,
        alpn=alpn,
        sigalgs=sigalgs,
    )


def parse_sslv2_client_hello(message: bytes) -> ClientHello:
    """Parse an SSLv2-compatible ClientHello message (RFC 5246 E.2), after its 2-byte header.

    Java 6 and IE 6 send their TLS 1.0 hello in this format and OpenSSL accepts it, so it must be
    routed (and refused outside ``tls.legacy_networks``) like any other. It has no extensions;
    its fingerprint is that of the same offer in a TLS record: the version and the TLS suites
    (cipher specs ``00 xx yy``; SSL 2.0's own specs are left out). No JA3 tool defines this case.
    """
    r = _Reader(message)
    if r.uint(1) != CLIENT_HELLO:
        raise ClientHelloError("SSLv2-format message is not a ClientHello")
    version = r.uint(2)
    if version < 0x0300:
        raise ClientHelloError("SSL 2.0 hello")
    spec_length, session_id_length, challenge_length = r.uint(2), r.uint(2), r.uint(2)
    if spec_length % 3:
        raise ClientHelloError("SSLv2 cipher specs not a multiple of 3 bytes")
    specs = r.take(spec_length)
    r.take(session_id_length + challenge_length)
    return ClientHello(
        legacy_version=version,
        supported_versions=(),
        ciphers=tuple(
            [int.from_bytes(specs[i + 1 : i + 3], "big") for i in range(0, spec_length, 3) if specs[i] == 0]
        ),
        extensions=(),
        groups=(),
        point_formats=(),
        sni=None,
        alpn=(),
    )
