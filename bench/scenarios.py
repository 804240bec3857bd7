"""The measurements: the mode profiles, the load generator processes (loadgen.py) and each
scenario (handshake, idle, throughput, latency), and the plan that orders them in one run."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from common import DOMAIN, HERE, HOST, BenchError, Cert
from peers import BBProxy, BBProxyDirect, BBProxySplice, Direct, Env, Peer, SocatRelay, TlsBaseline, running
from procstat import fd_count, rss_kib, settle, tree_cpu_s

PROFILES: dict[str, dict[str, Any]] = {
    # Sized from measurements on a 2-core VM shared with other work (README): quick 110-150 s, full
    # ~ 11 min with login.py and storm.py (--with), 2026-12-07 on an idle machine.
    "quick": {
        "budget_s": 165,
        "handshakes": 1000,
        "concurrency": 200,
        "repeats": 1,
        "idle_sessions": [1000],
        "idle_burst_sessions": 300,
        "stream_s": 1.5,
        "stream_warmup_s": 0.5,
        "stream_conns": [1, 16],
        "stream_tls": ["1.0"],  # bbproxy's relay; TLS 1.3 too in full mode
        "peer_tls": ["1.0"],  # haproxy, stunnel, Prosody handshakes (bbproxy and python-ssl: 1.0 and 1.3)
        "peer_tls_repeated": ["1.0"],  # ... those of them run in every repeat (the others once)
        "peer_stream_tls": ["1.0"],  # haproxy, stunnel relay
        "burst_concurrency": 500,
        "latency_samples": 6000,
        "resume_handshakes": 500,  # per resumption run (bbproxy and haproxy, full / session ID / ticket)
    },
    "full": {
        "budget_s": 930,
        "handshakes": 3000,
        "concurrency": 200,
        "repeats": 3,
        "idle_sessions": [1000, 9000],
        "idle_burst_sessions": 1000,
        "stream_s": 4.0,
        "stream_warmup_s": 1.0,
        "stream_conns": [1, 16],
        "stream_tls": ["1.3", "1.0"],
        "peer_tls": ["1.0", "1.3"],
        "peer_tls_repeated": ["1.0"],
        "peer_stream_tls": ["1.3", "1.0"],
        "burst_concurrency": 500,
        "latency_samples": 20000,
        "resume_handshakes": 2000,
    },
}
SCENARIOS = ("handshake", "resume", "idle", "idle_burst", "throughput", "latency")

# What each session of idle_burst sends, and gets echoed, before it idles: one read of bbproxy's
# receive buffer each way (a roster, offline messages, a history sync at login).
BURST_STANZA = 256 * 1024
RESUME_KINDS = ("full", "id", "ticket")  # loadgen.py's "resume": none, by session ID, ticket offered


# -- load generator processes ----------------------------------------------------------------


class LoadGen:
    """One loadgen.py process; JSON lines on its stdout, commands on its stdin."""

    def __init__(self, env: Env, cfg: dict[str, Any], name: str) -> None:
        self.env = env
        argv = [env.args.python, str(HERE / "loadgen.py"), json.dumps({"host": HOST, "domain": DOMAIN} | cfg)]
        self.proc = env.procs.start(
            argv, env.log(f"loadgen-{name}"), stdout=subprocess.PIPE, stdin=subprocess.PIPE
        )
        self._buf = b""

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                record: dict[str, Any] = json.loads(line)
                if record.get("event") == event:
                    return record
                if record.get("event") == "result":  # it gave up early
                    raise BenchError(f"load generator failed before '{event}': {record.get('failures')}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"load generator: no '{event}' within {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"load generator exited before '{event}'; see {self.env.workdir}")
                self._buf += chunk

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        self.env.procs.stop(self.proc)


@contextlib.contextmanager
def loadgens(env: Env, cfgs: list[dict[str, Any]], name: str) -> Iterator[list[LoadGen]]:
    gens = [LoadGen(env, cfg, f"{name}-{i}") for i, cfg in enumerate(cfgs)]
    try:
        for g in gens:
            g.expect("ready", 30)
        yield gens
    finally:
        for g in gens:
            g.finish()


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def session_cfg(peer: Peer, mode: str, tls: str, **settings: Any) -> dict[str, Any]:
    """loadgen.py's config for sessions that each end with a 200 B stanza echoed through `peer`
    (none for a peer that does not echo: Prosody), plus the mode's own settings."""
    return {
        "mode": mode,
        "port": peer.port,
        "proto": peer.proto,
        "stanza_size": 200 if peer.echoes else 0,
        "tls": tls,
        **settings,
    }


