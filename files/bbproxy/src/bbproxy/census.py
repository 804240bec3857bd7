"""Who still needs old TLS, and what switching it off would break (issue 20): ``bbproxy census``.

The proxy already writes what a census needs. Each handshake that ends below TLS 1.2 or fails gets
a fingerprint line (``conn=N <what>: versions=... family=NAME``), and every session gets a close
line (``conn=N peer=ADDR:PORT ... tls=VERSION ... close=REASON``). This module reads those lines
from the journal or a log file, joins them by connection, and counts per family, TLS version and
outcome (served, refused by policy, failed). It then answers the question an operator asks before
raising ``min_tls`` or narrowing ``tls.legacy_networks``: who would no longer log in, by family
and by address range.

Sans-IO: :class:`Census` takes lines and gives a report. The proxy keeps no state for it, and the
report has bounded memory whatever the log holds: at most :data:`MAX_PENDING` open connections,
:data:`MAX_CLIENTS` distinct (family, version, address) clients, then ``other``. An attacker can
mint fingerprints, but cannot grow this.

    journalctl -u bbproxy -o short-iso --since "30 days ago" | bbproxy census --min-tls 1.2
    bbproxy census --log /var/log/bbproxy.log --legacy-networks 192.0.2.0/24
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from .hello_message import TLS_1_2, VERSION_NAMES

MAX_PENDING: Final = 65536  # connections seen with a fingerprint line and no close line yet
MAX_CLIENTS: Final = 20000  # distinct (family, version, address) kept; the rest count as "other"
# Version names in order (their wire numbers), and those below TLS 1.2.
_ORDER: Final = {name: number for number, name in VERSION_NAMES.items()}
LEGACY: Final = tuple(name for name, number in _ORDER.items() if number < TLS_1_2)
_UNKNOWN: Final = 0x10000  # a version name not above: sorted last, never 'below min_tls'
OTHER: Final = "other"

# "2026-12-06T18:00:00+0000 host bbproxy[1]: ..." (journalctl -o short-iso) or our own stamp
# "2026-12-06 18:00:00,123 INFO ..."; lines without a time count as "now".
_TIME: Final = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:[,.]\d+)?([+-]\d\d:?\d\d|Z)?")
_WORKER: Final = re.compile(r"\bworker=(\d+) ")
_FINGERPRINT: Final = re.compile(r"\bconn=(\d+) (.+?): versions=(\S+) .* family=(\S+)$")
_CLOSE: Final = re.compile(r"\bconn=(\d+) peer=(\S+) listener=\S+ domain=\S+ tls=(\S+) .* close=(.*)$")


@dataclass(slots=True)
class Tally:
    served: int = 0
    refused: int = 0
    failed: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None

    def add(self, outcome: str, when: dt.datetime) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.first = when if self.first is None else min(self.first, when)
        self.last = when if self.last is None else max(self.last, when)

    @property
    def total(self) -> int:
        return self.served + self.refused + self.failed


@dataclass(frozen=True, slots=True)
class Client:
    family: str
    version: str  # negotiated when served, else the highest offered
    address: str


@dataclass(slots=True)
class Census:
    """Feed log lines; read :meth:`clients` or :func:`report`."""

    since: dt.datetime | None = None
    lines: int = 0
    handshakes: int = 0
    _pending: OrderedDict[tuple[str, str], tuple[str, str, str]] = field(default_factory=OrderedDict)
    _clients: dict[Client, Tally] = field(default_factory=dict)

    def feed(self, line: str, now: dt.datetime) -> None:
        self.lines += 1
        line = line.rstrip("\n")
        when = _timestamp(line) or now
        if self.since is not None and when < self.since:
            return
        worker = _WORKER.search(line)
        scope = worker.group(1) if worker else ""
        if (fp := _FINGERPRINT.search(line)) is not None:
            conn, what, versions, family = fp.groups()
            key = (scope, conn)
            self._pending[key] = (what, versions, family)
            self._pending.move_to_end(key)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        elif (close := _CLOSE.search(line)) is not None:
            conn, peer, tls, _reason = close.groups()
            seen = self._pending.pop((scope, conn), None)
            if seen is not None:
                self._count(*seen, peer, tls, when)

    def _count(self, what: str, versions: str, family: str, peer: str, tls: str, when: dt.datetime) -> None:
        if what.startswith("legacy client "):
            outcome, version = "served", tls
        else:
            outcome = "refused" if "refused" in what else "failed"
            version = max(versions.split(","), key=lambda v: _ORDER.get(v, -1))
        address = _address(peer)
        client = Client(family, version, address)
        if client not in self._clients and len(self._clients) >= MAX_CLIENTS:
            client = Client(OTHER, version, OTHER)
        self._clients.setdefault(client, Tally()).add(outcome, when)
        self.handshakes += 1

    def clients(self) -> dict[Client, Tally]:
        return self._clients


def _timestamp(line: str) -> dt.datetime | None:
    match = _TIME.match(line)
    if match is None:
        return None
    day, clock, zone = match.groups()
    try:
        when = dt.datetime.fromisoformat(f"{day}T{clock}")
    except ValueError:
        return None
    if zone and zone != "Z":
        zone = zone.replace(":", "")
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        return (when - (offset if zone[0] == "+" else -offset)).replace(tzinfo=dt.UTC)
    return when.replace(tzinfo=dt.UTC)  # our own stamps are local time; the journal's -o short-iso has a zone


def _address(peer: str) -> str:
    host = peer[1 : peer.index("]")] if peer.startswith("[") else peer.rsplit(":", 1)[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return OTHER


def network_of(address: str) -> str:
    """The range an address is reported in: /24 for IPv4, /48 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return OTHER
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))


