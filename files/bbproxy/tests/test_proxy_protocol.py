"""PROXY protocol headers: exact bytes from the spec, round trips, chunking, malformed input.

The expected bytes below are written out by hand from HAProxy's proxy-protocol.txt (field
by field, with the arithmetic in the comments), not produced by the encoder under test.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbproxy.proxy_protocol import (
    V1_MAX_BYTES,
    V1_PREFIX,
    V2_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    decode,
    encode,
    encode_v1,
    encode_v2,
)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")  # "\r\n\r\n\0\r\nQUIT\n", spec §2.2

# 203.0.113.5:50122 -> 127.0.0.1:5222
# 203.0.113.5 = cb.00.71.05; 127.0.0.1 = 7f.00.00.01; 50122 = 0xc3ca (195*256+202); 5222 = 0x1466 (20*256+102)
V4_SRC, V4_DST = ("203.0.113.5", 50122), ("127.0.0.1", 5222)
V4_V1 = b"PROXY TCP4 203.0.113.5 127.0.0.1 50122 5222\r\n"
V4_V2 = SIG + bytes.fromhex("2111000ccb0071057f000001c3ca1466")

# [2001:db8::1]:40000 -> [2001:db8::2]:5222; 40000 = 0x9c40 (156*256+64); address block 2*16+2*2 = 36 = 0x24
V6_SRC, V6_DST = ("2001:db8::1", 40000), ("2001:db8::2", 5222)
V6_V1 = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 5222\r\n"
V6_V2 = SIG + bytes.fromhex(
    "2121002420010db800000000000000000000000120010db80000000000000000000000029c401466"
)

# 203.0.113.5:50122 -> [::1]:5222: the IPv4 side becomes ::ffff:203.0.113.5 (::ffff:cb00:7105)
MIXED_SRC, MIXED_DST = ("203.0.113.5", 50122), ("::1", 5222)
MIXED_V1 = b"PROXY TCP6 ::ffff:203.0.113.5 ::1 50122 5222\r\n"
MIXED_V2 = SIG + bytes.fromhex(
    "2121002400000000000000000000ffffcb00710500000000000000000000000000000001c3ca1466"
)

# What HAProxy's send-proxy-v2 writes for 172.19.0.1:42578 -> 172.19.0.3:80 (42578 = 0xa652, 80 = 0x50).
HAPROXY_V2 = SIG + bytes.fromhex("2111000cac130001ac130003a6520050")

V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V2_LOCAL = SIG + bytes.fromhex("20000000")  # version 2, LOCAL; UNSPEC; no address block

VECTORS = [
    pytest.param(V4_SRC, V4_DST, V4_V1, V4_V2, "TCP4", V4_SRC, V4_DST, id="ipv4"),
    pytest.param(V6_SRC, V6_DST, V6_V1, V6_V2, "TCP6", V6_SRC, V6_DST, id="ipv6"),
    pytest.param(
        MIXED_SRC,
        MIXED_DST,
        MIXED_V1,
        MIXED_V2,
        "TCP6",
        ("::ffff:203.0.113.5", 50122),
        MIXED_DST,
        id="mixed",
    ),
    pytest.param(
        ("172.19.0.1", 42578),
        ("172.19.0.3", 80),
        b"PROXY TCP4 172.19.0.1 172.19.0.3 42578 80\r\n",
        HAPROXY_V2,
        "TCP4",
        ("172.19.0.1", 42578),
        ("172.19.0.3", 80),
        id="haproxy",
    ),
]


def test_signature_constant_matches_spec() -> None:
    assert V2_SIGNATURE == SIG
    assert V1_PREFIX == b"PROXY "


@pytest.mark.parametrize(("src", "dst", "v1", "v2", "family", "dec_src", "dec_dst"), VECTORS)
def test_known_vectors(
    src: tuple[str, int],
    dst: tuple[str, int],
    v1: bytes,
    v2: bytes,
    family: str,
    dec_src: tuple[str, int],
    dec_dst: tuple[str, int],
) -> None:
    assert encode_v1(src, dst) == v1
    assert encode_v2(src, dst) == v2
    assert encode("v1", src, dst) == v1
    assert encode("v2", src, dst) == v2
    assert decode(v1) == (ProxyHeader(1, "PROXY", family, dec_src, dec_dst), len(v1))  # type: ignore[arg-type]
    assert decode(v2) == (ProxyHeader(2, "PROXY", family, dec_src, dec_dst), len(v2))  # type: ignore[arg-type]


def test_encode_rejects_unknown_version() -> None:
    with pytest.raises(ValueError, match="v3"):
        encode("v3", V4_SRC, V4_DST)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (("localhost", 1234), V4_DST),  # a host name, not an address
        (V4_SRC, ("/run/prosody.sock", 0)),
        (("203.0.113.5", 65536), V4_DST),  # port out of range
        (("203.0.113.5", -1), V4_DST),
        (("203.0.113.5", True), V4_DST),  # a bool is not a port
        (("203.0.113.5", "80"), V4_DST),
        (("", 0), V4_DST),
        ((), V4_DST),
    ],
)
def test_unparsable_addresses_give_unknown(src: tuple[str, int], dst: tuple[str, int]) -> None:
    assert encode_v1(src, dst) == V1_UNKNOWN
    assert encode_v2(src, dst) == V2_LOCAL
    assert decode(V1_UNKNOWN) == (ProxyHeader(1, "PROXY", "UNKNOWN", None, None), 15)
    assert decode(V2_LOCAL) == (ProxyHeader(2, "LOCAL", "UNKNOWN", None, None), 16)


def test_ipv4_mapped_pair_is_tcp4() -> None:
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; Prosody should log a.b.c.d.
    src, dst = ("::ffff:203.0.113.5", 50122), ("::ffff:127.0.0.1", 5222)
    assert encode_v1(src, dst) == V4_V1
    assert encode_v2(src, dst) == V4_V2


def test_ipv6_is_written_canonically_and_without_zone() -> None:
    src, dst = ("2001:DB8:0:0:0:0:0:1", 40000), ("2001:db8::2", 5222)
    assert encode_v1(src, dst) == V6_V1
    assert encode_v1(("fe80::1%eth0", 1), ("fe80::2", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
    # A full IPv6 sockname (host, port, flowinfo, scope_id) works too.
    assert encode_v1(("2001:db8::1", 40000, 0, 0), V6_DST) == V6_V1  # type: ignore[arg-type]


def test_longest_v1_lines() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = encode_v1((full, 65535), (full, 65535))
    assert len(line) == 104  # the spec's TCP6 worst case
    assert decode(line)[1] == 104
    worst = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(worst) == V1_MAX_BYTES == 107  # the spec's overall worst case
    assert decode(worst) == (ProxyHeader(1, "PROXY", "UNKNOWN", None, None), 107)
    too_long = f"PROXY UNKNOWN {full} {full} 65535 655350\r\n".encode()
    with pytest.raises(ProxyProtocolError, match="CRLF"):
        decode(too_long)


def test_a_final_cr_waits_for_its_lf() -> None:
    assert decode(V4_V1[:-1]) == (None, 0)
    with pytest.raises(ProxyProtocolError):
        decode(V4_V1[:-1] + b"x")


@pytest.mark.parametrize("header", [V4_V1, V6_V1, MIXED_V1, V4_V2, V6_V2, MIXED_V2, V1_UNKNOWN, V2_LOCAL])
def test_decode_needs_the_whole_header_and_leaves_the_rest(header: bytes) -> None:
    for cut in range(len(header)):
        assert decode(header[:cut]) == (None, 0), cut
    expected, used = decode(header)
    assert expected is not None and used == len(header)
    stream = header + b"<stream:stream>" + V4_V1  # what follows belongs to the relayed stream
    assert decode(stream) == (expected, len(header))
    assert decode(bytearray(stream)) == (expected, len(header))


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    line = b"PROXY UNKNOWN 203.0.113.5 whatever 1 2\r\n"
    assert decode(line) == (ProxyHeader(1, "PROXY", "UNKNOWN", None, None), len(line))


def test_v2_skips_tlvs() -> None:
    # TCP4 block (12 bytes) + a PP2_TYPE_NOOP TLV: type 0x04, length 0x0004, 4 bytes -> 19 = 0x13
    header = SIG + bytes.fromhex("21110013cb0071057f000001c3ca146604000400000000")
    assert decode(header + b"data") == (ProxyHeader(2, "PROXY", "TCP4", V4_SRC, V4_DST), 16 + 19)


@pytest.mark.parametrize(
    ("fam_and_block", "family"),
    [
        ("12000ccb0071057f000001c3ca1466", "UNKNOWN"),  # UDP over IPv4
        ("220024" + "00" * 36, "UNKNOWN"),  # UDP over IPv6
        ("3100d8" + "00" * 216, "UNKNOWN"),  # UNIX stream, 2*108 = 216 = 0xd8
        ("000000", "UNKNOWN"),  # UNSPEC
        ("100000", "UNKNOWN"),  # AF_INET with UNSPEC transport
    ],
)
def test_v2_other_families_fall_back_to_unknown(fam_and_block: str, family: str) -> None:
    header = SIG + bytes.fromhex("21" + fam_and_block)
    assert decode(header) == (ProxyHeader(2, "PROXY", family, None, None), len(header))  # type: ignore[arg-type]


def test_v2_local_ignores_the_address_block() -> None:
    header = SIG + bytes.fromhex("2011000ccb0071057f000001c3ca1466")
    assert decode(header) == (ProxyHeader(2, "LOCAL", "UNKNOWN", None, None), 28)


@pytest.mark.parametrize(
    "data",
    [
        # not a PROXY header at all: fail on the first byte that differs
        b"G",
        b"GET / HTTP/1.1\r\n",
        b"<stream:stream>",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        SIG[:7] + b"X",
        # v1
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",  # a lone CR inside
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # heading zero in an address
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",  # heading zero in a port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # a non-ASCII digit
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # the family decides the format
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n",
        b"PROXY TCP4 1.2.3.4\x00",  # fails before the line is complete
        b"PROXY " + b"A" * 101,  # 107 bytes and no CRLF
        # v2
        SIG + bytes.fromhex("1111000c") + bytes(12),  # version 1 in the binary format
        SIG + bytes.fromhex("3111000c") + bytes(12),  # version 3
        SIG + bytes.fromhex("2211000c") + bytes(12),  # command 2
        SIG + bytes.fromhex("2f11000c") + bytes(12),
        SIG + bytes.fromhex("2141000c") + bytes(12),  # family 4
        SIG + bytes.fromhex("2113000c") + bytes(12),  # transport 3
        SIG + bytes.fromhex("21110008") + bytes(8),  # TCP4 needs 12 address bytes
        SIG + bytes.fromhex("2121000c") + bytes(12),  # TCP6 needs 36
        SIG + bytes.fromhex("2111ffff"),  # far too long: fails before the block arrives
        SIG + bytes.fromhex("2111") + (V2_MAX_BYTES - 16 + 1).to_bytes(2, "big"),
    ],
)
def test_malformed_input_raises(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        decode(data)


def test_v2_largest_accepted_header() -> None:
    length = V2_MAX_BYTES - 16
    header = SIG + bytes.fromhex("2100") + length.to_bytes(2, "big") + bytes(length)
    assert decode(header) == (ProxyHeader(2, "PROXY", "UNKNOWN", None, None), V2_MAX_BYTES)


def test_decode_looks_at_a_bounded_prefix() -> None:
    # A huge buffer costs no more than its first V2_MAX_BYTES bytes.
    assert decode(V4_V2 + bytes(10_000_000)) == (ProxyHeader(2, "PROXY", "TCP4", V4_SRC, V4_DST), 28)


# -- properties ---------------------------------------------------------------------------

ips = st.ip_addresses()
ports = st.integers(min_value=0, max_value=65535)


def expected_pair(
    src: ipaddress.IPv4Address | ipaddress.IPv6Address, dst: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> tuple[str, str, str]:
    """(family, src text, dst text) the spec wants, by the rules in the module docstring."""

    def unmapped(
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    s, d = unmapped(src), unmapped(dst)
    if s.version == d.version == 4:
        return "TCP4", str(s), str(d)
    texts = [f"::ffff:{ip}" if ip.version == 4 else str(ip) for ip in (s, d)]
    return "TCP6", texts[0], texts[1]


@settings(max_examples=300)
@given(src_ip=ips, dst_ip=ips, sport=ports, dport=ports, version=st.sampled_from(["v1", "v2"]))
def test_round_trip(
    src_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    dst_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int,
    dport: int,
    version: str,
) -> None:
    header = encode(version, (str(src_ip), sport), (str(dst_ip), dport))
    assert len(header) <= (V1_MAX_BYTES if version == "v1" else V2_MAX_BYTES)
    family, src_text, dst_text = expected_pair(src_ip, dst_ip)
    decoded, used = decode(header + b"trailing")
    assert used == len(header)
    assert decoded == ProxyHeader(
        1 if version == "v1" else 2,
        "PROXY",
        family,  # type: ignore[arg-type]
        (src_text, sport),
        (dst_text, dport),
    )


def check_only_protocol_errors(data: bytes) -> None:
    try:
        header, used = decode(data)
    except ProxyProtocolError:
        return
    if header is None:
        assert used == 0
    else:
        assert 0 < used <= min(len(data), V2_MAX_BYTES)


@settings(max_examples=1000)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    check_only_protocol_errors(data)


@settings(max_examples=1000)
@given(
    prefix=st.sampled_from(
        [
            V1_PREFIX,
            V1_PREFIX + b"TCP4 ",
            V1_PREFIX + b"TCP6 ",
            V1_PREFIX + b"UNKNOWN",
            SIG + b"\x21",
            SIG + b"\x20",
        ]
    ),
    rest=st.binary(max_size=600),
)
def test_random_bytes_behind_a_valid_prefix(prefix: bytes, rest: bytes) -> None:
    check_only_protocol_errors(prefix + rest)


@settings(max_examples=500)
@given(
    prefix=st.sampled_from([V1_PREFIX + b"TCP4 ", V1_PREFIX + b"TCP6 "]),
    fields=st.lists(st.text(alphabet="0123456789abcdefABCDEF:.% +-", max_size=40), min_size=0, max_size=6),
)
def test_random_v1_fields(prefix: bytes, fields: list[str]) -> None:
    check_only_protocol_errors(prefix + " ".join(fields).encode() + b"\r\n")
