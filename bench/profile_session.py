#!/usr/bin/env python3
"""Where bbproxy's per-session CPU goes: one handshake scenario, measured plainly or under a profiler.

    python bench/profile_session.py --loop uvloop                # CPU ms/session, bbproxy and python-ssl
    python bench/profile_session.py --loop uvloop --tool strace  # + syscalls per session (strace -c -f)
    python bench/profile_session.py --loop uvloop --tool py-spy  # + Python functions (py-spy)
    python bench/profile_session.py --loop uvloop --tool perf    # + CPU by library (perf record)
    python bench/profile_session.py --compare /path/to/python    # + another bbproxy checkout, same run

Same session as run.py's handshake scenario (TCP connect, STARTTLS prelude, TLS 1.0 handshake, one
200-byte stanza echoed through the backend, close), same load generator and echo backend. The
profilers attach to the already running, warmed-up server for exactly the measured sessions; their
own overhead inflates the CPU figure of that pass, so the CPU ms/session reported next to a profile
comes from a separate plain pass of the same run. Loopback only; every loop bounded (run.py's
load generator limits); every child stopped by PID.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import procstat
import scenarios
from common import DOMAIN, HERE, HOST, BenchError
from procstat import Processes

TOOLS = ("none", "strace", "py-spy", "perf")


# Variants of bbproxy that leave one part out, measured in the same passes to put a price on it.
VARIANTS = {
    "bbproxy-direct": "direct-TLS listener (XEP-0368): no XMPP prelude before TLS",
    "bbproxy-quiet": "--log-level warning: no per-session log lines",
}


class Server:
    """bbproxy (STARTTLS), a variant of it, or the python-ssl baseline (direct TLS), on a fresh port."""

    def __init__(self, procs: Processes, workdir: Path, args: argparse.Namespace, name: str) -> None:
        self.procs, self.workdir, self.args, self.name = procs, workdir, args, name
        self.port = common.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        starttls = name.startswith("bbproxy") and name != "bbproxy-direct"
        self.proto = "starttls" if starttls else "direct-tls"

    def start(self, cert: common.Cert, echo_port: int) -> None:
        py, loop = self.args.python, self.args.loop
        if self.name == "bbproxy-other":
            py = self.args.compare
        if self.name.startswith("bbproxy"):
            argv = [
                py, "-m", "bbproxy", "--listen", f"{HOST}:{self.port}", "--backend", f"{HOST}:{echo_port}",
                "--cert", str(cert.chain), "--key", str(cert.key), "--domain", DOMAIN, "--loop", loop,
            ]  # fmt: skip
            if self.name == "bbproxy-direct":  # the STARTTLS listener moves to an unused port
                argv[4] = f"{HOST}:{common.free_port()}"
                argv += ["--direct-tls-listen", f"{HOST}:{self.port}"]
            elif self.name == "bbproxy-quiet":
                argv += ["--log-level", "warning"]
            pattern = "ready"
        else:
            argv = [
                py, str(HERE / "servers.py"), "tls-echo", "--port", str(self.port),
                "--cert", str(cert.chain), "--key", str(cert.key), "--loop", loop,
            ]  # fmt: skip
            pattern = "ready"
        log = self.workdir / f"{self.name}.log"
        self.proc = self.procs.start(argv, log)
        if self.name != "bbproxy-quiet":
            procstat.wait_for_line(log, pattern, self.proc, 20)
        procstat.wait_listening(self.port, self.proc, 10)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None


def drive(procs: Processes, workdir: Path, server: Server, count: int, args: argparse.Namespace) -> float:
    """`count` sessions from args.clients load generators; returns the slowest one's seconds."""
    gens = []
    for i, n in enumerate(scenarios.split(count, args.clients)):
        cfg = {
            "host": HOST, "domain": DOMAIN, "mode": "handshake", "port": server.port, "proto": server.proto,
            "stanza_size": 200, "tls": args.tls, "count": n, "concurrency": args.concurrency // args.clients,
            "time_limit": 60, "session_timeout": 30,
        }  # fmt: skip
        proc = procs.start(
            [args.python, str(HERE / "loadgen.py"), json.dumps(cfg)],
            workdir / f"loadgen-{i}.log",
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        gens.append(proc)
    try:
        for g in gens:
            _expect(g, "ready", 30)
        for g in gens:
            assert g.stdin is not None
            g.stdin.write(b"go\n")
            g.stdin.flush()
        results = [_expect(g, "result", 100) for g in gens]
    finally:
        for g in gens:
            procs.stop(g)
    failed = sum(sum(r["failures"].values()) for r in results)
    if failed:
        failures = [r["failures"] for r in results]
        raise BenchError(f"{failed} sessions failed against {server.name}: {failures}")
    return max(float(r["elapsed_s"]) for r in results)


def _expect(proc: subprocess.Popen[bytes], event: str, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # the load generator prints one line per event
        if not line:
            break
        record: dict[str, Any] = json.loads(line)
        if record.get("event") == event:
            return record
    raise BenchError(f"load generator: no '{event}'")


def cpu_pass(procs: Processes, workdir: Path, server: Server, args: argparse.Namespace) -> float:
    assert server.proc is not None
    cpu0 = procstat.settle(server.proc.pid)
    drive(procs, workdir, server, args.sessions, args)
    cpu1 = procstat.settle(server.proc.pid)
    return (cpu1 - cpu0) * 1000 / args.sessions


def profiled_pass(
    procs: Processes, workdir: Path, server: Server, args: argparse.Namespace, cpu_ms: float
) -> str:
    """One pass of args.sessions with the profiler attached; returns its summary."""
    assert server.proc is not None
    pid = server.proc.pid
    out = workdir / f"{args.tool}.out"
    if args.tool == "strace":
        argv = ["strace", "-c", "-f", "-o", str(out), "-p", str(pid)]
    elif args.tool == "py-spy":
        argv = [str(Path(args.python).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                "--rate", "1000", "--output", str(out), "--nonblocking"]  # fmt: skip
    else:
        argv = ["perf", "record", "-F", "999", "-g", "-o", str(out), "-p", str(pid)]
    tool = procs.start(argv, workdir / f"{args.tool}.log")
    time.sleep(1.5)  # attached
    drive(procs, workdir, server, args.sessions, args)
    tool.send_signal(signal.SIGINT)  # strace and perf detach and write; py-spy writes its file
    try:
        tool.wait(30)
    finally:
        procs.stop(tool)
    if args.tool == "strace":
        return strace_summary(out.read_text(), args.sessions)
    if args.tool == "py-spy":
        return pyspy_summary(out.read_text(), args.top)
    return perf_summary(out, args.top, cpu_ms)


def strace_summary(text: str, sessions: int) -> str:
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$", line)
        if m and m.group(3) != "total":
            rows.append((int(m.group(1)), m.group(3)))
    rows.sort(reverse=True)
    total = sum(n for n, _ in rows)
    lines = [f"syscalls per session: {total / sessions:.1f}"]
    lines += [f"  {name:<16} {n / sessions:6.2f}" for n, name in rows if n / sessions >= 0.05]
    return "\n".join(lines)


def pyspy_summary(text: str, top: int) -> str:
    """Own (leaf) samples per function, and inclusive samples of every frame, from raw stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((.*/)?([^/]+)\)$", r" (\2)", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples; own time:"]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def perf_summary(data: Path, top: int, cpu_ms: float) -> str:
    """CPU by library (share, and ms per session from the plain passes' median), then top symbols."""

    def report(sort: str) -> list[str]:
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio", "-g", "none"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        return [line for line in out.splitlines() if line.strip() and not line.startswith("#")]

    lines = []
    for line in report("dso")[:top]:
        share, _, dso = line.strip().partition("%")
        lines.append(f"  {float(share):5.1f} %  {cpu_ms * float(share) / 100:.3f} ms  {dso.strip()}")
    lines.append("top symbols:")
    lines += report("dso,sym")[:top]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--tls", choices=["1.0", "1.3"], default="1.0")
    parser.add_argument("--cert", choices=["ecdsa", "rsa"], default="ecdsa")
    parser.add_argument("--sessions", type=int, default=3000, help="per pass (at most 20 000)")
    parser.add_argument("--passes", type=int, default=3, help="plain CPU passes per server (at most 10)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--tool", choices=TOOLS, default="none")
    parser.add_argument("--profile", default="bbproxy", help="comma list of servers to profile")
    parser.add_argument("--top", type=int, default=25, help="rows of each profile listing")
    parser.add_argument("--no-baseline", action="store_true", help="bbproxy only, no python-ssl")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also bbproxy without each optional part: "
        + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
    )
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--compare",
        metavar="PYTHON",
        help="also measure the bbproxy this interpreter imports (e.g. a wrapper setting PYTHONPATH to"
        " another checkout), as bbproxy-other, interleaved with the rest: a before/after in one run",
    )
    args = parser.parse_args()
    if not 1 <= args.sessions <= 20_000 or not 1 <= args.passes <= 10:
        parser.error("--sessions 1..20000, --passes 1..10")
    if args.tool == "py-spy":  # next to the interpreter that runs bbproxy, as profiled_pass runs it
        if not (Path(args.python).parent / "py-spy").exists():
            parser.error(f"py-spy is not installed next to {args.python}: pip install py-spy there")
    elif args.tool != "none" and not shutil.which(args.tool):
        parser.error(f"{args.tool} is not installed")
    procstat.raise_nofile()
    procs = Processes()
    names = ["bbproxy"] if args.no_baseline else ["bbproxy", "python-ssl"]
    if args.compare:
        names.insert(1, "bbproxy-other")
    if args.variants:
        names[1:1] = VARIANTS
    with tempfile.TemporaryDirectory(prefix="bbproxy-profile-") as tmp:
        workdir = Path(tmp)
        try:
            cert = common.make_certs(workdir)[args.cert]
            echo_log = workdir / "echo.log"
            echo = procs.start([args.python, str(HERE / "servers.py"), "echo", "--loop", "auto"], echo_log)
            echo_port = int(procstat.wait_for_line(echo_log, r"ready (\d+)", echo, 20).group(1))
            servers = {name: Server(procs, workdir, args, name) for name in names}
            for server in servers.values():
                server.start(cert, echo_port)
                drive(procs, workdir, server, 200, args)  # warm-up, not measured
            cpu: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(args.passes):  # interleaved, so both see the same machine
                for name, server in servers.items():
                    cpu[name].append(cpu_pass(procs, workdir, server, args))
            print(f"TLS {args.tls} {args.cert}, {args.loop}, {args.sessions} sessions x {args.passes} passes,"
                  f" {args.concurrency} in flight; server CPU ms per session (passes; median):")  # fmt: skip
            for name, values in cpu.items():
                med = sorted(values)[len(values) // 2]
                print(f"  {name:<11} {' '.join(f'{v:.3f}' for v in values)}; {med:.3f}")
            medians = {name: sorted(v)[len(v) // 2] for name, v in cpu.items()}
            for name in ("bbproxy-other", *VARIANTS, "python-ssl"):
                if name in medians:
                    bb, other = medians["bbproxy"], medians[name]
                    print(f"  bbproxy - {name} = {bb - other:+.3f} ms; bbproxy / {name} = {bb / other:.2f}")
            if args.tool != "none":
                for name in args.profile.split(","):
                    print(f"\n{args.tool}, {name}, one pass of {args.sessions} sessions:")
                    print(profiled_pass(procs, workdir, servers[name], args, medians[name]))
        except BenchError as exc:
            print(f"profile: {exc}", file=sys.stderr)
            return 1
        finally:
            with contextlib.suppress(Exception):
                procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