def warm_up(env: Env, peer: Peer, tls: str) -> None:
    """A few sessions first, so one-time costs (imports, first allocations) are not measured."""
    cfg = session_cfg(peer, "handshake", tls, count=100, concurrency=20, time_limit=15)
    with loadgens(env, [cfg], f"warmup-{peer.name}") as (gen,):
        gen.send("go")
        result = gen.expect("result", 30)
    if result["failed"]:
        raise BenchError(f"warm-up against {peer.name} failed: {result['failures']}")


# -- scenarios ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def run_handshakes(
    env: Env,
    peer: Peer,
    tls: str,
    cert: Cert,
    concurrency: int | None = None,
    resume: str = "full",
    sessions: int | None = None,
) -> dict[str, Any]:
    """``resume``: "full" (every session a full handshake), "id" or "ticket" (every client process
    offers one saved session: loadgen.py's ``resume``); the row counts the sessions that resumed.
    ``sessions``: default the profile's ``handshakes``."""
    p = env.profile
    procs = env.args.clients
    concurrency = concurrency or p["concurrency"]
    sessions = sessions or p["handshakes"]
    warm_up(env, peer, tls)
    extra = {} if resume == "full" else {"resume": resume}
    cfgs = [
        session_cfg(
            peer, "handshake", tls, count=n, concurrency=c, time_limit=60, session_timeout=30, **extra
        )
        for n, c in zip(split(sessions, procs), split(concurrency, procs), strict=True)
    ]
    with loadgens(env, cfgs, f"hs-{peer.name}-{tls}-{cert.kind}-{resume}") as gens:
        cpu0, echo0 = settle(peer.pid), tree_cpu_s(env.echo_pid)
        t0 = time.monotonic()
        for g in gens:
            g.send("go")
        results = [g.expect("result", 100) for g in gens]
        wall = time.monotonic() - t0
    cpu1, echo1 = settle(peer.pid), tree_cpu_s(env.echo_pid)
    ok = sum(r["ok"] for r in results)
    failures: Counter[str] = Counter()
    for r in results:
        failures.update(r["failures"])
    elapsed = max(r["elapsed_s"] for r in results)
    durations = [d for r in results for d in r["durations_ms"]]
    return {
        "peer": peer.name, "proto": peer.proto, "tls": tls, "cert": cert.kind, "sessions": sessions,
        "resume": resume, "resumed": sum(r.get("resumed", 0) for r in results), "concurrency": concurrency,
        "client_procs": procs, "ok": ok, "failed": sum(failures.values()),
        "failures": dict(failures), "elapsed_s": round(elapsed, 3), "wall_s": round(wall, 3),
        "rate_per_s": ok / elapsed if elapsed else 0.0,
        "peer_cpu_ms_per_session": (cpu1 - cpu0) * 1000 / ok if ok else None,
        "client_cpu_ms_per_session": sum(r["client_cpu_s"] for r in results) * 1000 / ok if ok else None,
        "echo_cpu_ms_per_session": (echo1 - echo0) * 1000 / ok if ok else None,
        "negotiated": results[0].get("negotiated"),
        "session_ms_p50": percentile(durations, 50), "session_ms_p99": percentile(durations, 99),
    }  # fmt: skip


