"""The PROXY protocol (HAProxy's proxy-protocol.txt, v1 text and v2 binary), sans-IO.

The proxy opens a new TCP connection to Prosody for every client, so without help Prosody
sees every user as 127.0.0.1: its logs, rate limits and bans stop working per client. With
``send_proxy_protocol`` the proxy writes one header in front of the relayed bytes naming the
client's address and port (``src``) and the address it connected to (``dst``), and Prosody's
mod_net_proxy reads it.

:func:`encode_v1` / :func:`encode_v2` build that header. :func:`decode` parses either
version from the start of a byte buffer: the tests' backends use it to check what the proxy
sent, and an inbound PROXY listener could use it later. No sockets, no asyncio: bytes in,
bytes or a :class:`ProxyHeader` out, for any chunking of the input.

Address rules of the encoders:

* both addresses IPv4 -> ``TCP4``; both IPv6 -> ``TCP6``;
* an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, what a dual-stack socket reports for an
  IPv4 peer) counts as IPv4, so a pair of them is still ``TCP4`` and Prosody logs the
  plain IPv4 address;
* if the families differ, the IPv4 one is written IPv4-mapped and the header is ``TCP6``
  (the spec has no mixed form);
* anything else (a host name, a UNIX socket path, a port outside 0..65535) cannot be
  described: v1 says ``PROXY UNKNOWN``, v2 sends a LOCAL command with family UNSPEC. In both
  cases the receiver uses the real connection's addresses (what HAProxy sends too).

The decoder is strict, as the spec asks ("any sequence which does not exactly match the
protocol must be discarded"), and bounded: a v1 line has at most 107 bytes with its CRLF, a
v2 header at most :data:`V2_MAX_BYTES`. It never reads past what it needs: the bytes after
the header belong to the relayed stream.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Final, Literal

Address = tuple[str, int]
"""(host, port): a textual IP address as ``getpeername()`` gives it, and a port."""

Command = Literal["PROXY", "LOCAL"]
Family = Literal["TCP4", "TCP6", "UNKNOWN"]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes that start every v2 header (chosen to be invalid in other protocols)."""

V1_PREFIX: Final = b"PROXY "
V1_MAX_BYTES: Final = 107
"""The longest v1 line the spec allows, CRLF included (``PROXY UNKNOWN`` + two IPv6 + ports)."""

V2_MAX_BYTES: Final = 536
"""16-byte fixed part + address block + TLVs that this decoder accepts.

The spec bounds nothing but the 16-bit length; 536 leaves room for the largest address block
(216 bytes, AF_UNIX) plus 304 bytes of TLVs, more than any sender we know of uses.
"""

