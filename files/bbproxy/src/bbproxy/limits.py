"""Per-source-address limits: concurrent connections and a connect rate.

A refused client is told why with a stream error (server.py/session.py), never dropped
silently: silent drops are what made UFW ``limit`` so hard to diagnose for XMPP.

An IPv4 address is one source; IPv6 sources are counted per network of ``ipv6_prefix`` bits
(default /64): one host gets a /64 (SLAAC, a mobile carrier's PDP context) and can use any of
its 2^64 addresses, so a /128 key would let it take every slot. IPv4-mapped IPv6 counts as IPv4.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Forget buckets idle this long: by then they are full again anyway.
_IDLE_FORGET: Final = 60.0
_PRUNE_EVERY: Final = 1024


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    """Whether ``ip`` (text; IPv4-mapped IPv6 counts as IPv4) is in one of ``networks``."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def covers_everything(networks: Iterable[Network]) -> bool:
    """Whether ``networks`` hold every IPv4 and every IPv6 address (0.0.0.0/0 and ::/0)."""
    return {4, 6} <= {network.version for network in networks if network.prefixlen == 0}


def source_key(ip: str, ipv6_prefix: int = 64) -> str:
    """What the limits count ``ip`` as: itself for IPv4 (also IPv4-mapped IPv6), its network of
    ``ipv6_prefix`` bits for IPv6 (``2001:db8:1:2::/64``); text that is no address, as is."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv4Address):
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


class PerIpLimiter:
    """``admit(ip)`` returns None, or the reason the address is refused; ``release(ip)`` undoes it."""

    __slots__ = (
        "_active",
        "_admits",
        "_buckets",
        "_clock",
        "_exempt",
        "_ipv6_prefix",
        "_max_concurrent",
        "_rate",
    )

    def __init__(
        self,
        max_concurrent: int,
        rate_per_minute: int,
        exempt: Iterable[Network] = (),
        clock: Callable[[], float] = time.monotonic,
        ipv6_prefix: int = 64,
    ) -> None:
        self._max_concurrent = max_concurrent
        self._rate = rate_per_minute
        self._exempt = tuple(exempt)
        self._clock = clock
        self._ipv6_prefix = ipv6_prefix
        self._active: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last refill)
        self._admits = 0

    @property
    def enabled(self) -> bool:
        return self._max_concurrent > 0 or self._rate > 0

    def is_exempt(self, ip: str) -> bool:
        return in_networks(ip, self._exempt)

    def admit(self, ip: str) -> str | None:
        if not self.enabled or self.is_exempt(ip):
            return None
        key = source_key(ip, self._ipv6_prefix)
        if self._max_concurrent and self._active.get(key, 0) >= self._max_concurrent:
            return "per-ip-connections"
        if self._rate and not self._take_token(key):
            return "per-ip-rate"
        if self._max_concurrent:
            self._active[key] = self._active.get(key, 0) + 1
        return None

    def release(self, ip: str) -> None:
        if not self._active:
            return
        ip = source_key(ip, self._ipv6_prefix)
        count = self._active.get(ip)
        if count is None:
            return  # exempt or never admitted
        if count <= 1:
            del self._active[ip]
        else:
            self._active[ip] = count - 1

    def _take_token(self, ip: str) -> bool:
        now = self._clock()
        capacity = float(self._rate)
        tokens, last = self._buckets.get(ip, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * capacity / 60.0)
        allowed = tokens >= 1.0
        self._buckets[ip] = (tokens - 1.0 if allowed else tokens, now)
        self._admits += 1
        if self._admits % _PRUNE_EVERY == 0:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        stale = [ip for ip, (_, last) in self._buckets.items() if now - last > _IDLE_FORGET]
        for ip in stale:
            del self._buckets[ip]

    def tracked(self) -> int:
        """How many addresses are remembered (bounded by pruning; for tests and metrics)."""
        return len(self._buckets) + len(self._active)
