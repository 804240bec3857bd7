"""bbproxy census (issue 20): counting from the proxy's own log lines, bounded, and the dry run."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress

import pytest

from bbproxy import census
from bbproxy.census import Census, WhatIf, report

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
FP = "versions={v} ciphers=c013,c014 sni=example.test alpn=- groups=0017 ja3={ja3} ja4={ja4} family={family}"


def lines_of(
    conn: int, what: str, family: str, peer: str, tls: str, versions: str = "TLSv1", worker: str = ""
) -> list[str]:
    """The two lines one session leaves, exactly as session.py formats them (stamped, as off systemd)."""
    stamp = "2026-12-05 10:00:00,000 INFO " + worker
    fp = FP.format(v=versions, ja3="0" * 32, ja4="t10d0205h1_000000000000_000000000000", family=family)
    close = f"peer={peer} listener=starttls domain=example.test tls={tls} cipher=- up=0 down=0"
    close += " duration=0.1s close=x"
    return [f"{stamp}conn={conn} {what}: {fp}", f"{stamp}conn={conn} {close}"]


def run(lines: list[str], what_if: WhatIf | None = None, days: float | None = 30) -> str:
    c = Census(since=NOW - dt.timedelta(days=days) if days else None)
    for line in lines:
        c.feed(line, NOW)
    return report(c, days, what_if, NOW)


def test_served_refused_and_failed_by_family() -> None:
    text = run(
        lines_of(1, "legacy client TLSv1", "java-7u25", "192.0.2.10:4000", "TLSv1")
        + lines_of(2, "legacy client TLSv1", "java-7u25", "192.0.2.11:4000", "TLSv1")
        + lines_of(
            3,
            "legacy TLS refused: address not in tls.legacy_networks",
            "android-4.0.4",
            "[2001:db8::1]:5",
            "-",
        )
        + lines_of(4, "handshake abandoned (client-eof)", "bb10-native", "198.51.100.7:1", "-")
    )
    assert "clients below TLS 1.2 that logged in: 2 distinct (family, address): 2 java-7u25" in text
    row = next(line for line in text.splitlines() if line.startswith("java-7u25"))
    assert row.split()[1:6] == ["TLSv1", "2", "0", "0", "2"]
    assert next(line for line in text.splitlines() if line.startswith("android-4.0.4")).split()[2:5] == [
        "0",
        "1",
        "0",
    ]
    assert next(line for line in text.splitlines() if line.startswith("bb10-native")).split()[2:5] == [
        "0",
        "0",
        "1",
    ]


def test_the_dry_run_names_who_would_break_by_range() -> None:
    logs = (
        lines_of(1, "legacy client TLSv1", "java-7u25", "192.0.2.10:4000", "TLSv1")
        + lines_of(2, "legacy client TLSv1.1", "android-4.4.2", "203.0.113.5:1", "TLSv1.1", "TLSv1.1,TLSv1")
        + lines_of(3, "handshake failed (eof)", "chrome-101", "203.0.113.9:1", "-", "TLSv1.3,TLSv1.2")
    )
    text = run(logs, WhatIf(min_tls="TLSv1.2"))
    assert "What if min_tls = 'TLSv1.2':" in text and "2 clients (2 logins) would no longer log in:" in text
    assert "java-7u25" in text.split("What if")[1] and "192.0.2.0/24: 1" in text
    narrowed = WhatIf(legacy_networks=(ipaddress.ip_network("192.0.2.0/24"),))
    text = run(logs, narrowed)
    after = text.split("What if")[1]
    assert "1 clients (1 logins)" in after and "android-4.4.2" in after and "java-7u25" not in after
    assert "nobody who logged in would be refused" in run(
        logs, WhatIf(legacy_networks=(ipaddress.ip_network("0.0.0.0/0"),))
    )


def test_workers_have_their_own_connection_numbers() -> None:
    text = run(
        lines_of(7, "legacy client TLSv1", "java-7u25", "192.0.2.1:1", "TLSv1", worker="worker=1 ")[:1]
        + lines_of(7, "handshake failed (eof)", "bb10-native", "192.0.2.2:1", "-", worker="worker=2 ")
        + lines_of(7, "legacy client TLSv1", "java-7u25", "192.0.2.1:1", "TLSv1", worker="worker=1 ")[1:]
    )
    assert next(line for line in text.splitlines() if line.startswith("java-7u25")).split()[2] == "1"
    assert next(line for line in text.splitlines() if line.startswith("bb10-native")).split()[4] == "1"


def test_the_window_and_journal_timestamps() -> None:
    old = [line.replace("2026-12-05 10:00:00,000", "2026-10-01T10:00:00+0200 host bbproxy[9]:") for line in
           lines_of(1, "legacy client TLSv1", "java-7u25", "192.0.2.1:1", "TLSv1")]  # fmt: skip
    assert "java-7u25" not in run(old, days=30)
    assert "java-7u25" in run(old, days=None)


def test_memory_is_bounded_whatever_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attacker minting fingerprints (and addresses) fills at most the bounds, then 'other'."""
    monkeypatch.setattr(census, "MAX_CLIENTS", 50)
    monkeypatch.setattr(census, "MAX_PENDING", 20)
    c = Census()
    for i in range(2000):
        for line in lines_of(
            i, "handshake failed (eof)", f"unknown:t10d{i:04d}", f"10.0.{i // 250}.{i % 250}:1", "-"
        ):
            c.feed(line, NOW)
    for i in range(100):  # fingerprint lines whose close lines never come
        c.feed(lines_of(10_000 + i, "handshake failed (eof)", "x", "10.9.9.9:1", "-")[0], NOW)
    assert len(c.clients()) <= 51 and len(c._pending) <= 20
    assert sum(t.total for t in c.clients().values()) == 2000


def test_main_reads_stdin_and_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    logs = "\n".join(lines_of(1, "legacy client TLSv1", "java-7u25", "192.0.2.10:4000", "TLSv1")) + "\n"
    assert census.main(["--days", "0", "--min-tls", "1.2"], stdin=io.StringIO(logs)) == 0
    assert "java-7u25" in capsys.readouterr().out
    assert census.main(["--legacy-networks", "not-a-network"], stdin=io.StringIO("")) == 2
    assert "--legacy-networks" in capsys.readouterr().err
