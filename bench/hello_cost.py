"""What reading a fragmented ClientHello costs the proxy (issue 15, item 2).

A hello may be cut into as many TLS records as its bytes allow. The proxy reassembles it itself to
route it (clienthello.py), so that work must grow with the bytes, not with their square: before
this was fixed, one STARTTLS session sending a 16 KiB hello as 2 700 one-byte records cost the proxy
0.86 s of CPU. This script measures the proxy's own CPU (utime + stime of its process, from
/proc/PID/stat) per full TLS 1.0 handshake for the same client hello sent

  * in one record (the baseline: what every real client does),
  * as one-byte records, all in one write, and
  * as one-byte records dripped in small writes (many reads on the proxy's side),

for a short hello (~0.1 KiB) and a long one (~16 KiB, padded with ALPN names nobody serves),
and prints each against the baseline of the same run. With ``--compare-rev REV`` it also measures
the proxy's source at that git revision (e.g. the parent of the fix), in the same run.

The target: any hello of at most 16 KiB, however fragmented, costs at most 5 ms of proxy CPU
(its whole handshake included). Loopback only; every loop is bounded by --sessions and a deadline.

    .venv/bin/python bench/hello_cost.py [--sessions 30] [--compare-rev 95c7e29] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import _path
from tests.helpers import as_records, handshake_message
from tests.kit import (
    DOMAIN,
    LOOPBACK,
    STARTTLS,
    client_context,
    free_port,
    make_certs,
    padded_alpn,
    recv_until,
    stream_header,
)

REPO = _path.PACKAGE_DIR.parents[1]
PACKAGE = _path.PACKAGE_DIR
HEADER = stream_header(DOMAIN)
# The one suite of the load generator's TLS 1.0 client (loadgen.BB10_SUITES) the EC certificate serves.
SUITE = "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"
TARGET_MS = 5.0
TICK = os.sysconf("SC_CLK_TCK")
DEADLINE = 600.0  # the whole run


@dataclass(frozen=True)
class Variant:
    name: str
    padding: int  # ALPN names of 250 bytes nobody serves: 0 ~0.1 KiB, 1 ~0.4 KiB, 10 ~2.7 KiB, 63 ~16 KiB
    record_size: int  # 0: one record
    write_size: int  # 0: one write


VARIANTS = (
    Variant("0.1 KiB, 1 record", 0, 0, 0),
    Variant("0.1 KiB, 1-byte records, 1 write", 0, 1, 0),
    Variant("0.4 KiB, 1-byte records, 1 record a write", 1, 1, 6),
    Variant("2.7 KiB, 1-byte records, 1 record a write", 10, 1, 6),
    Variant("16 KiB, 1 record", 63, 0, 0),
    Variant("16 KiB, 1-byte records, 1 write", 63, 1, 0),
    Variant("16 KiB, 1-byte records, 600-byte writes", 63, 1, 600),
    Variant("16 KiB, 6-byte records, 600-byte writes", 63, 6, 600),
)
# The issue's measurement: a hello as ~2 700 one-byte records (16 KiB on the wire), a record a read.
ISSUE_CASE = "2.7 KiB, 1-byte records, 1 record a write"


def tls10_client(padding: int) -> ssl.SSLContext:
    """A TLS 1.0 client offering SUITE, padded with ``padding`` ALPN names nobody serves."""
    return client_context("1.0", None, ciphers=SUITE, alpn=padded_alpn(padding) if padding else ())


@contextlib.contextmanager
def backend() -> Iterator[int]:
    """A loopback listener that accepts and holds (the proxy connects after TLS)."""
    server = socket.create_server((LOOPBACK, 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conns.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in conns:
            conn.close()
        server.close()


@contextlib.contextmanager
def proxy(source: Path, cert: Path, key: Path, backend_port: int, log: Path) -> Iterator[tuple[int, int]]:
    """``python -m bbproxy`` from ``source`` (this tree, or an older revision's export: hence not
    the integration tests' ProxyStarter, which runs this tree's)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(source), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "bbproxy", "--listen", f"127.0.0.1:{port}", "--backend",
            f"127.0.0.1:{backend_port}", "--cert", str(cert), "--key", str(key), "--domain", DOMAIN,
            "--loop", "asyncio"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while b"ready" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proxy did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def expect(sock: socket.socket, needle: bytes) -> None:
    data = recv_until(sock, needle, timeout=30)
    if needle not in data:
        raise ConnectionError(f"no {needle!r}: {data[-200:]!r}")


