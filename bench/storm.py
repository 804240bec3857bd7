#!/usr/bin/env python3
"""Reconnect storm (issue 19, item 2), bounded: logged-in TLS 1.0 sessions cut at once, then back.

    python bench/storm.py                  # 1 000 sessions, bbproxy and haproxy, < 5 min
    python bench/storm.py --sessions 500 --out bench/reports

Per path (``bbproxy`` -> Prosody, ``haproxy`` -> the same Prosody; ``prosody-tls`` on request)
and per client behaviour (full handshakes, or resumption by the session each client saved):

1. ``--sessions`` clients log in (STARTTLS or direct TLS, TLS 1.0, SASL, bind: bench/login.py's
   client) and stay logged in;
2. all are cut at once: every client socket is reset (SO_LINGER 0: no close_notify, no
   ``</stream:stream>``), as when a mobile network drops every device;
3. every client reconnects and logs in again at once, ``--concurrency`` in flight, offering its
   saved TLS session when resuming.

Reported: time from the cut until every client is logged in again, failed logins, how many
handshakes resumed, p50 / p99 re-login time, and the CPU per re-login of each process of the
path (from the cut until the CPU settles: the front's share is the handshake, relay and close;
Prosody's the SASL, bind and the end of the old sessions). Servers on CPU 0, the client on
CPU 1, as in bench/login.py. Issue 19 asks for ~4 000 sessions; this machine is shared, so the
default is 1 000 (at most 4 000, and what the fd limit allows).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _path  # noqa: F401  (files/bbproxy on sys.path)
from common import DOMAIN, HERE, BenchError
from login import CONTEXT, LOGIN_TIMEOUT, Path3, run_over_paths, start_client
from peers import Env
from procstat import NoiseMeter
from report import fmt, table
from scenarios import percentile
from tests.torture.xmpp import LoginFailed, XmppSession

PATHS = ("bbproxy", "haproxy", "prosody-tls")
MAX_SESSIONS = 4000
STORM_LIMIT = 120.0  # seconds for the reconnect phase


# -- the client (a process of its own) -----------------------------------------------------------


def client_main() -> int:
    """Reads a JSON config line; logs in ``count`` sessions, prints ``established``; on ``cut``
    resets them all and logs every one in again; prints the result; closes everything."""
    import os

    cfg = json.loads(sys.stdin.readline())
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cfg["cpu"]})
    users = sorted(cfg["users"])

    def new(i: int, tls_session: Any = None) -> XmppSession:
        user = users[i % len(users)]
        return XmppSession(
            cfg["port"], DOMAIN, user, cfg["users"][user], CONTEXT, LOGIN_TIMEOUT,
            mechanism=cfg["mechanism"], direct_tls=cfg["direct_tls"], tls_session=tls_session,
        )  # fmt: skip

    def login(i: int, tls_session: Any = None) -> tuple[XmppSession | None, str | None]:
        session = new(i, tls_session)
        try:
            session.login()
        except LoginFailed as exc:
            return None, exc.stage
        return session, None

    sessions: list[XmppSession | None] = [None] * cfg["count"]
    failures: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=cfg["concurrency"]) as pool:
        for i, (session, failed) in enumerate(pool.map(login, range(cfg["count"]))):
            sessions[i] = session
            if failed:
                failures[failed] += 1
    print(
        json.dumps({"established": sum(s is not None for s in sessions), "failures": dict(failures)}),
        flush=True,
    )
    if sys.stdin.readline().strip() != "cut":
        return 1
    saved = [s.tls_session if s is not None and cfg["resume"] else None for s in sessions]
    cpu0, t0 = time.process_time(), time.monotonic()
    for session in sessions:
        if session is not None:
            session.abort()
    done: list[float] = []
    resumed = 0
    failures = Counter()
    lock = threading.Lock()
    deadline = t0 + cfg["time_limit"]
    again: list[XmppSession | None] = [None] * cfg["count"]

    def relogin(i: int) -> None:
        nonlocal resumed
        if time.monotonic() > deadline:
            with lock:
                failures["not started (time limit)"] += 1
            return
        session, failed = login(i, saved[i])
        with lock:
            if session is None:
                failures[failed or "?"] += 1
            else:
                done.append(time.monotonic() - t0)
                resumed += session.resumed
                again[i] = session

    with ThreadPoolExecutor(max_workers=cfg["concurrency"]) as pool:
        list(pool.map(relogin, range(cfg["count"])))
    result = {
        "ok": len(done), "failures": dict(failures), "resumed": resumed,
        "recovery_s": max(done) if done else None,
        "relogin_ms_p50": percentile([d * 1000 for d in done], 50),
        "relogin_ms_p99": percentile([d * 1000 for d in done], 99),
        "client_cpu_s": time.process_time() - cpu0,
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # the parent has read the servers' CPU: close cleanly
    for session in again:
        if session is not None:
            session.close()
    return 0


# -- the runner ----------------------------------------------------------------------------------


def storm(env: Env, path: Path3, resume: bool, args: argparse.Namespace) -> dict[str, Any]:
    label = f"storm-{path.name}-{'resume' if resume else 'full'}"
    print(f"storm: {label} ...", file=sys.stderr, end=" ", flush=True)
    path.fresh(env, args.mechanism)  # every storm from a fresh Prosody (see login.py)
    cfg = {
        "mechanism": args.mechanism, "count": args.sessions, "concurrency": args.concurrency,
        "resume": resume, "time_limit": STORM_LIMIT,
    }  # fmt: skip
    proc, log, cfg = start_client(env, "storm.py", path, label, cfg)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        proc.stdin.flush()
        established = json.loads(read_line(proc, 300, log))
        if established["failures"]:
            raise BenchError(
                f"{label}: logging in {args.sessions} sessions failed: {established['failures']}"
            )
        before = path.cpu()
        noise = NoiseMeter(env, [*path.pids, proc.pid])  # the client is still running too
        proc.stdin.write(b"cut\n")
        proc.stdin.flush()
        result = json.loads(read_line(proc, STORM_LIMIT + 60, log))
        after = path.cpu()
        other = noise.other_pct()
        proc.stdin.write(b"close\n")
        proc.stdin.flush()
        proc.wait(60)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        raise BenchError(f"{label}: {exc}; see {log}") from exc
    finally:
        env.procs.stop(proc)
    ok = result["ok"]
    cpu = {name: (after[name] - before[name]) * 1000 / ok if ok else None for name in before}
    row = {
        "path": path.name, "resume": resume, "sessions": args.sessions, "concurrency": args.concurrency,
        "ok": ok, "failed": sum(result["failures"].values()), "failures": result["failures"],
        "resumed": result["resumed"], "recovery_s": result["recovery_s"],
        "relogin_ms_p50": result["relogin_ms_p50"], "relogin_ms_p99": result["relogin_ms_p99"],
        "cpu_ms_by_process": cpu,
        "cpu_ms_per_login": sum(v for v in cpu.values() if v is not None) if ok else None,
        "client_cpu_ms_per_login": result["client_cpu_s"] * 1000 / ok if ok else None,
        "other_pct": round(other, 1),
    }  # fmt: skip
    print(
        f"{ok} back in {fmt(row['recovery_s'])} s, {row['failed']} failed, {row['resumed']} resumed; "
        f"CPU ms a login: {', '.join(f'{k} {fmt(v)}' for k, v in cpu.items())} "
        f"(other processes: {row['other_pct']}%)",
        file=sys.stderr,
    )
    return row


def read_line(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> str:
    """One line from the client's stdout, bounded (the client's own work is bounded too)."""
    assert proc.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise BenchError(f"no answer from the storm client within {timeout:.0f}s; see {log}")
    return box[0].decode()


def markdown(report: dict[str, Any]) -> str:
    m, rows = report["machine"], report["results"]
    lines = [
        f"# Reconnect storm, {report['settings']['sessions']} TLS 1.0 sessions ({report['started']})",
        "",
        f"`{report['command']}`; git {report['git'].get('commit', '?')[:10]}"
        f"{' (uncommitted changes in src/ or bench/)' if report['git'].get('proxy_src_dirty') else ''}; "
        f"{m['nproc']} CPUs; Python {m['python']}, {m['python_ssl']}; bbproxy {m['bbproxy']} on "
        f"{report['settings']['loop']}; haproxy {m['peers'].get('haproxy')}, "
        f"Prosody {m['peers'].get('prosody')}; "
        f"{report['settings']['mechanism']}; certificate {report['settings']['cert']}; other processes used "
        f"{report['other_cpu_pct']:.0f} % of the machine.",
        "",
        "Every session logged in, then all reset at once; all log in again, "
        f"{report['settings']['concurrency']} in flight. CPU per re-login from the cut until the servers' "
        "CPU settles (it includes the end of the old sessions).",
        "",
    ]
    lines += table(
        ["path", "handshakes", "back", "failed", "resumed", "recovery s", "p50 ms", "p99 ms",
         "CPU ms/login", "by process", "other %"],
        [[r["path"], "resumed" if r["resume"] else "full", r["ok"], r["failed"], r["resumed"],
          fmt(r["recovery_s"]), fmt(r["relogin_ms_p50"], 0), fmt(r["relogin_ms_p99"], 0),
          fmt(r["cpu_ms_per_login"]), ", ".join(f"{k} {fmt(v)}" for k, v in r["cpu_ms_by_process"].items()),
          r["other_pct"]] for r in rows],
    )  # fmt: skip
    by = {(r["path"], r["resume"]): r for r in rows}
    front: dict[tuple[str, bool], float | None] = {}
    for (name, resume), r in by.items():
        front[(name, resume)] = r["cpu_ms_by_process"].get(name)
    head = []
    for resume in (False, True):
        mine, theirs = front.get(("bbproxy", resume)), front.get(("haproxy", resume))
        if mine is not None and theirs:
            head.append([f"front CPU ms per re-login, {'resumed' if resume else 'full'} handshakes",
                         fmt(mine), fmt(theirs), fmt(mine / theirs)])  # fmt: skip
    for name in ("bbproxy", "haproxy"):
        full, res = front.get((name, False)), front.get((name, True))
        if full and res is not None:
            head.append([f"{name}: resumed ÷ full, front CPU per re-login", "", "", fmt(res / full)])
    if head:
        lines += ["## Ratios", ""]
        lines += table(["metric", "bbproxy", "haproxy", "bbproxy ÷ haproxy"], head)
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sessions", type=int, default=1000, help=f"sessions cut at once (1..{MAX_SESSIONS})"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="logins in flight (default 64)")
    parser.add_argument("--paths", default="bbproxy,haproxy", help=f"comma list of {', '.join(PATHS)}")
    parser.add_argument("--mechanism", choices=["SCRAM-SHA-1", "PLAIN"], default="SCRAM-SHA-1")
    parser.add_argument("--cert", choices=["ecdsa", "rsa"], default="ecdsa")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="uvloop", help="bbproxy's event loop"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter that can import bbproxy")
    parser.add_argument("--proxy-args", default="", help="extra bbproxy arguments (recorded)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the .md and .json go")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if set(args.paths) - set(PATHS):
        parser.error(f"--paths: {', '.join(PATHS)}")
    fd_cap = (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200) // 2
    if not 1 <= args.sessions <= min(MAX_SESSIONS, fd_cap) or not 1 <= args.concurrency <= 256:
        parser.error(f"--sessions 1..{min(MAX_SESSIONS, fd_cap)}, --concurrency 1..256")
    args.skip_peers = set()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("prosody") is None:
        print("storm: prosody not installed (apt-get install prosody)", file=sys.stderr)
        return 2

    def storms(env: Env, paths: dict[str, Path3], rows: list[dict[str, Any]]) -> None:
        for resume in (False, True):
            for path in paths.values():
                try:
                    rows.append(storm(env, path, resume, args))
                except BenchError as exc:
                    env.notes.append(str(exc))
                    print(f"ERROR {exc}", file=sys.stderr)

    settings = {
        "loop": args.loop,
        "cert": args.cert,
        "mechanism": args.mechanism,
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "paths": args.paths,
        "proxy_args": args.proxy_args,
    }
    return run_over_paths("storm", args, argv, settings, storms, markdown)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        sys.exit(client_main())
    sys.exit(main())
