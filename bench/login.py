#!/usr/bin/env python3
"""Whole TLS 1.0 logins through a real Prosody: what an operator pays per BB10 login (issue 19).

    python bench/login.py                 # < 5 min: 3 paths x PLAIN and SCRAM-SHA-1
    python bench/login.py --logins 500 --repeats 3 --budget 900 --out bench/reports

One login = TCP connect, (STARTTLS,) a TLS 1.0 handshake (ECDHE, AES-CBC-SHA), the stream,
SASL (PLAIN or SCRAM-SHA-1), the stream restart, resource binding, one message to our own full
JID and back, ``</stream:stream>``, close. Three paths, measured in the same run:

* ``bbproxy``: STARTTLS to bbproxy, which relays the plaintext to Prosody (``prosody-plain``:
  no TLS module, as the role runs it behind the proxy);
* ``prosody-tls``: STARTTLS to Prosody itself with TLS 1.0 enabled in it (``protocol = "tlsv1+"``,
  the benchmark's cipher list at ``@SECLEVEL=0``: what an operator tries first);
* ``haproxy``: direct TLS to haproxy (``nbthread 1``), which relays to a ``prosody-plain`` too.

Each path has its own Prosody, restarted and warmed up (24 logins, unmeasured) before every
measurement: one Prosody process's CPU per login grows with the logins it has served (3.4 ms at
first, 5.3 ms after 3 000 SCRAM logins on this machine), so a Prosody shared by two paths, or one
that served more logins than another path's, would charge that growth to a path.

Every server process of a path is pinned to CPU 0 and the client to CPU 1 (when there are two),
so "logins/s at saturation" is what one core of server does. Per path and mechanism:

* saturation (``--repeats`` times, interleaved; the headline takes medians): ``--logins`` logins,
  ``--concurrency`` in flight; logins/s (client wall time) and
  CPU ms per login of every process of the path (``/proc/PID/stat`` of each process tree, summed:
  bbproxy + Prosody, Prosody, haproxy + Prosody), before and after, once the CPU settles;
* fixed load: ``--fixed-logins`` logins started at ``--rate`` per second (default: 40 % of the
  slowest path's saturated rate for that mechanism, the same for every path), open loop: a login's
  time counts from when it was due, so a queue shows; p50 / p99 login time.

The client (this script's ``client`` mode, a separate process) is tests/torture/xmpp.py's
XmppSession on threads; SCRAM's salted password is cached per user (RFC 5802 allows it), so the
client's PBKDF2 is paid once. Ratios are against the baselines of the same run. Bounded: every
login has a timeout, every run a count and a time limit, and the whole run ``--budget`` seconds.
Every socket is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import _path  # noqa: F401  (files/bbproxy on sys.path)
from common import DOMAIN, HERE, HOST, BenchError, make_certs
from peers import BBProxy, Env, HAProxy, Peer, PlainProsody, Prosody
from procstat import (
    NoiseMeter,
    Processes,
    ignore_signals,
    interrupt_on_signals,
    process_tree,
    raise_nofile,
    settle,
    tree_cpu_s,
)
from report import fmt, git_info, machine_info, table
from scenarios import percentile
from tests.kit import client_context
from tests.torture.xmpp import LoginFailed, XmppSession

PATHS = ("bbproxy", "prosody-tls", "haproxy")
MECHANISMS = ("SCRAM-SHA-1", "PLAIN")
USERS = 8
LOGIN_TIMEOUT = 15.0
MAX_LOGINS = 3000
SERVER_CPU, CLIENT_CPU = 0, 1


# -- the client (a process of its own) -----------------------------------------------------------


def one_login(cfg: dict[str, Any], index: int) -> tuple[float, str | None]:
    """One whole login; (seconds, None) or (seconds, the stage it failed at)."""
    users = cfg["users"]
    user = sorted(users)[index % len(users)]
    ctx = CONTEXT
    start = time.monotonic()
    session = XmppSession(
        cfg["port"], DOMAIN, user, users[user], ctx, LOGIN_TIMEOUT,
        mechanism=cfg["mechanism"], direct_tls=cfg["direct_tls"],
    )  # fmt: skip
    try:
        jid = session.login()
        body = f"m{index}-{secrets.token_hex(4)}"
        session.stage = "message"
        session.send_message(jid, body)
        if not session.wait_for(f"{body}</body>".encode(), LOGIN_TIMEOUT):
            session.close()
            return time.monotonic() - start, "message"
        session.close()
    except LoginFailed as exc:
        return time.monotonic() - start, exc.stage
    return time.monotonic() - start, None


CONTEXT = client_context("1.0", None)  # TLS 1.0 exactly, any suite at SECLEVEL 0; no certificate check


def client_main() -> int:
    """Reads one JSON config on stdin, runs it, prints one JSON result."""
    cfg = json.loads(sys.stdin.readline())
    if cfg.get("cpu") is not None and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cfg["cpu"]})
    count, deadline = cfg["count"], time.monotonic() + cfg["time_limit"]
    durations: list[float] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    if cfg["rate"]:  # open loop: login i is due at t0 + i / rate; its time counts from then

        def paced(i: int, due: float) -> None:
            _, failed = one_login(cfg, i)
            with lock:
                durations.append(time.monotonic() - due)
                if failed:
                    failures[failed] += 1

        with ThreadPoolExecutor(max_workers=64) as pool:
            for i in range(count):
                due = t0 + i / cfg["rate"]
                if due > deadline:
                    failures["not started (time limit)"] += count - i
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                pool.submit(paced, i, due)
    else:  # closed loop: `concurrency` threads, each logs in again as soon as it is done
        counter = iter(range(count))

        def worker() -> None:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                spent, failed = one_login(cfg, i)
                with lock:
                    durations.append(spent)
                    if failed:
                        failures[failed] += 1

        threads = [threading.Thread(target=worker) for _ in range(cfg["concurrency"])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.monotonic() - t0
    print(json.dumps({
        "ok": len(durations) - sum(failures.values()) + failures["not started (time limit)"],
        "failures": dict(failures), "elapsed_s": elapsed,
        "client_cpu_s": time.process_time() - cpu0, "durations_ms": [d * 1000 for d in durations],
    }))  # fmt: skip
    return 0


# -- the runner ----------------------------------------------------------------------------------


def pin(pids: list[int], cpu: int) -> None:
    """Every thread of every process of these trees to one CPU (no-op on a 1-CPU machine)."""
    if len(os.sched_getaffinity(0)) < 2:
        return
    for pid in pids:
        for member in process_tree(pid):
            for task in Path(f"/proc/{member}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that just ended
                    os.sched_setaffinity(int(task.name), {cpu})


class Path3:
    """One path: the processes the client's login crosses, and where the client connects."""

    def __init__(self, name: str, front: Peer, backend: Prosody | None) -> None:
        self.name, self.front, self.backend = name, front, backend

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self.front, self.backend) if p is not None]

    @property
    def prosody(self) -> Prosody:
        """The path's own Prosody (the backend of a relay, or the front itself)."""
        server = self.backend if self.backend is not None else self.front
        assert isinstance(server, Prosody)
        return server

    def fresh(self, env: Env, mechanism: str) -> None:
        """Restart the path's Prosody and warm it up (unmeasured: code loaded, caches filled), so
        every measurement starts from the same state: Prosody's CPU per login grows with the logins
        one process has served, and a shared or long-lived one would charge that to a path."""
        self.prosody.restart()
        pin(self.pids, SERVER_CPU)
        warm = run_client(env, self, {"mechanism": mechanism, "rate": 0, "concurrency": 4, "count": 24,
                                      "time_limit": 60}, f"warm-{self.name}-{mechanism}")  # fmt: skip
        if warm["failures"]:
            raise BenchError(f"warm-up of {self.name} {mechanism} failed: {warm['failures']}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each process tree of the path, once each has settled."""
        parts = {self.front.name: settle(self.front.pid)}
        if self.backend is not None:
            parts[self.backend.name] = settle(self.backend.pid)
        return parts

    def kernel(self) -> dict[str, float]:
        """The part of cpu() spent in the kernel (stime): asked right after cpu(), which settled."""
        peers = (self.front, self.backend)
        return {p.name: tree_cpu_s(p.pid, kernel_only=True) for p in peers if p is not None}


def start_client(
    env: Env, script: str, path: Path3, label: str, cfg: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], Path, dict[str, Any]]:
    """``bench/<script> client`` (login.py's or storm.py's) against ``path``'s front, with its log,
    and ``cfg`` completed with what every client needs: where to connect, its CPU, the accounts."""
    front = path.front
    cfg = {**cfg, "port": front.port, "direct_tls": front.proto == "direct-tls", "cpu": CLIENT_CPU,
           "users": USER_PASSWORDS}  # fmt: skip
    log = env.log(f"client-{label}")
    proc = env.procs.start(
        [env.args.python, str(HERE / script), "client"], log, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    return proc, log, cfg


def run_client(env: Env, path: Path3, cfg: dict[str, Any], label: str) -> dict[str, Any]:
    proc, log, cfg = start_client(env, "login.py", path, label, cfg)
    try:
        out, _ = proc.communicate(json.dumps(cfg).encode() + b"\n", timeout=cfg["time_limit"] + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"client {label} did not finish; see {log}") from exc
    finally:
        env.procs.stop(proc)
    if proc.returncode != 0 or not out:
        raise BenchError(f"client {label} exited with {proc.returncode}; see {log}")
    return dict(json.loads(out))


def measure(env: Env, path: Path3, mechanism: str, mode: str, **settings: Any) -> dict[str, Any]:
    label = f"{mode}-{path.name}-{mechanism}"
    print(f"login: {label} ...", file=sys.stderr, end=" ", flush=True)
    path.fresh(env, mechanism)
    noise = NoiseMeter(env, path.pids)
    cfg = {"mechanism": mechanism, "rate": 0, "concurrency": 1, **settings}
    before, before_kernel = path.cpu(), path.kernel()
    result = run_client(env, path, cfg, label)
    after, after_kernel = path.cpu(), path.kernel()
    ok = result["ok"]

    def per_login(end: dict[str, float], start: dict[str, float]) -> dict[str, float | None]:
        return {name: (end[name] - start[name]) * 1000 / ok if ok else None for name in start}

    cpu, kernel = per_login(after, before), per_login(after_kernel, before_kernel)
    durations = result.pop("durations_ms")
    row = {
        "path": path.name, "mechanism": mechanism, "mode": mode, **settings,
        "ok": ok, "failed": sum(result["failures"].values()), "failures": result["failures"],
        "elapsed_s": round(result["elapsed_s"], 3),
        "logins_per_s": ok / result["elapsed_s"] if result["elapsed_s"] else 0.0,
        "cpu_ms_per_login": sum(v for v in cpu.values() if v is not None) if ok else None,
        "cpu_ms_by_process": cpu,
        "kernel_ms_by_process": kernel,  # the part of cpu_ms_by_process spent in the kernel (stime)
        # how busy the path kept its one core: near 100 % at saturation, else something else bounded it
        "server_core_pct": (sum(v for v in cpu.values() if v is not None) * ok / 10 / result["elapsed_s"])
        if ok and result["elapsed_s"]
        else None,
        "client_cpu_ms_per_login": result["client_cpu_s"] * 1000 / ok if ok else None,
        "login_ms_p50": percentile(durations, 50), "login_ms_p99": percentile(durations, 99),
        "other_pct": round(noise.other_pct(), 1),
    }  # fmt: skip
    print(
        f"{ok} ok, {row['failed']} failed, {row['logins_per_s']:.1f}/s, "
        f"{row['cpu_ms_per_login'] or 0:.2f} ms CPU a login (other processes: {row['other_pct']}%)",
        file=sys.stderr,
    )
    return row


USER_PASSWORDS = {f"bench{i}": secrets.token_urlsafe(12) for i in range(USERS)}


def start_paths(env: Env, which: list[str]) -> dict[str, Path3]:
    cert = env.certs[env.args.cert]
    paths: dict[str, Path3] = {}
    for name, front_type in (("bbproxy", BBProxy), ("haproxy", HAProxy)):
        if name not in which:
            continue
        if front_type is HAProxy and HAProxy.path() is None:
            env.notes.append("haproxy not installed (apt-get install haproxy): its path is left out")
            continue
        plain = PlainProsody(env)  # each relay its own Prosody: no path pays for another's logins
        plain.users = USER_PASSWORDS
        plain.start(None)
        env.echo_port = plain.port  # the backend the relay's argv names
        front = front_type(env)
        front.start(cert)
        paths[name] = Path3(name, front, plain)
    if "prosody-tls" in which:
        tls = Prosody(env)
        tls.users = USER_PASSWORDS
        tls.start(cert)
        paths["prosody-tls"] = Path3("prosody-tls", tls, None)
    for path in paths.values():
        pin(path.pids, SERVER_CPU)
    return {name: paths[name] for name in which if name in paths}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def markdown(report: dict[str, Any]) -> str:
    rows = report["results"]
    m = report["machine"]
    lines = [
        f"# Whole TLS 1.0 logins through a real Prosody ({report['started']})",
        "",
        f"`{report['command']}`; git {report['git'].get('commit', '?')[:10]}"
        f"{' (uncommitted changes in src/ or bench/)' if report['git'].get('proxy_src_dirty') else ''}; "
        f"{m['nproc']} CPUs ({m['cpu_model']}); "
        f"Python {m['python']}, {m['python_ssl']}; bbproxy {m['bbproxy']} on {report['settings']['loop']}; "
        f"haproxy {m['peers'].get('haproxy')}, Prosody {m['peers'].get('prosody')}; certificate "
        f"{report['settings']['cert']}; other processes used {report['other_cpu_pct']:.0f} % of the machine.",
        "",
        "Servers pinned to CPU 0, the client to CPU 1. CPU = every process of the path (bbproxy + Prosody, "
        "Prosody alone, haproxy + Prosody), from /proc. Headline cells: the median over the repeats, "
        "value (bbproxy ÷ that path). The TLS terminator's process: bbproxy, Prosody itself, haproxy.",
        "",
        "## Headline",
        "",
    ]
    head = []
    for mech in report["settings"]["mechanisms"]:

        def median(mode: str, path: str, key: str, mech: str = mech) -> float | None:
            values = [r[key] for r in rows if (r["mode"], r["mechanism"], r["path"]) == (mode, mech, path)]
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        def front(path: str, mech: str = mech, key: str = "cpu_ms_by_process") -> float | None:
            values = [  # the first process of a path is its TLS terminator
                next(iter(r[key].values()))
                for r in rows
                if (r["mode"], r["mechanism"], r["path"]) == ("saturation", mech, path) and key in r
            ]
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        def capacity(path: str) -> float | None:
            cpu = median("saturation", path, "cpu_ms_per_login")
            return 1000 / cpu if cpu else None

        def front_user(path: str) -> float | None:
            total, kernel = front(path), front(path, key="kernel_ms_by_process")
            return total - kernel if total is not None and kernel is not None else None

        split = [  # reports from before 2026-12-07 have no kernel column
            ("... of which in the kernel (stime)", lambda p: front(p, key="kernel_ms_by_process")),
            ("... of which in user space (utime: the program and its libraries)", front_user),
        ] if any("kernel_ms_by_process" in r for r in rows) else []  # fmt: skip
        for label, get in (
            ("CPU ms per login, whole path", lambda p: median("saturation", p, "cpu_ms_per_login")),
            ("CPU ms per login, the TLS terminator's process alone", front),
            *split,
            ("logins/s one server core can do (1000 ÷ CPU ms)", capacity),
            (
                f"logins/s measured, {report['settings']['concurrency']} in flight (the core was shared)",
                lambda p: median("saturation", p, "logins_per_s"),
            ),
            ("login p50 ms at fixed load", lambda p: median("fixed", p, "login_ms_p50")),
            ("login p99 ms at fixed load", lambda p: median("fixed", p, "login_ms_p99")),
        ):
            mine = get("bbproxy")
            cells = [f"{mech}: {label}", fmt(mine)]
            for other in ("prosody-tls", "haproxy"):
                theirs = get(other)
                cells.append(f"{fmt(theirs)} ({fmt(ratio(mine, theirs))})" if theirs is not None else "-")
            head.append(cells)
        # The target's verdict: bbproxy ÷ Prosody per repeat (the two ran minutes apart at most, so
        # they saw the same machine), then the median of those ratios.
        per_repeat = []
        for same in saturation_repeats(rows, mech):
            pair = {r["path"]: r["cpu_ms_per_login"] for r in same}
            if (q := ratio(pair.get("bbproxy"), pair.get("prosody-tls"))) is not None:
                per_repeat.append(q)
        if per_repeat:
            r = statistics.median(per_repeat)
            verdict = "met" if r <= 1.0 else "**NOT met**"
            each = ", ".join(fmt(q) for q in per_repeat)
            head.append(
                [f"{mech}: target whole-path CPU per login ≤ TLS 1.0 inside Prosody (median of the "
                 f"repeats' ratios: {each})", fmt(r), verdict, ""]
            )  # fmt: skip
        if (budget := tls_budget(rows, mech)) is not None:
            cells = [f"{mech}: what the target leaves a separate TLS terminator: Prosody's own TLS work "
                     f"per login (Prosody with TLS minus a Prosody behind a relay, per repeat, median), "
                     f"against each terminator's process alone", fmt(front("bbproxy"))]  # fmt: skip
            cells.append(f"{fmt(budget)} ({fmt(ratio(front('bbproxy'), budget))})")
            haproxy_front = front("haproxy")
            cells.append(f"{fmt(haproxy_front)} ({fmt(ratio(haproxy_front, budget))} of the budget)")
            head.append(cells)
    lines += table(["metric", "bbproxy → Prosody", "Prosody with TLS 1.0", "haproxy → Prosody"], head)
    lines += ["", "## Every run", ""]
    lines += table(
        ["mode", "mechanism", "path", "ok", "failed", "logins/s", "CPU ms/login", "by process",
         "server core %", "client CPU ms", "p50 ms", "p99 ms", "other %"],
        [[r["mode"] + (f" {r['rate']:.0f}/s" if r.get("rate") else f" x{r['concurrency']} #{r['repeat']}"),
          r["mechanism"], r["path"], r["ok"], r["failed"] or 0, fmt(r["logins_per_s"], 1),
          fmt(r["cpu_ms_per_login"]),
          ", ".join(f"{k} {fmt(v)}" for k, v in r["cpu_ms_by_process"].items()), fmt(r["server_core_pct"], 0),
          fmt(r["client_cpu_ms_per_login"]), fmt(r["login_ms_p50"], 1), fmt(r["login_ms_p99"], 1),
          r["other_pct"]]
         for r in rows],
    )  # fmt: skip
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in report["notes"]]]
    return "\n".join(lines) + "\n"


