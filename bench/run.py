#!/usr/bin/env python3
"""bbproxy benchmark: one command, bounded, loopback only, ratios against peers from the same run.

    python bench/run.py --quick            # < 3 minutes
    python bench/run.py --full             # < 20 minutes: also login.py and storm.py (issue 19)
    python bench/run.py --quick --only handshake,latency --out /tmp/bench

Peers (issue #8; each optional, "not installed" in the report if its binary is missing): haproxy
and stunnel terminating direct TLS in front of the same echo backend, Prosody itself with TLS 1.0
(STARTTLS, handshake and idle only), a plain Python ssl server, socat, and no proxy at all.

Scenarios (see bench/README.md for the method and what each number means):
  handshake   sessions/s and server CPU ms per session, TLS 1.0 and 1.3 x ECDSA P-256 and RSA-2048,
              at 200 concurrent clients (bbproxy: STARTTLS; haproxy/stunnel/python-ssl: direct TLS),
              and one bbproxy run at 500 concurrent (zero failures, #8).
  idle        server RSS per established idle TLS 1.0 session, every TLS peer.
  throughput  relay MB/s and CPU s/GB at 1 and 16 connections: bbproxy, haproxy, stunnel, socat.
  latency     200-byte round trip p50/p99 through each path, minus the echo backend's own.
  resume      server CPU per resumed TLS 1.0 handshake (session ID, ticket offered) vs full:
              bbproxy (STARTTLS and direct TLS) and haproxy (issue 19).
  login, storm  (--with; default in --full) bench/login.py and bench/storm.py, run after the
              scenarios above, their rows and headline ratios folded into this run's report.

Every server and client is a child process started here, on 127.0.0.1, stopped by PID (process
group) in a finally block. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The benchmark's parts, next to this file: common.py (address, domain, TLS policy, certificates,
# free ports), procstat.py (child processes, /proc accounting), peers.py (the servers under test and
# their config files), scenarios.py (profiles, load generators, measurements, run order), report.py
# (headline, verdicts, machine and versions, Markdown).
from common import HERE, BenchError, make_certs
from peers import Env, start_echo
from procstat import NoiseMeter, Processes, ignore_signals, interrupt_on_signals, raise_nofile
from report import NOT_MEASURED, git_info, headline, machine_info, markdown, source_fingerprint
from scenarios import PROFILES, SCENARIOS, scenario_plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="< 3 min (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="< 15 min")
    parser.set_defaults(mode="quick")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the .md and .json go")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument("--python", default=sys.executable, help="interpreter with bbproxy installed")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop for bbproxy and the python-ssl baseline",
    )
    parser.add_argument("--clients", type=int, default=2, help="load generator processes (handshake/idle)")
    parser.add_argument(
        "--proxy-args",
        default="",
        help="extra bbproxy arguments, e.g. '--workers 2' (recorded in the report)",
    )
    parser.add_argument("--handshakes", type=int, help="sessions per handshake run (overrides the profile)")
    parser.add_argument("--idle-sessions", help="comma list of idle session counts (overrides the profile)")
    parser.add_argument(
        "--skip-peers",
        default="",
        help="comma list of haproxy, stunnel, prosody to leave out (default: every installed one)",
    )
    parser.add_argument(
        "--with",
        dest="extras",
        help="comma list of login, storm: also run bench/login.py and bench/storm.py (issue 19) "
        "after the scenarios and fold their results into this report (default: both in --full, "
        "none in --quick)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep certs and logs in the temp dir")
    args = parser.parse_args(argv)
    if args.extras is None:
        args.extras = ",".join(EXTRAS) if args.mode == "full" else ""
    args.extras = [s.strip() for s in args.extras.split(",") if s.strip()]
    if set(args.extras) - set(EXTRAS):
        parser.error(f"--with: {', '.join(EXTRAS)}")
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.skip_peers = {s.strip() for s in args.skip_peers.split(",") if s.strip()}
    if args.only - set(SCENARIOS):
        parser.error(f"--only: unknown {sorted(args.only - set(SCENARIOS))}")
    if not 1 <= args.clients <= 16:
        parser.error("--clients must be 1..16")
    return args


# The issue-19 benchmarks --with runs after the scenarios (the echo and every peer stopped by then):
# their arguments and a time limit each. login: 3 interleaved repeats of 500 logins per path and
# mechanism (~3 min); storm: 1 000 sessions, bbproxy and haproxy, full and resumed (~1 min).
EXTRAS: dict[str, tuple[list[str], float]] = {
    "login": (["--logins", "500", "--repeats", "3", "--fixed-logins", "200", "--budget", "420"], 480),
    "storm": (["--sessions", "1000"], 420),
}


def run_extra(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run bench/<name>.py as a child (its own servers, stopped by itself), bounded in time: on
    timeout it gets SIGTERM (it stops its servers and writes a partial report), then SIGKILL.
    Returns its report (the JSON it wrote)."""
    out = workdir / name
    extra, limit = EXTRAS[name]
    argv = [sys.executable, str(HERE / f"{name}.py"), *extra, "--loop", args.loop, "--python", args.python]
    argv += ["--out", str(out), *(["--proxy-args", args.proxy_args] if args.proxy_args else [])]
    print(f"bench: {name} ({shlex.join(argv[1:])}) ...", file=sys.stderr, flush=True)
    with open(workdir / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also on our own SIGINT/SIGTERM (KeyboardInterrupt)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    reports = sorted(out.glob(f"{name}-*.json"))
    if not reports:
        raise BenchError(f"{name}.py wrote no report (exit {proc.returncode}); see {workdir / name}.log")
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    return report | {"exit_code": proc.returncode, "argv": shlex.join(argv)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = dict(PROFILES[args.mode])
    if args.handshakes:
        profile["handshakes"] = min(args.handshakes, 50000)
    if args.idle_sessions:
        profile["idle_sessions"] = [int(x) for x in args.idle_sessions.split(",")]
    for tool in ("socat", "openssl"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (apt-get install {tool})", file=sys.stderr)
            return 2
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="bbproxy-bench-"))
    procs = Processes()
    env = Env(args, profile, workdir, procs)
    started = time.monotonic()
    env.deadline = started + profile["budget_s"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, list[dict[str, Any]]] = {}

    interrupt_on_signals()
    interrupted = False
    machine: dict[str, Any] = {}
    run_noise = NoiseMeter(env)
    fingerprint = source_fingerprint()
    try:
        machine = machine_info(env)
        env.certs = make_certs(workdir)
        start_echo(env)
        for scenario, label, estimate, step in scenario_plan(env):
            if env.remaining() < estimate:
                env.notes.append(f"skipped (time budget): {label}")
                print(f"bench: skip {label} (time budget)", file=sys.stderr)
                continue
            t0 = time.monotonic()
            noise = NoiseMeter(env)
            print(f"bench: {label} ...", file=sys.stderr, end=" ", flush=True)
            try:
                row = step()
            except BenchError as exc:
                env.notes.append(f"{label}: {exc}")
                print(f"ERROR {exc}", file=sys.stderr)
                continue
            other = round(noise.other_pct(), 1)
            rows = row if isinstance(row, list) else [row]
            results.setdefault(scenario, []).extend(r | {"other_cpu_pct": other} for r in rows)
            print(
                f"{time.monotonic() - t0:.1f}s (other processes: {other:.0f}% of the machine)",
                file=sys.stderr,
            )
    except KeyboardInterrupt:
        interrupted = True
        env.notes.append("interrupted: partial results")
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        ignore_signals()
        procs.stop_all()
    extras: dict[str, dict[str, Any]] = {}
    interrupt_on_signals()  # run_extra stops its child on these
    for name in args.extras if not interrupted else []:
        t0 = time.monotonic()
        try:
            sub = run_extra(name, args, workdir)
        except BenchError as exc:
            env.notes.append(f"{name}: {exc}")
            continue
        except KeyboardInterrupt:
            interrupted = True
            env.notes.append(f"interrupted during {name}: partial results")
            break
        results[name] = sub.pop("results")
        extras[name] = sub
        env.notes += [f"{name}: {note}" for note in sub.get("notes", [])]
        print(f"bench: {name} {time.monotonic() - t0:.0f}s", file=sys.stderr)
    ignore_signals()
    if source_fingerprint() != fingerprint:
        env.notes.append(
            "bbproxy's source files changed during this run (editable install): "
            "rows may mix versions; run again"
        )
    report = {
        "mode": args.mode,
        "started": stamp,
        "duration_s": time.monotonic() - started,
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "machine": machine,
        "other_cpu_pct": run_noise.other_pct(),
        "git": git_info()
        | {"src_fingerprint_start": fingerprint, "src_fingerprint_end": source_fingerprint()},
        "settings": {
            "loop": args.loop,
            "proxy_args": args.proxy_args,
            "echo_loop": env.echo_loop,
            "clients": args.clients,
            **profile,
        },
        "commands": env.commands,
        "headline": headline(results, profile, machine.get("nofile_hard", 0)),
        "extras": extras,
        "peers_missing": env.missing,
        "not_measured": NOT_MEASURED,
        "results": results,
        "notes": env.notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"bench-{args.mode}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown(report)
    base.with_suffix(".md").write_text(text)
    shutil.copyfile(base.with_suffix(".md"), args.out / f"latest-{args.mode}.md")
    shutil.copyfile(base.with_suffix(".json"), args.out / f"latest-{args.mode}.json")
    print(text)
    print(f"bench: wrote {base}.md and .json", file=sys.stderr)
    failed_rows = any(r.get("failed") for rows in results.values() for r in rows)
    if args.keep_workdir or interrupted or failed_rows or env.notes:  # keep the logs to look at
        print(f"bench: logs and certs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