_V2_FIXED: Final = struct.Struct("!12sBBH")  # signature, version/command, family/transport, length
_PORTS: Final = struct.Struct("!HH")
_CMD_LOCAL: Final = 0x0
_CMD_PROXY: Final = 0x1
_FAM_TCP4: Final = 0x11
_FAM_TCP6: Final = 0x21
_FAM_UNSPEC: Final = 0x00
_V2_LOCAL: Final = V2_SIGNATURE + bytes((0x20, _FAM_UNSPEC, 0, 0))
_V1_UNKNOWN: Final = b"PROXY UNKNOWN\r\n"
# Heading zeroes are forbidden ("confusion with octal numbers").
_PORT_RE: Final = re.compile(r"(?:0|[1-9][0-9]{0,4})\Z")
_PRINTABLE_RE: Final = re.compile(rb"[\x20-\x7e]*\Z")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header; the connection must be dropped."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded header.

    ``src``/``dst`` are set only for ``TCP4``/``TCP6`` with the PROXY command; otherwise
    (v1 ``UNKNOWN``, a v2 LOCAL command, or a v2 family other than TCP over IP) they are
    ``None`` and the receiver must use the real connection's addresses. Addresses come back
    in canonical text form (RFC 5952; IPv4-mapped ones as ``::ffff:a.b.c.d``).
    """

    version: Literal[1, 2]
    command: Command
    family: Family
    src: Address | None
    dst: Address | None


# -- encoding -----------------------------------------------------------------------------


def encode_v1(src: Address, dst: Address) -> bytes:
    """The v1 text line, e.g. ``b"PROXY TCP4 203.0.113.5 127.0.0.1 50122 5222\\r\\n"``."""
    pair = _address_pair(src, dst)
    if pair is None:
        return _V1_UNKNOWN
    src_ip, src_port, dst_ip, dst_port = pair
    family = "TCP4" if src_ip.version == 4 else "TCP6"
    return f"PROXY {family} {_text(src_ip)} {_text(dst_ip)} {src_port} {dst_port}\r\n".encode("ascii")


def encode_v2(src: Address, dst: Address) -> bytes:
    """The v2 binary header: PROXY command over TCP/IPv4 (28 bytes) or TCP/IPv6 (52 bytes)."""
    pair = _address_pair(src, dst)
    if pair is None:
        return _V2_LOCAL
    src_ip, src_port, dst_ip, dst_port = pair
    family = _FAM_TCP4 if src_ip.version == 4 else _FAM_TCP6
    block = src_ip.packed + dst_ip.packed + _PORTS.pack(src_port, dst_port)
    return _V2_FIXED.pack(V2_SIGNATURE, 0x20 | _CMD_PROXY, family, len(block)) + block


def encode(version: str, src: Address, dst: Address) -> bytes:
    """``encode_v1`` or ``encode_v2`` by the config's name for them (``"v1"``, ``"v2"``)."""
    if version == "v1":
        return encode_v1(src, dst)
    if version == "v2":
        return encode_v2(src, dst)
    raise ValueError(f"unknown PROXY protocol version {version!r}")


def _address_pair(src: Address, dst: Address) -> tuple[IPAddress, int, IPAddress, int] | None:
    """Both endpoints in one family, or None if either cannot be written in a header."""
    src_ip, dst_ip = _ip(src), _ip(dst)
    if src_ip is None or dst_ip is None:
        return None
    if src_ip.version != dst_ip.version:
        src_ip, dst_ip = _as_v6(src_ip), _as_v6(dst_ip)
    return src_ip, src[1], dst_ip, dst[1]


def _ip(endpoint: Address) -> IPAddress | None:
    try:
        host, port = endpoint[0], endpoint[1]  # an IPv6 sockname's flowinfo/scope id are ignored
    except (TypeError, IndexError, KeyError):
        return None
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        return None
    if not 0 <= port <= 0xFFFF:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id is not None:  # fe80::1%eth0: the zone means nothing to the receiver
            return ipaddress.IPv6Address(ip.packed)
    return ip