@dataclass(frozen=True, slots=True)
class WhatIf:
    """A policy to compare with: a higher ``min_tls`` and/or a narrower legacy allow-list."""

    min_tls: str | None = None
    legacy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None

    def breaks(self, client: Client) -> bool:
        """Whether a client that was *served* would be refused under this policy."""
        if self.min_tls is not None and _ORDER.get(client.version, _UNKNOWN) < _ORDER[self.min_tls]:
            return True
        if self.legacy_networks is not None and client.version in LEGACY:
            try:
                ip = ipaddress.ip_address(client.address)
            except ValueError:
                return True
            return not any(ip in net for net in self.legacy_networks)
        return False

    def describe(self) -> str:
        parts = []
        if self.min_tls is not None:
            parts.append(f"min_tls = {self.min_tls!r}")
        if self.legacy_networks is not None:
            parts.append("tls.legacy_networks = [" + ", ".join(f"{n}" for n in self.legacy_networks) + "]")
        return " and ".join(parts)


def report(census: Census, days: float | None, what_if: WhatIf | None, now: dt.datetime) -> str:
    clients = census.clients()
    window = f"the last {days:g} days" if days is not None else "the whole log"
    out = [
        f"bbproxy census of {window} ({census.lines} log lines, {census.handshakes} fingerprinted handshakes)"
    ]
    legacy = {c: t for c, t in clients.items() if c.version in LEGACY}
    served = {c: t for c, t in legacy.items() if t.served}
    families = _by_family(served)
    out.append(
        f"clients below TLS 1.2 that logged in: {len({(c.family, c.address) for c in served})} distinct"
        " (family, address)"
        + (": " + ", ".join(f"{len(addrs)} {fam}" for fam, addrs in families) if families else "")
    )
    recent = now - dt.timedelta(days=7)
    if served:
        last = max(t.last for t in served.values() if t.last is not None)
        quiet = not any(t.last is not None and t.last >= recent for t in served.values())
        out.append(
            f"last legacy login: {last:%Y-%m-%d %H:%M} UTC" + (" (none in the last 7 days)" if quiet else "")
        )
    out += [
        "",
        f"{'family':<34} {'version':<8} {'served':>6} {'refused':>7} {'failed':>6} {'addresses':>9}"
        "  last seen",
    ]
    rows: dict[tuple[str, str], tuple[Tally, set[str]]] = {}
    for client, tally in clients.items():
        total, addrs = rows.setdefault((client.family, client.version), (Tally(), set()))
        total.served, total.refused, total.failed = (
            total.served + tally.served, total.refused + tally.refused, total.failed + tally.failed,
        )  # fmt: skip
        total.last = (
            tally.last if total.last is None or (tally.last and tally.last > total.last) else total.last
        )
        addrs.add(client.address)
    for (family, version), (total, addrs) in sorted(
        rows.items(), key=lambda r: (_ORDER.get(r[0][1], _UNKNOWN), r[0][0])
    ):
        seen = f"{total.last:%Y-%m-%d}" if total.last else "-"
        out.append(
            f"{family[:34]:<34} {version:<8} {total.served:>6} {total.refused:>7} {total.failed:>6}"
            f" {len(addrs):>9}  {seen}"
        )
    if what_if is not None and (what_if.min_tls or what_if.legacy_networks is not None):
        out += ["", f"What if {what_if.describe()}:"]
        broken = {c: t for c, t in clients.items() if t.served and what_if.breaks(c)}
        if not broken:
            out.append("  nobody who logged in would be refused.")
        else:
            logins = sum(t.served for t in broken.values())
            out.append(
                f"  {len({(c.family, c.address) for c in broken})} clients ({logins} logins)"
                " would no longer log in:"
            )
            for family, addrs in _by_family(broken):
                ranges: dict[str, int] = {}
                for address in addrs:
                    ranges[network_of(address)] = ranges.get(network_of(address), 0) + 1
                where = ", ".join(f"{net}: {n}" for net, n in sorted(ranges.items(), key=lambda r: -r[1])[:5])
                out.append(f"  {family:<34} {len(addrs)} address(es)  ({where})")
    return "\n".join(out) + "\n"


