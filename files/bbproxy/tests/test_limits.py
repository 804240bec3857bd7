"""Per-IP limits with a fake clock: concurrency, rate, exemptions, bounded memory."""

from __future__ import annotations

import ipaddress

from bbproxy.limits import PerIpLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_off_by_default() -> None:
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