def saturation_repeats(rows: list[dict[str, Any]], mech: str) -> list[list[dict[str, Any]]]:
    """The saturation rows of ``mech``, one list per repeat (the paths of a repeat ran within
    minutes of each other, so they saw the same machine), in repeat order."""
    repeats = sorted({r.get("repeat") for r in rows if r["mode"] == "saturation"}, key=str)
    return [
        [r for r in rows if (r["mode"], r["mechanism"], r.get("repeat")) == ("saturation", mech, repeat)]
        for repeat in repeats
    ]


def tls_budget(rows: list[dict[str, Any]], mech: str) -> float | None:
    """Prosody's own TLS work per login: Prosody with TLS minus the Prosody behind a relay (the
    mean of the relays' backends), per repeat, then the median. The whole-path target is met only
    if the terminator's process costs no more than this."""
    budgets = []
    for same in saturation_repeats(rows, mech):
        tls = [r["cpu_ms_per_login"] for r in same if r["path"] == "prosody-tls"]
        plain = [r["cpu_ms_by_process"].get("prosody-plain") for r in same if r["path"] != "prosody-tls"]
        plain = [v for v in plain if v is not None]
        if tls and tls[0] is not None and plain:
            budgets.append(tls[0] - statistics.mean(plain))
    return statistics.median(budgets) if budgets else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=300, help="logins per saturation run (default 300)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="logins in flight at saturation (default 16)"
    )
    parser.add_argument(
        "--fixed-logins", type=int, default=150, help="logins per fixed-load run (default 150)"
    )
    parser.add_argument(
        "--rate", type=float, default=0, help="fixed load, logins/s (default: 40%% of the slowest)"
    )
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS), help="comma list of SCRAM-SHA-1, PLAIN")
    parser.add_argument(
        "--paths", default=",".join(PATHS), help="comma list of bbproxy, prosody-tls, haproxy"
    )
    parser.add_argument(
        "--cert", choices=["ecdsa", "rsa"], default="ecdsa", help="server key type (default ecdsa)"
    )
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="uvloop", help="bbproxy's event loop"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter that can import bbproxy")
    parser.add_argument("--proxy-args", default="", help="extra bbproxy arguments (recorded)")
    parser.add_argument("--repeats", type=int, default=1, help="saturation runs per path, interleaved (1..5)")
    parser.add_argument("--budget", type=float, default=300, help="seconds for the whole run (default 300)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the .md and .json go")
    parser.add_argument("--keep-workdir", action="store_true", help="keep certs and logs in the temp dir")
    parser.add_argument("--render", type=Path, help="write the .md of a report's .json again (runs nothing)")
    args = parser.parse_args(argv)
    args.mechanisms = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if set(args.mechanisms) - set(MECHANISMS) or set(args.paths) - set(PATHS):
        parser.error("unknown mechanism or path")
    if not (
        1 <= args.logins <= MAX_LOGINS
        and 1 <= args.fixed_logins <= MAX_LOGINS
        and 1 <= args.concurrency <= 64
    ):
        parser.error(f"--logins / --fixed-logins 1..{MAX_LOGINS}, --concurrency 1..64")
    if not 1 <= args.repeats <= 5:
        parser.error("--repeats 1..5")
    args.skip_peers = set()
    return args