def _by_family(clients: dict[Client, Tally]) -> list[tuple[str, set[str]]]:
    families: dict[str, set[str]] = {}
    for client in clients:
        families.setdefault(client.family, set()).add(client.address)
    return sorted(families.items(), key=lambda f: (-len(f[1]), f[0]))


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bbproxy census",
        description="Who still uses TLS below 1.2, from bbproxy's log lines, and what a stricter "
        "policy would break. Reads the journal or a log file (docs/census.md).",
    )
    parser.add_argument("--log", type=Path, action="append", help="a log file (default: standard input)")
    parser.add_argument(
        "--days", type=float, default=30, help="only lines of the last DAYS days (30; 0: all)"
    )
    parser.add_argument("--min-tls", choices=("1.1", "1.2", "1.3"), help="what if min_tls were this")
    parser.add_argument("--legacy-networks", metavar="CIDR,...", help="what if tls.legacy_networks were this")
    args = parser.parse_args(argv)
    now = dt.datetime.now(dt.UTC)
    try:
        networks = (
            tuple(
                ipaddress.ip_network(n.strip(), strict=False)
                for n in args.legacy_networks.split(",")
                if n.strip()
            )
            if args.legacy_networks is not None
            else None
        )
    except ValueError as exc:
        print(f"bbproxy census: --legacy-networks: {exc}", file=sys.stderr)
        return 2
    census = Census(since=now - dt.timedelta(days=args.days) if args.days else None)
    try:
        for line in _lines(args.log, stdin or sys.stdin):
            census.feed(line, now)
    except OSError as exc:
        print(f"bbproxy census: {exc}", file=sys.stderr)
        return 2
    min_tls = {"1.1": "TLSv1.1", "1.2": "TLSv1.2", "1.3": "TLSv1.3"}.get(args.min_tls or "")
    sys.stdout.write(report(census, args.days or None, WhatIf(min_tls, networks), now))
    return 0


def _lines(paths: list[Path] | None, stdin: TextIO) -> Iterable[str]:
    if not paths:
        yield from stdin
        return
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as fh:
            yield from fh
