"""Per-IP limits with a fake clock: concurrency, rate, exemptions, IPv6 per /64, bounded memory."""

from __future__ import annotations

import ipaddress

import pytest

from bbproxy.limits import PerIpLimiter, source_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_zero_means_no_limit() -> None:
    limiter = PerIpLimiter(0, 0)
    assert not limiter.enabled
    assert all(limiter.admit("203.0.113.5") is None for _ in range(1000))


def test_concurrent_connections_per_address() -> None:
    limiter = PerIpLimiter(2, 0)
    assert limiter.admit("203.0.113.5") is None
    assert limiter.admit("203.0.113.5") is None
    assert limiter.admit("203.0.113.5") == "per-ip-connections"
    assert limiter.admit("203.0.113.6") is None  # another address is not affected
    limiter.release("203.0.113.5")
    assert limiter.admit("203.0.113.5") is None


def test_rate_refills_over_time() -> None:
    clock = Clock()
    limiter = PerIpLimiter(0, 6, clock=clock)  # 6 per minute: one every 10 s
    assert [limiter.admit("198.51.100.1") for _ in range(7)] == [None] * 6 + ["per-ip-rate"]
    clock.now += 9.0
    assert limiter.admit("198.51.100.1") == "per-ip-rate"
    clock.now += 1.5
    assert limiter.admit("198.51.100.1") is None


def test_exempt_networks_and_mapped_addresses() -> None:
    limiter = PerIpLimiter(1, 1, exempt=[ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")])
    for ip in ("10.1.2.3", "::ffff:10.1.2.3", "::1"):
        assert all(limiter.admit(ip) is None for _ in range(5)), ip
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") == "per-ip-connections"


def test_memory_is_bounded_under_a_spray_of_addresses() -> None:
    clock = Clock()
    limiter = PerIpLimiter(0, 10, clock=clock)
    for i in range(50_000):
        clock.now += 0.01  # 500 s in all, 50k different sources
        limiter.admit(str(ipaddress.IPv4Address(0x0A000000 + i)))
    # Only the last minute's worth of buckets (plus one prune interval) is remembered.
    assert limiter.tracked() <= 6000 + 1024


def ipv6_host(i: int, network: str = "2001:db8:1:2") -> str:
    """The ``i``-th address an IPv6 host picks inside its /64 (privacy addresses: random-looking)."""
    return str(ipaddress.IPv6Address(f"{network}::") + (i * 0x9E3779B97F4A7C15 % 2**64))


def test_ipv6_host_rotating_addresses_in_its_64_is_one_source() -> None:
    clock = Clock()
    limiter = PerIpLimiter(3, 0, clock=clock)
    assert [limiter.admit(ipv6_host(i)) for i in range(4)] == [None, None, None, "per-ip-connections"]
    assert limiter.admit(ipv6_host(0, "2001:db8:1:3")) is None  # the next /64 is another host
    limiter.release(ipv6_host(17))  # any address of the /64 frees its slot
    assert limiter.admit(ipv6_host(99)) is None
    rate = PerIpLimiter(0, 5, clock=clock)
    assert [rate.admit(ipv6_host(i)) for i in range(6)] == [None] * 5 + ["per-ip-rate"]


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        ("198.51.100.7", 64, "198.51.100.7"),
        ("::ffff:198.51.100.7", 64, "198.51.100.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 56, "2001:db8:1::/56"),
        ("2001:db8::1", 128, "2001:db8::1/128"),
        ("not an address", 64, "not an address"),
    ],
)
def test_source_key(ip: str, prefix: int, key: str) -> None:
    assert source_key(ip, prefix) == key