def run_over_paths(
    name: str,
    args: argparse.Namespace,
    argv: list[str] | None,
    settings: dict[str, Any],
    body: Callable[[Env, dict[str, Path3], list[dict[str, Any]]], None],
    render: Callable[[dict[str, Any]], str],
    budget: float | None = None,
) -> int:
    """The frame of login.py and storm.py: start the paths, run ``body`` (which appends result
    rows), stop everything (also on SIGTERM/SIGINT/SIGHUP), write ``<name>-<stamp>.{json,md}`` to
    ``args.out``; the work directory is kept when anything went wrong. ``budget``: seconds from
    here that ``env.remaining()`` counts down (login.py's --budget)."""
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix=f"bbproxy-{name}-"))
    env = Env(args, {}, workdir, Processes())
    started = time.monotonic()
    if budget is not None:
        env.deadline = started + budget
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")

    interrupt_on_signals()
    rows: list[dict[str, Any]] = []
    machine: dict[str, Any] = {}
    run_noise = NoiseMeter(env)
    interrupted = False
    try:
        machine = machine_info(env)
        env.certs = make_certs(workdir)
        paths = start_paths(env, args.paths)
        run_noise = NoiseMeter(env)
        body(env, paths, rows)
    except KeyboardInterrupt:
        interrupted = True
        env.notes.append("interrupted")
    finally:
        ignore_signals()
        env.procs.stop_all()
    report = {
        "started": stamp,
        "duration_s": round(time.monotonic() - started, 1),
        "command": " ".join([Path(sys.executable).name, f"bench/{name}.py", *(argv or sys.argv[1:])]),
        "machine": machine,
        "other_cpu_pct": run_noise.other_pct(),
        "git": git_info(),
        "settings": settings,
        "commands": env.commands,
        "results": rows,
        "notes": env.notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"{name}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = render(report)
    base.with_suffix(".md").write_text(text)
    print(text)
    print(f"{name}: wrote {base}.md and .json", file=sys.stderr)
    failed = any(r["failed"] for r in rows)
    if args.keep_workdir or interrupted or failed or env.notes:
        print(f"{name}: logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted else 0


def measure_logins(
    args: argparse.Namespace, env: Env, paths: dict[str, Path3], rows: list[dict[str, Any]]
) -> None:
    limit = 120.0
    order = list(paths.values())
    for repeat in range(args.repeats):  # interleaved: every path once per repeat, in a rotated order
        turn = order[repeat % len(order) :] + order[: repeat % len(order)]
        for mech in args.mechanisms:
            for path in turn:
                if env.remaining() < limit / 2:
                    env.notes.append(f"skipped (time budget): saturation {path.name} {mech} #{repeat + 1}")
                    continue
                run = {"count": args.logins, "concurrency": args.concurrency, "repeat": repeat + 1}
                rows.append(
                    measure(env, path, mech, "saturation", time_limit=min(limit, env.remaining()), **run)
                )
    for mech in args.mechanisms:
        rates = [r["logins_per_s"] for r in rows if r["mechanism"] == mech and r["mode"] == "saturation"]
        rate = args.rate or (max(1.0, round(0.4 * min(rates), 1)) if rates else 5.0)
        for path in order:
            if env.remaining() < args.fixed_logins / rate + 10:
                env.notes.append(f"skipped (time budget): fixed load {path.name} {mech}")
                continue
            rows.append(measure(env, path, mech, "fixed", count=args.fixed_logins, rate=rate,
                                time_limit=args.fixed_logins / rate + 30))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return 0
    if shutil.which("prosody") is None or shutil.which("prosodyctl") is None:
        print("login: prosody not installed (apt-get install prosody)", file=sys.stderr)
        return 2
    settings = {
        "loop": args.loop,
        "cert": args.cert,
        "mechanisms": args.mechanisms,
        "paths": args.paths,
        "logins": args.logins,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "fixed_logins": args.fixed_logins,
        "proxy_args": args.proxy_args,
        "users": USERS,
        "server_cpu": SERVER_CPU,
        "client_cpu": CLIENT_CPU,
    }
    return run_over_paths("login", args, argv, settings, partial(measure_logins, args), markdown, args.budget)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        sys.exit(client_main())
    assert HOST == "127.0.0.1"
    sys.exit(main())