def one_session(port: int, variant: Variant, ctx: ssl.SSLContext) -> str:
    """One STARTTLS session that sends its hello as the variant says: the TLS version it got, or
    ``refused (ALERT)`` when the proxy answered the hello with an alert."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(HEADER)
        expect(sock, b"</stream:features>")
        sock.sendall(STARTTLS)
        expect(sock, b"<proceed")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = ctx.wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        hello = outgoing.read()
        if variant.record_size:
            hello = as_records(handshake_message(hello), variant.record_size)
        step = variant.write_size or len(hello)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # refused part-way
            for i in range(0, len(hello), step):
                sock.sendall(hello[i : i + step])
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the proxy closed during the handshake")
            incoming.write(data)
            try:
                client.do_handshake()
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                continue
            except ssl.SSLError as exc:
                return f"refused ({exc.reason})"
            sock.sendall(outgoing.read())
            return client.version() or "?"


def measure(source: Path, label: str, sessions: int, work: Path, started: float) -> list[dict[str, object]]:
    pair = make_certs(work).ecdsa
    rows = []
    with (
        backend() as backend_port,
        proxy(source, pair.cert, pair.key, backend_port, work / f"{label}.log") as (pid, port),
    ):
        for variant in VARIANTS:
            ctx = tls10_client(variant.padding)
            outcome = one_session(port, variant, ctx)  # warm-up, and what the variant gets
            time.sleep(0.2)
            before = cpu_seconds(pid)
            done = 0
            for _ in range(sessions):
                if time.monotonic() - started > DEADLINE:
                    break
                one_session(port, variant, ctx)
                done += 1
            time.sleep(0.3)  # let the proxy finish closing the last session
            spent = cpu_seconds(pid) - before
            rows.append({"source": label, "variant": variant.name, "sessions": done, "outcome": outcome,
                         "proxy_cpu_ms_per_session": 1000 * spent / max(done, 1)})  # fmt: skip
            ms = rows[-1]["proxy_cpu_ms_per_session"]
            print(f"  {label:>10}  {variant.name:<42} {ms:8.2f} ms  {outcome}", flush=True)
    return rows


def export_rev(rev: str, directory: Path) -> Path:
    directory.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "files/bbproxy/src"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True, timeout=60)
    return directory / "files" / "bbproxy" / "src"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=30, help="handshakes per variant (default 30)")
    parser.add_argument("--compare-rev", help="also measure the proxy source at this git revision")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bbproxy-hello-cost-") as tmp:
        work = Path(tmp)
        print(f"proxy CPU per full TLS 1.0 STARTTLS handshake, {args.sessions} sessions per row")
        rows += measure(PACKAGE / "src", "this tree", args.sessions, work, started)
        if args.compare_rev:
            old = export_rev(args.compare_rev, work / "old")
            rows += measure(old, args.compare_rev[:10], max(1, args.sessions // 3), work, started)
    base = {r["variant"]: r for r in rows if r["source"] == "this tree"}
    one_record = {True: base["16 KiB, 1 record"], False: base["0.1 KiB, 1 record"]}
    head = f"\n{'variant':<44} {'this tree':>9}  x 1-record  {'outcome':<34}"
    print(head + (f"  at {args.compare_rev[:10]}" if args.compare_rev else ""))
    worst = 0.0
    for variant in VARIANTS:
        ms = float(base[variant.name]["proxy_cpu_ms_per_session"])  # type: ignore[arg-type]
        ref = float(one_record[variant.padding > 10]["proxy_cpu_ms_per_session"])  # type: ignore[arg-type]
        worst = max(worst, ms)
        old = [r for r in rows if r["source"] != "this tree" and r["variant"] == variant.name]
        old_text = f"{float(old[0]['proxy_cpu_ms_per_session']):9.1f} ms" if old else ""  # type: ignore[arg-type]
        outcome = str(base[variant.name]["outcome"])
        print(f"{variant.name:<44} {ms:6.2f} ms  {ms / ref if ref else 0:9.2f}x  {outcome:<34}  {old_text}")
    met = worst <= TARGET_MS
    print(
        f"\nworst case {worst:.2f} ms per handshake; target <= {TARGET_MS} ms: {'met' if met else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "target_ms": TARGET_MS, "worst_ms": worst}, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