def run_idle(env: Env, peer: Peer, sessions: int, cert: Cert, stanza_size: int = 200) -> dict[str, Any]:
    """``sessions`` held idle after one ``stanza_size`` round trip each (peers that echo)."""
    tls, requested = "1.0", sessions
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fds_per_session = peer.fds_per_session
    limit = (hard - 200) // fds_per_session
    if sessions > limit:
        env.notes.append(
            f"idle: {peer.name} capped at {limit} sessions (hard fd limit {hard}, "
            f"{fds_per_session} fds per session)"
        )
        sessions = limit
    procs = max(env.args.clients, -(-sessions // 5000))  # <= 5000 client sockets per process
    warm_up(env, peer, tls)
    cfgs = [
        session_cfg(
            peer,
            "hold",
            tls,
            count=n,
            concurrency=64,
            time_limit=20 + n / 50,
            session_timeout=30,
            hold_limit=300,
        )
        | ({"stanza_size": stanza_size} if peer.echoes else {})
        for n in split(sessions, procs)
    ]
    with loadgens(env, cfgs, f"idle-{peer.name}-{sessions}") as gens:
        settle(peer.pid)
        rss0, fds0 = rss_kib(peer.pid), fd_count(peer.pid)
        t0 = time.monotonic()
        for g in gens:
            g.send("go")
        established = [g.expect("established", 60 + sessions / 50) for g in gens]
        open_s = time.monotonic() - t0
        settle(peer.pid)
        time.sleep(0.5)
        rss1, fds1 = rss_kib(peer.pid), fd_count(peer.pid)
        for g in gens:
            g.send("close")
        closed = [g.expect("result", 60) for g in gens]
    settle(peer.pid)
    time.sleep(0.5)
    rss2, peak, fds2 = rss_kib(peer.pid), rss_kib(peer.pid, "VmHWM"), fd_count(peer.pid)
    ok = sum(e["ok"] for e in established)
    failures: Counter[str] = Counter()
    for e in established:
        failures.update(e["failures"])
    return {
        "peer": peer.name, "proto": peer.proto, "tls": tls, "cert": cert.kind, "requested": requested,
        "sessions": sessions, "ok": ok, "failed": sum(failures.values()), "failures": dict(failures),
        "stanza_size": cfgs[0]["stanza_size"], "open_s": round(open_s, 2),
        "dead_at_close": sum(c["dead_at_close"] for c in closed),
        "rss_before_kib": rss0, "rss_held_kib": rss1, "rss_after_close_kib": rss2,
        "rss_peak_kib": peak,
        "kib_per_session": (rss1 - rss0) / ok if ok else None,
        "fds_before": fds0, "fds_held": fds1,
        "fds_after_close": fds2, "client_procs": procs,
    }  # fmt: skip


def run_stream(env: Env, peer: Peer, conns: int, tls: str | None) -> dict[str, Any]:
    p = env.profile
    cfg = {
        "mode": "stream",
        "port": peer.port,
        "proto": peer.proto,
        "tls": tls or "1.3",
        "concurrency": conns,
        "duration": p["stream_s"],
        "warmup": p["stream_warmup_s"],
        "time_limit": 30,
        "session_timeout": 30,
    }
    with loadgens(env, [cfg], f"stream-{peer.name}-{conns}-{tls}") as (gen,):
        gen.send("go")
        gen.expect("streaming", 60)
        gen.expect("warm", 10 + p["stream_warmup_s"])
        cpu0 = tree_cpu_s(peer.pid) if peer.pid else 0.0
        echo0 = tree_cpu_s(env.echo_pid)
        t0 = time.monotonic()
        gen.expect("end", 10 + p["stream_s"])
        cpu1 = tree_cpu_s(peer.pid) if peer.pid else 0.0
        echo1 = tree_cpu_s(env.echo_pid)
        wall = time.monotonic() - t0
        result = gen.expect("result", 30)
    nbytes = result.get("bytes", 0)
    gb = nbytes / 1e9
    return {
        "peer": peer.name, "tls": tls if peer.tls else None, "conns": conns, "bytes": nbytes,
        "seconds": result.get("seconds"), "failed": result["failed"], "failures": result["failures"],
        "mb_per_s": nbytes / result["seconds"] / 1e6 if nbytes else 0.0,
        "peer_cpu_s_per_gb": (cpu1 - cpu0) / gb if peer.pid and gb else None,
        "peer_cpu_pct": 100 * (cpu1 - cpu0) / wall if peer.pid else None,
        "echo_cpu_pct": 100 * (echo1 - echo0) / wall,
        "client_cpu_pct": 100 * result.get("client_cpu_s", 0) / result["seconds"] if nbytes else None,
        "negotiated": result.get("negotiated"),
    }  # fmt: skip


def run_latency(env: Env) -> list[dict[str, Any]]:
    """Every path's round trips, interleaved in rounds so that all paths see the same machine noise."""
    p = env.profile
    direct, socat, bb, base = Direct(env), SocatRelay(env), BBProxy(env), TlsBaseline(env)
    relays = [peer for peer in env.external_peers() if peer.echoes]  # haproxy, stunnel
    paths: list[tuple[Peer, str | None]] = [(direct, None), (socat, None)]
    for peer in (bb, *relays, base):
        paths += [(peer, "1.3"), (peer, "1.0")]
    rounds = 4
    per_round = max(100, p["latency_samples"] // rounds)
    samples: dict[tuple[str, str | None], list[float]] = {(peer.name, tls): [] for peer, tls in paths}
    failures: dict[tuple[str, str | None], Counter[str]] = {key: Counter() for key in samples}
    negotiated: dict[tuple[str, str | None], dict[str, str]] = {}
    with contextlib.ExitStack() as stack:
        for server in (direct, socat, bb, *relays, base):
            stack.enter_context(running(server, env.certs["ecdsa"] if server.tls else None))
        for rnd in range(rounds):
            for peer, tls in paths:
                cfg = {
                    "mode": "latency",
                    "port": peer.port,
                    "proto": peer.proto,
                    "tls": tls or "1.3",
                    "samples": per_round,
                    "warmup": 100,
                    "time_limit": 30,
                }
                with loadgens(env, [cfg], f"lat-{peer.name}-{tls}-{rnd}") as (gen,):
                    gen.send("go")
                    result = gen.expect("result", 60)
                samples[(peer.name, tls)] += result.get("samples_us", [])
                negotiated[(peer.name, tls)] = result.get("negotiated") or {}
                failures[(peer.name, tls)].update(result["failures"])
    rows = []
    tls_names = {peer.name for peer, _ in paths if peer.tls}
    for (name, tls), values in samples.items():
        values.sort()
        quantiles = {
            f"{q}_us": percentile(values, v)
            for q, v in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
        }
        rows.append({
            "peer": name, "tls": tls if name in tls_names else None, "samples": len(values),
            "rounds": rounds, "failed": sum(failures[(name, tls)].values()),
            "failures": dict(failures[(name, tls)]), "negotiated": negotiated.get((name, tls)), **quantiles,
            "mean_us": statistics.fmean(values) if values else None,
        })  # fmt: skip
    return rows


# -- orchestration -----------------------------------------------------------------------------


Step = Callable[[], "dict[str, Any] | list[dict[str, Any]]"]


def fresh(peer: Peer, cert: Cert | None, run: Callable[[], dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Run one measurement against a freshly started peer (so no scenario inherits another's heap)."""
    with running(peer, cert):
        row = run() | extra
    log = peer.log_summary()
    if log.get("error_lines"):
        peer.env.notes.append(
            f"{peer.name} logged {log['error_lines']} error line(s); first: {log['first_error']}"
        )
    return row | {"server_log": log}


def scenario_plan(env: Env) -> list[tuple[str, str, float, Step]]:
    """(scenario, label, estimated seconds, step) in run order. A step that no longer fits the time
    budget is skipped. The subject and its peers run back to back (and repeats interleave), so
    all see the same machine noise."""
    p, certs, ecdsa = env.profile, env.certs, env.certs["ecdsa"]
    bb, base, socat, direct = BBProxy(env), TlsBaseline(env), SocatRelay(env), Direct(env)
    splice = BBProxySplice(env)
    ext = env.external_peers()
    relays = [peer for peer in ext if peer.echoes]  # haproxy, stunnel (Prosody is no relay)
    plan: list[tuple[str, str, float, Step]] = []
    hs_s = 3 + p["handshakes"] / 450
    for rep in range(p["repeats"]):
        for kind in ("ecdsa", "rsa"):
            for tls in ("1.0", "1.3"):
                peer_tls = p["peer_tls"] if rep == 0 else p["peer_tls_repeated"]
                peers = [bb, *(x for x in ext if tls in peer_tls), base]
                for peer in peers:
                    run = partial(run_handshakes, env, peer, tls, certs[kind])
                    plan.append((
                        "handshake", f"handshake {peer.name} TLS {tls} {kind} #{rep + 1}", hs_s,
                        partial(fresh, peer, certs[kind], run, repeat=rep),
                    ))  # fmt: skip
    # Resumed TLS 1.0 handshakes (issue 19): bbproxy (STARTTLS, and direct TLS like haproxy) and
    # haproxy, full / by session ID / ticket offered, interleaved within each repeat, so the
    # resumed/full and bbproxy/haproxy ratios compare runs a minute apart at most. ECDSA only: a
    # resumption does no certificate work.
    resume_s = 3 + p["resume_handshakes"] / 450
    resume_peers = [bb, BBProxyDirect(env), *(x for x in relays if x.name == "haproxy")]
    for rep in range(p["repeats"]):
        for kind in RESUME_KINDS:
            for peer in resume_peers:
                run = partial(
                    run_handshakes, env, peer, "1.0", ecdsa, resume=kind, sessions=p["resume_handshakes"]
                )
                plan.append((
                    "resume", f"resume {peer.name} TLS 1.0 ecdsa {kind} #{rep + 1}", resume_s,
                    partial(fresh, peer, ecdsa, run, repeat=rep),
                ))  # fmt: skip
    burst = p["burst_concurrency"]
    run = partial(run_handshakes, env, bb, "1.0", ecdsa, burst)
    plan.append((
        "handshake", f"handshake bbproxy TLS 1.0 ecdsa, {burst} concurrent", hs_s,
        partial(fresh, bb, ecdsa, run, repeat=0, burst=True),
    ))  # fmt: skip
    for sessions in p["idle_sessions"]:
        for peer in (bb, *ext, base):
            run = partial(run_idle, env, peer, sessions, ecdsa)
            plan.append((
                "idle", f"idle {peer.name} {sessions} sessions", 6 + sessions / 250,
                partial(fresh, peer, ecdsa, run),
            ))  # fmt: skip
    bursts = p["idle_burst_sessions"]
    for peer in (bb, *relays):
        run = partial(run_idle, env, peer, bursts, ecdsa, stanza_size=BURST_STANZA)
        plan.append((
            "idle_burst", f"idle {peer.name} {bursts} sessions after a {BURST_STANZA // 1024} KiB burst",
            6 + bursts / 100, partial(fresh, peer, ecdsa, run),
        ))  # fmt: skip
    plan.append(("latency", "latency (all paths, interleaved)", 8 + p["latency_samples"] / 1000,
                 partial(run_latency, env)))  # fmt: skip
    stream_s = 3 + p["stream_s"] + p["stream_warmup_s"]
    paths: list[tuple[Peer, str | None]] = [(bb, t) for t in p["stream_tls"]]
    paths += [(peer, t) for peer in relays for t in p["peer_stream_tls"]]
    paths += [(splice, "1.3"), (socat, None), (direct, None)]
    for rep in range(max(1, p["repeats"] - 1)):
        for conns in p["stream_conns"]:
            for peer, stream_tls in paths:
                run = partial(run_stream, env, peer, conns, stream_tls)
                plan.append((
                    "throughput", f"throughput {peer.name} {stream_tls or 'plain'} x{conns} #{rep + 1}",
                    stream_s, partial(fresh, peer, ecdsa if peer.tls else None, run, repeat=rep),
                ))  # fmt: skip
    return [step for step in plan if step[0] in env.args.only]