def _text(ip: IPAddress) -> str:
    """RFC 5952 text; IPv4-mapped as ``::ffff:a.b.c.d`` (§5), like inet_ntop and HAProxy.

    Python 3.13 prints that form itself, 3.11 prints ``::ffff:cb00:7105``: spelled out here
    so the bytes on the wire do not depend on the interpreter.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _as_v6(ip: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)


# -- decoding -----------------------------------------------------------------------------


def decode(data: bytes | bytearray) -> tuple[ProxyHeader | None, int]:
    """Parse a v1 or v2 header at the start of ``data``.

    Returns ``(header, bytes used)``, or ``(None, 0)`` while the header is incomplete (feed
    the same buffer again with more bytes). Raises :class:`ProxyProtocolError` as soon as
    the bytes cannot become a valid header, and for a header longer than the bounds.
    """
    head = bytes(data[:V2_MAX_BYTES])  # never more work than the largest header
    if not head:
        return None, 0
    n = min(len(head), len(V2_SIGNATURE))
    if head[:n] == V2_SIGNATURE[:n]:
        return _decode_v2(head)
    n = min(len(head), len(V1_PREFIX))
    if head[:n] == V1_PREFIX[:n]:
        return _decode_v1(head)
    raise ProxyProtocolError("not a PROXY protocol header")


def _decode_v2(head: bytes) -> tuple[ProxyHeader | None, int]:
    if len(head) < _V2_FIXED.size:
        return None, 0
    _, ver_cmd, family, length = _V2_FIXED.unpack_from(head)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"PROXY v2: unknown command {command:#x}")
    if family >> 4 > 3 or family & 0x0F > 2:
        raise ProxyProtocolError(f"PROXY v2: unknown address family/protocol {family:#04x}")
    total = _V2_FIXED.size + length
    if total > V2_MAX_BYTES:
        raise ProxyProtocolError(f"PROXY v2: header of {total} bytes is over the {V2_MAX_BYTES} allowed")
    if len(head) < total:
        return None, 0
    if command == _CMD_LOCAL:
        # "The receiver must ... discard the protocol block including the family."
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None), total
    block = head[_V2_FIXED.size : total]
    if family == _FAM_TCP4:
        if length < 12:
            raise ProxyProtocolError(f"PROXY v2: TCP/IPv4 needs 12 address bytes, got {length}")
        src_port, dst_port = _PORTS.unpack_from(block, 8)
        src: Address = (str(ipaddress.IPv4Address(block[0:4])), src_port)
        dst: Address = (str(ipaddress.IPv4Address(block[4:8])), dst_port)
        return ProxyHeader(2, "PROXY", "TCP4", src, dst), total
    if family == _FAM_TCP6:
        if length < 36:
            raise ProxyProtocolError(f"PROXY v2: TCP/IPv6 needs 36 address bytes, got {length}")
        src_port, dst_port = _PORTS.unpack_from(block, 32)
        src = (_text(ipaddress.IPv6Address(block[0:16])), src_port)
        dst = (_text(ipaddress.IPv6Address(block[16:32])), dst_port)
        return ProxyHeader(2, "PROXY", "TCP6", src, dst), total
    # UNSPEC, UDP, UNIX: the spec lets a receiver fall back to the real endpoints.
    return ProxyHeader(2, "PROXY", "UNKNOWN", None, None), total


def _decode_v1(head: bytes) -> tuple[ProxyHeader | None, int]:
    end = head.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        seen = head[:V1_MAX_BYTES]
        # A lone CR or LF, or a control byte, can never become a valid line: fail now.
        if not _PRINTABLE_RE.match(seen[:-1] if seen.endswith(b"\r") else seen):
            raise ProxyProtocolError("PROXY v1: the line has a byte that is not printable ASCII")
        if len(head) >= V1_MAX_BYTES:
            raise ProxyProtocolError(f"PROXY v1: no CRLF in the first {V1_MAX_BYTES} bytes")
        return None, 0
    line = head[:end]
    if not _PRINTABLE_RE.match(line):
        raise ProxyProtocolError("PROXY v1: the line has a byte that is not printable ASCII")
    used = end + 2
    fields = line.decode("ascii").split(" ")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        # "The receiver must ignore anything presented before the CRLF is found."
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None), used
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {protocol[:8]!r}")
    if len(fields) != 6:
        raise ProxyProtocolError("PROXY v1: expected 6 fields separated by single spaces")
    family: Family = "TCP4" if protocol == "TCP4" else "TCP6"
    version = 4 if family == "TCP4" else 6
    src = (_v1_address(fields[2], version), _v1_port(fields[4]))
    dst = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(1, "PROXY", family, src, dst), used


def _v1_address(text: str, version: int) -> str:
    try:
        if "%" in text:  # a zone id (fe80::1%eth0) is not part of the spec's format
            raise ValueError(text)
        ip: IPAddress = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1: {text[:45]!r} is not an IPv{version} address") from None
    return _text(ip)


def _v1_port(text: str) -> int:
    if not _PORT_RE.match(text) or int(text) > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1: {text[:8]!r} is not a port (0-65535, no leading zeroes)")
    return int(text)
