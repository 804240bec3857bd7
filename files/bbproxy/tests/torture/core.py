"""bbproxy torture run (issue #9 items 1-3): floods, hostile input and faults, with figures.

The core: ``run(SHORT or FULL, workdir)`` returns the report, ``markdown(report)`` the table,
``write_report(report)`` the files. Its command line is bench/torture.py (``make torture``);
its short form is a CI test (tests/integration/test_torture_short.py).

Starts a private Prosody (Debian package, plaintext c2s on a loopback port) and bbproxy in
front of it (``python -m bbproxy --config FILE``), both through the integration tests' helpers
(files/bbproxy/tests/integration/support.py), then runs, bounded in count and time, on
127.0.0.1 only:

1. floods: connections that never speak, that drip bytes, TLS handshakes that stall, while
   legitimate TLS 1.0 clients (tools/xmpp_login_check.py: slixmpp) log in and exchange
   messages; then more connections than ``max_connections`` (refused cleanly, counted in
   the proxy's log);
2. hostile input: a seeded grammar/mutation generator in process against the sans-IO
   parsers, a network share against the proxy, and the named attacks; JA3 churn (a proxy of its
   own with a narrowed tls.legacy_networks and metrics: TLS 1.0 hellos with their cipher order
   shuffled, each a new fingerprint, must leave the legacy family series bounded);
3. faults: Prosody restarted under load, a black-holed and a refusing backend, a garbage
   certificate + SIGHUP, then the good one + SIGHUP.

write_report writes bench/results/torture-MODE-LOOP-TIMESTAMP.{json,md} and
torture-latest-MODE-LOOP.{json,md}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..helpers import ja3_churn as ja3_churn_hellos
from ..integration.support import (
    PACKAGE_DIR,
    PROSODY_CONFIG,
    REPO_ROOT,
    Prosody,
    ProxyProcess,
    ProxyStarter,
    RecordingBackend,
    client_hello,
    owned_command,
    port_accepts,
    proxy_env,
    run_login_check,
    running_prosody,
    spawn_prosody,
    stop_process,
)
from ..kit import DOMAIN, LOOPBACK, CertPair, Certs, client_context, free_port, make_certs
from . import fuzz
from .xmpp import LoginFailed, XmppSession

RESULTS = REPO_ROOT / "bench" / "results"
# Seconds a session may outlive its client in the backend faults. The proxy's half-close grace
# is set to 1 s there when the proxy has the setting (limits.half_close_timeout).
RELEASE_WAIT = 3.0


def proxy_has_limit(name: str) -> bool:
    """Whether this bbproxy's [limits] knows ``name`` (unknown keys are refused at start)."""
    from bbproxy.config import Limits

    return name in {field.name for field in dataclasses.fields(Limits)}


@dataclasses.dataclass(frozen=True)
class Scale:
    mode: str
    # floods (phase A: held under max_connections, legit clients meanwhile)
    flood_duration: float
    idle_concurrent: int
    idle_budget: int
    drip_concurrent: int
    drip_budget: int
    stall_concurrent: int
    stall_budget: int
    legit_pairs: int
    legit_parallel: int
    # phase B: more than max_connections
    max_connections: int
    overflow_procs: int
    overflow_concurrent: int
    overflow_budget: int
    overflow_duration: float
    pre_tls_timeout: float
    handshake_timeout: float
    # hostile input
    fuzz_pre_tls: int
    fuzz_hello: int
    fuzz_network: int
    ja3_churn: int  # distinct legacy fingerprints sent from a refused address
    # faults
    restarts: int
    held_sessions: int
    backend_connect_timeout: float


SHORT = Scale(
    mode="short",
    flood_duration=10,
    idle_concurrent=300,
    idle_budget=1000,
    drip_concurrent=100,
    drip_budget=300,
    stall_concurrent=100,
    stall_budget=300,
    legit_pairs=2,
    legit_parallel=2,
    max_connections=700,
    overflow_procs=1,
    overflow_concurrent=1000,
    overflow_budget=1500,
    overflow_duration=4,
    pre_tls_timeout=3,
    handshake_timeout=3,
    fuzz_pre_tls=20_000,
    fuzz_hello=10_000,
    fuzz_network=300,
    ja3_churn=500,
    restarts=2,
    held_sessions=4,
    backend_connect_timeout=1.5,
)

# Every field spelled out in both scales, not FULL = replace(SHORT, ...): each reads as the run it is.
FULL = Scale(
    mode="full",
    flood_duration=45,
    idle_concurrent=3000,
    idle_budget=12_000,
    drip_concurrent=1500,
    drip_budget=5000,
    stall_concurrent=2000,
    stall_budget=4000,
    legit_pairs=25,
    legit_parallel=5,
    max_connections=8000,
    overflow_procs=2,
    overflow_concurrent=5000,
    overflow_budget=5000,
    overflow_duration=10,
    pre_tls_timeout=10,
    handshake_timeout=10,
    fuzz_pre_tls=100_000,
    fuzz_hello=50_000,
    fuzz_network=3000,
    ja3_churn=5000,
    restarts=20,
    held_sessions=10,
    backend_connect_timeout=2.0,
)


# --------------------------------------------------------------------------- environment


def private_copy(certs: Certs, directory: Path) -> Certs:
    """Copies of the RSA pair that the certificate fault may overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "torture.crt", directory / "torture.key"
    shutil.copyfile(certs.rsa.cert, cert)
    shutil.copyfile(certs.rsa.key, key)
    key.chmod(0o600)
    pair = CertPair(cert, key)
    return Certs(certs.cafile, pair, certs.ecdsa, certs.other_key)


class RestartableProsody:
    """The integration tests' Prosody, plus stop/start by PID for the restart fault."""

    def __init__(self, directory: Path, users: list[str]) -> None:
        self.directory = directory
        self.port = free_port()
        self.users = users
        self._stack = contextlib.ExitStack()
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: Prosody | None = None
        self._config: Path | None = None

    def __enter__(self) -> RestartableProsody:
        text = PROSODY_CONFIG.format(dir=self.directory, port=self.port, domain=DOMAIN)
        proc, passwords, log, config = self._stack.enter_context(
            running_prosody(self.directory, text, self.users, self.accepting, f"listen on port {self.port}")
        )
        self.proc, self._config = proc, config
        self.info = Prosody(LOOPBACK, self.port, DOMAIN, passwords, log, proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self._stack.close()

    def accepting(self) -> bool:
        return port_accepts(self.port)

    def stop(self) -> None:
        assert self.proc is not None
        stop_process(self.proc)

    def start(self, timeout: float = 20.0) -> float:
        """Start again with the same config and data; returns when the port accepts (monotonic)."""
        assert self._config is not None
        self.proc = spawn_prosody(self._config)
        # Polled every 5 ms, not through running_prosody's start-up wait: the restart fault
        # measures how soon after this the first login works.
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prosody did not come back")
            time.sleep(0.005)
        return time.monotonic()


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


class Sampler:
    """Samples the proxy's RSS and fd count every 0.1 s; keeps the peaks per phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            status = proc_status(self.pid)
            peak = self.peaks.setdefault(self.phase, {})
            for key, value in status.items():
                peak[key] = max(peak.get(key, 0), value)

    def now(self) -> dict[str, int]:
        return proc_status(self.pid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@dataclasses.dataclass
class Env:
    scale: Scale
    workdir: Path
    certs: Certs
    prosody: RestartableProsody
    starter: ProxyStarter
    proxy: ProxyProcess
    sampler: Sampler
    seed: int
    loop: str

    @property
    def pros(self) -> Prosody:
        assert self.prosody.info is not None
        return self.prosody.info

    def log_count(self, needle: str, proxy: ProxyProcess | None = None) -> int:
        return (proxy or self.proxy).log_text().count(needle)

    def session(self, user: str, port: int | None = None, timeout: float = 10.0) -> XmppSession:
        ctx = client_context("1.0", self.certs.cafile)
        return XmppSession(port or self.proxy.port, DOMAIN, user, self.pros.passwords[user], ctx, timeout)


def tracebacks(log: str, limit: int = 3) -> list[str]:
    """The first ``limit`` traceback blocks of a log (each up to the next timestamped line)."""
    blocks: list[str] = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback") and len(blocks) < limit:
            block = [lines[i - 1]] if i else []
            for follow in lines[i:]:
                if follow[:2] == "20" and block and follow is not line:
                    break
                block.append(follow)
            blocks.append("\n".join(block[:60]))
    return blocks


CLOSE_LINE = re.compile(r" duration=([0-9.]+)s close=([^\s:]+(?:: timeout)?)")


def close_durations(log: str, since: int = 0) -> dict[str, dict[str, float]]:
    """Per close reason in the proxy's one-line-per-connection log: count and longest duration."""
    out: dict[str, dict[str, float]] = {}
    for match in CLOSE_LINE.finditer(log, since):
        entry = out.setdefault(match.group(2), {"count": 0, "max_s": 0.0})
        entry["count"] += 1
        entry["max_s"] = max(entry["max_s"], float(match.group(1)))
    return out


def users_for(scale: Scale) -> list[str]:
    count = max(scale.legit_pairs * 2, scale.held_sessions + 2, 4)
    return [f"u{i}" for i in range(count)]


@contextlib.contextmanager
def environment(
    scale: Scale, workdir: Path, certs: Certs | None, seed: int, loop: str = "asyncio"
) -> Iterator[Env]:
    workdir.mkdir(parents=True, exist_ok=True)
    if certs is None:
        (workdir / "certs").mkdir(exist_ok=True)
        certs = make_certs(workdir / "certs")
    certs = private_copy(certs, workdir / "proxy-certs")
    (workdir / "prosody").mkdir()
    with RestartableProsody(workdir / "prosody", users_for(scale)) as prosody:
        starter = ProxyStarter(workdir, certs)
        limits = {
            "max_connections": scale.max_connections,
            "pre_tls_timeout": scale.pre_tls_timeout,
            "handshake_timeout": scale.handshake_timeout,
            "backend_connect_timeout": scale.backend_connect_timeout,
        }
        try:
            proxy = starter(
                backend=f"{LOOPBACK}:{prosody.port}",
                loop=loop,
                direct_tls=True,
                config={"limits": limits},
            )
            sampler = Sampler(proxy.pid)
            try:
                yield Env(scale, workdir, certs, prosody, starter, proxy, sampler, seed, loop)
            finally:
                sampler.stop()
        finally:
            for started in starter.started:
                if not started.stopped:
                    stop_process(started.proc)
                    started.stopped = True


# --------------------------------------------------------------------------- 1. floods


def start_flood(env: Env, **cfg: Any) -> subprocess.Popen[str]:
    cfg.setdefault("port", env.proxy.port)
    cfg.setdefault("domain", DOMAIN)
    cfg.setdefault("seed", env.seed)
    return subprocess.Popen(
        owned_command([sys.executable, "-m", "tests.torture.flood", json.dumps(cfg)]),
        cwd=PACKAGE_DIR,  # tests.torture.flood and the kit it imports (bbproxy too: PYTHONPATH)
        env=proxy_env(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def flood_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)  # type: ignore[arg-type]
        proc.communicate()
        return {"error": "flood process overran its bound"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"no summary (exit {proc.returncode})"}


def first_login_after(env: Env, since: float, *, window: float, poll: float) -> float | None:
    """Seconds from ``since`` (monotonic) to the first login that works, trying every ``poll``
    seconds; None when none has worked ``window`` seconds after ``since``."""
    while time.monotonic() < since + window:
        session = env.session("u0", timeout=5)
        try:
            session.login()
            return time.monotonic() - since
        except LoginFailed:
            time.sleep(poll)
        finally:
            session.close()
    return None


def legit_pair(env: Env, index: int) -> dict[str, Any]:
    start = time.monotonic()
    result = run_login_check(
        port=env.proxy.port, prosody=env.pros, cafile=env.certs.cafile, tls="1.0",
        user=f"u{2 * index}", peer=f"u{2 * index + 1}", timeout=40,
    )  # fmt: skip
    last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    return {"ok": result.returncode == 0, "seconds": round(time.monotonic() - start, 2), "line": last[:200]}


def scenario_floods(env: Env) -> dict[str, Any]:
    s = env.scale
    env.sampler.phase = "flood-hold"
    tracebacks_before = env.log_count("Traceback")
    log_offset = len(env.proxy.log_text())
    refused_before = env.log_count("close=refused-")
    base = {"duration": s.flood_duration, "rate": 1000}
    floods = [
        start_flood(env, mode="idle", concurrent=s.idle_concurrent, budget=s.idle_budget, **base),
        start_flood(env, mode="drip", concurrent=s.drip_concurrent, budget=s.drip_budget, **base),
        start_flood(
            env, mode="stall", concurrent=s.stall_concurrent, budget=s.stall_budget,
            hello_hex=client_hello("1.0").hex(), **base,
        ),
    ]  # fmt: skip
    time.sleep(min(3.0, s.flood_duration / 4))  # let the flood reach its level first
    with ThreadPoolExecutor(max_workers=s.legit_parallel) as pool:
        legit = list(pool.map(lambda i: legit_pair(env, i), range(s.legit_pairs)))
    hold = [flood_result(p, s.flood_duration + 30) for p in floods]
    refused_hold = env.log_count("close=refused-") - refused_before
    closes_hold = close_durations(env.proxy.log_text(), log_offset)
    peak_hold = dict(env.sampler.peaks.get("flood-hold", {}))

    # Phase B: more connections than max_connections. Refusals must be clean and visible.
    env.sampler.phase = "flood-overflow"
    refused_before = env.log_count("close=refused-")
    overflow = [
        start_flood(env, mode="idle", concurrent=s.overflow_concurrent, budget=s.overflow_budget,
                    duration=s.overflow_duration, rate=3000, seed=env.seed + i)
        for i in range(s.overflow_procs)
    ]  # fmt: skip
    time.sleep(min(2.0, s.overflow_duration / 2))
    during: str
    probe = env.session("u0", timeout=5)
    try:
        probe.login()
        during = "logged in"
    except LoginFailed as exc:
        during = f"refused: <{exc.condition}/>" if exc.condition else f"failed: {exc}"
    finally:
        probe.close()
    over = [flood_result(p, s.overflow_duration + 30) for p in overflow]
    flood_end = time.monotonic()
    recovered_after = first_login_after(env, flood_end, window=15, poll=0.05)
    refused_overflow = env.log_count("close=refused-") - refused_before
    after = legit_pair(env, 0)

    def total(results: list[dict[str, Any]], key: str) -> int:
        return sum(int(r.get(key, 0)) for r in results)

    outcomes: Counter[str] = Counter()
    for r in hold + over:
        outcomes.update(r.get("outcomes", {}))
    idle_connects = hold[0].get("connects", 0) + total(over, "connects")
    emfile = env.log_count("Too many open files")
    phase_tracebacks = env.log_count("Traceback") - tracebacks_before
    lost = sum(not r["ok"] for r in legit) + (not after["ok"]) + (recovered_after is None) + emfile
    lost += sum("error" in r for r in hold + over)
    return {
        "hold": hold,
        "overflow": over,
        "legit": legit,
        "legit_ok": sum(r["ok"] for r in legit),
        "legit_clients": 2 * len(legit),
        "legit_max_s": max((r["seconds"] for r in legit), default=0),
        "refused_in_log_hold": refused_hold,
        "proxy_closes_hold": closes_hold,
        "refused_in_log_overflow": refused_overflow,
        "refusals_seen_by_clients": outcomes.get("resource-constraint", 0),
        "login_during_overflow": during,
        "login_ok_after_overflow_s": None if recovered_after is None else round(recovered_after, 3),
        "pair_after_overflow_ok": after["ok"],
        "slowloris_connects": idle_connects,
        "drip_connects": hold[1].get("connects", 0),
        "stall_connects": hold[2].get("connects", 0),
        "peak_open_hold": total(hold, "peak_open"),
        "outcomes": dict(outcomes.most_common()),
        "proxy_peak_hold": peak_hold,
        "proxy_peak_overflow": dict(env.sampler.peaks.get("flood-overflow", {})),
        "emfile_in_log": emfile,
        "tracebacks": phase_tracebacks,
        "lost": lost,
    }


# --------------------------------------------------------------------------- 2. hostile input


def scenario_hostile(env: Env) -> dict[str, Any]:
    s = env.scale
    env.sampler.phase = "hostile"
    tracebacks_before = env.log_count("Traceback")
    before = env.sampler.now()
    in_process = fuzz.run_in_process(s.fuzz_pre_tls, s.fuzz_hello, env.seed)
    bound = s.pre_tls_timeout + 5
    network = fuzz.run_network(env.proxy.port, s.fuzz_network, env.seed, timeout=bound)
    attacks = fuzz.run_attacks(
        env.proxy.port,
        str(env.certs.cafile),
        client_hello("1.0"),
        timeout=bound,
        tracebacks=lambda: env.log_count("Traceback"),
    )
    after = env.sampler.now()
    tracebacks = env.log_count("Traceback") - tracebacks_before
    churn = ja3_churn(env)
    lost = len(in_process["problems"]) + network["not_closed_within_bound"] + len(network["mismatches"])
    lost += sum(not a["passed"] for a in attacks) + (not churn["passed"])
    return {
        "in_process": in_process,
        "network": network,
        "attacks": attacks,
        "ja3_churn": churn,
        "rss_kib_before": before.get("VmRSS"),
        "rss_kib_after": after.get("VmRSS"),
        "fds_before": before.get("fds"),
        "fds_after": after.get("fds"),
        "tracebacks": tracebacks,
        "lost": lost,
    }


def _legacy_families(metrics_port: int) -> dict[tuple[str, str], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.labels["family"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "bbproxy_legacy_clients"
        for sample in family.samples
    }


def ja3_churn(env: Env) -> dict[str, Any]:
    """Refused legacy hellos with made-up fingerprints must not grow the family series; a real
    TLS 1.0 client from the allowed address still gets its own. A proxy of its own (metrics on,
    tls.legacy_networks = 127.0.0.2 only, the churn comes from 127.0.0.1)."""
    count, bound = env.scale.ja3_churn, env.scale.handshake_timeout + 5
    metrics_port = free_port()
    proxy = env.starter(
        backend=f"{LOOPBACK}:{env.prosody.port}",
        loop=env.loop,
        direct_tls=True,
        config={"metrics_listen": f"{LOOPBACK}:{metrics_port}", "tls": {"legacy_networks": ["127.0.0.2/32"]}},
    )
    hellos = ja3_churn_hellos(client_hello("1.0"), count, env.seed)
    assert proxy.direct_tls_port is not None

    def one(hello: bytes) -> bool:
        with socket.create_connection((LOOPBACK, proxy.direct_tls_port), timeout=bound) as sock:
            sock.sendall(hello)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            return answer[:1] == b"\x15"  # an alert, then the close

    start = time.monotonic()
    try:
        with ThreadPoolExecutor(16) as pool:
            alerted = sum(pool.map(one, hellos))
        churn_s = time.monotonic() - start
        families_after_churn = _legacy_families(metrics_port)
        with socket.create_connection(
            (LOOPBACK, proxy.direct_tls_port), timeout=bound, source_address=("127.0.0.2", 0)
        ) as raw:
            ctx = client_context("1.0", env.certs.cafile)
            with ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
                device_version = tls.version()
        deadline = time.monotonic() + bound
        families = _legacy_families(metrics_port)
        while len(families) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            families = _legacy_families(metrics_port)
    finally:
        stop_process(proxy.proc)
        proxy.stopped = True
    device = [name for name, outcome in families if name.startswith("TLSv1/") and outcome == "served"]
    refused = ("unknown", "refused")
    passed = (
        alerted == count
        and families_after_churn == {refused: count}
        and device_version == "TLSv1"
        and len(device) == 1
        and families.get(refused) == count
        and len(families) == 2
    )
    return {
        "hellos": count,
        "alerted": alerted,
        "seconds": round(churn_s, 2),
        "series_after_churn": len(families_after_churn),
        "series_after_device": len(families),
        "device_series": device,
        "passed": passed,
    }


# --------------------------------------------------------------------------- 3. faults


def exchange_message(env: Env, sender: XmppSession, receiver: XmppSession) -> bool:
    token = f"torture-{time.monotonic_ns()}"
    with contextlib.suppress(LoginFailed):
        sender.send_message(receiver.jid, token)
        return receiver.wait_for(token.encode(), 10)
    return False


def login_pair(env: Env, a: str, b: str) -> tuple[XmppSession, XmppSession] | None:
    first, second = env.session(a), env.session(b)
    try:
        first.login()
        second.login()
    except LoginFailed:
        first.close()
        second.close()
        return None
    return first, second


def restart_prosody(env: Env) -> dict[str, Any]:
    s = env.scale
    rounds = []
    # Background load for the whole scenario: silent and stalled-handshake connections.
    flood = start_flood(
        env,
        mode="idle",
        concurrent=max(s.idle_concurrent // 10, 20),
        budget=s.idle_budget,
        duration=s.restarts * 6 + 10,
        rate=200,
    )
    try:
        rounds = _restart_rounds(env)
    finally:
        flood.send_signal(signal.SIGTERM)
        background = flood_result(flood, 10)
    return _restart_summary(rounds, background)


def _restart_rounds(env: Env) -> list[dict[str, Any]]:
    s = env.scale
    rounds = []
    for n in range(s.restarts):
        held: list[XmppSession] = []
        for i in range(s.held_sessions):
            session = env.session(f"u{i + 2}")
            with contextlib.suppress(LoginFailed):
                session.login()
                held.append(session)
        pair = login_pair(env, "u0", "u1")
        before_ok = pair is not None and exchange_message(env, *pair)
        if pair:
            held.extend(pair)
        stop_at = time.monotonic()
        env.prosody.stop()
        endings = Counter(session.wait_closed(5)[0] for session in held)
        for session in held:
            session.close()
        down = env.session("u0", timeout=5)
        try:
            down.login()
            while_down = "logged in?!"
        except LoginFailed as exc:
            while_down = f"<{exc.condition}/>" if exc.condition else str(exc)
        finally:
            down.close()
        up_at = env.prosody.start()
        recovered = first_login_after(env, up_at, window=10, poll=0.01)
        pair = login_pair(env, "u0", "u1")
        after_ok = pair is not None and exchange_message(env, *pair)
        if pair:
            for session in pair:
                session.close()
        rounds.append(
            {
                "round": n + 1,
                "held": len(held),
                "endings": dict(endings),
                "while_down": while_down,
                "prosody_down_s": round(up_at - stop_at, 2),
                "login_ok_after_up_s": None if recovered is None else round(recovered, 3),
                "message_before": before_ok,
                "message_after": after_ok,
            }
        )
    return rounds


def _restart_summary(rounds: list[dict[str, Any]], background: dict[str, Any]) -> dict[str, Any]:
    recoveries = [r["login_ok_after_up_s"] for r in rounds if r["login_ok_after_up_s"] is not None]
    hanging = sum(r["endings"].get("still-open", 0) for r in rounds)
    lost = hanging + sum(r["login_ok_after_up_s"] is None for r in rounds)
    lost += sum(not r["message_before"] or not r["message_after"] for r in rounds)
    endings: Counter[str] = Counter()
    for r in rounds:
        endings.update(r["endings"])
    return {
        "restarts": len(rounds),
        "sessions_ended": dict(endings),
        "while_down": dict(Counter(r["while_down"] for r in rounds)),
        "login_ok_after_up_s_max": max(recoveries, default=None),
        "login_ok_after_up_s_median": sorted(recoveries)[len(recoveries) // 2] if recoveries else None,
        "messages_ok": sum(r["message_before"] + r["message_after"] for r in rounds),
        "background_flood": background,
        "rounds": rounds,
        "lost": lost,
    }


def backend_faults(env: Env) -> dict[str, Any]:
    """Backends that fail in three ways; the first two must be answered within the connect timeout.

    The third (a listener whose owner never accept()s: TCP connects, nobody speaks, like a hung
    Prosody) is an observation: the proxy has no timeout for the backend's first answer.
    """
    s = env.scale
    rows = []
    stalled = RecordingBackend(stalled=True)
    silent = socket.create_server((LOOPBACK, 0), backlog=16)  # listens, never accept()s
    try:
        for label, backend, expected in (
            ("black-holed (accept queue full, SYNs dropped)", stalled.address, True),
            ("refusing (nothing listens)", f"{LOOPBACK}:{free_port()}", True),
            (
                "silent (listens, never accept()s, never answers)",
                f"{LOOPBACK}:{silent.getsockname()[1]}",
                None,
            ),
        ):
            limits: dict[str, float] = {
                "backend_connect_timeout": s.backend_connect_timeout,
                "shutdown_grace": 1,
            }
            if proxy_has_limit("half_close_timeout"):
                limits["half_close_timeout"] = 1.0
            proxy = env.starter(backend=backend, loop=env.loop, config={"limits": limits})
            start = time.monotonic()
            session = env.session("u0", port=proxy.port, timeout=s.backend_connect_timeout + 3)
            try:
                session.login()
                got = "logged in?!"
            except LoginFailed as exc:
                got = f"{exc.stage}: <{exc.condition}/>" if exc.condition else str(exc)
            finally:
                session.close()
            elapsed = time.monotonic() - start
            left = time.monotonic()
            released = None  # how long the proxy kept the session after the client left
            while time.monotonic() < left + RELEASE_WAIT:
                if " close=" in proxy.log_text():
                    released = round(time.monotonic() - left, 2)
                    break
                time.sleep(0.05)
            proxy.stopped = True  # stopped here: exit status and tracebacks are results
            status = stop_process(proxy.proc)
            log = proxy.log_text()
            answered = got.endswith("<remote-connection-failed/>") and elapsed < s.backend_connect_timeout + 3
            ok = answered and released is not None if expected else None
            rows.append(
                {
                    "backend": label,
                    "answer": got,
                    "seconds": round(elapsed, 2),
                    "released_s": released,
                    "ok": ok,
                    "exit_status": status,
                    "tracebacks": log.count("Traceback"),
                    "traceback_samples": tracebacks(log, 1),
                }
            )
    finally:
        stalled.close()
        silent.close()
    return {
        "rows": rows,
        "connect_timeout_s": s.backend_connect_timeout,
        "lost": sum(r["ok"] is False for r in rows),
    }


def certificate_fault(env: Env) -> dict[str, Any]:
    cert = env.certs.rsa.cert
    good = cert.read_bytes()
    live = login_pair(env, "u2", "u3")
    steps: dict[str, Any] = {}

    def reload_and_wait(needle: str) -> bool:
        count = env.log_count(needle)
        os.kill(env.proxy.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if env.log_count(needle) > count:
                return True
            time.sleep(0.02)
        return False

    def new_login() -> bool:
        pair = login_pair(env, "u0", "u1")
        if pair is None:
            return False
        ok = exchange_message(env, *pair)
        for session in pair:
            session.close()
        return ok

    try:
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        steps["garbage_reload_refused"] = reload_and_wait("reload refused")
        steps["login_with_garbage_on_disk"] = new_login()
    finally:
        cert.write_bytes(good)
    steps["good_reload_accepted"] = reload_and_wait("certificates reloaded")
    steps["login_after_fix"] = new_login()
    steps["live_session_kept"] = live is not None and exchange_message(env, *live)
    if live:
        for session in live:
            session.close()
    steps["lost"] = sum(not v for v in steps.values())
    return steps


def scenario_faults(env: Env) -> dict[str, Any]:
    env.sampler.phase = "faults"
    restarts = restart_prosody(env)
    backends = backend_faults(env)
    cert = certificate_fault(env)
    return {
        "prosody_restarts": restarts,
        "backend": backends,
        "certificate": cert,
        "not_run_here": {
            "proxy kill -9 under systemd": "no systemd on this host (Molecule containers have it)",
            "disk full for logs": "needs a private filesystem; not faked here",
        },
        "lost": restarts["lost"] + backends["lost"] + cert["lost"],
    }


# --------------------------------------------------------------------------- run + report


def still_serving(env: Env) -> bool:
    pair = login_pair(env, "u0", "u1")
    if pair is None:
        return False
    ok = exchange_message(env, *pair)
    for session in pair:
        session.close()
    return ok and env.proxy.is_running()


def run(
    scale: Scale,
    workdir: Path,
    certs: Certs | None = None,
    seed: int = 9,
    scenarios: tuple[str, ...] = ("floods", "hostile", "faults"),
    loop: str = "asyncio",
) -> dict[str, Any]:
    started = time.monotonic()
    steps: dict[str, Callable[[Env], dict[str, Any]]] = {
        "floods": scenario_floods,
        "hostile": scenario_hostile,
        "faults": scenario_faults,
    }
    report: dict[str, Any] = {
        "mode": scale.mode,
        "seed": seed,
        "loop": loop,
        "scale": dataclasses.asdict(scale),
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": _git_head(),
    }
    with environment(scale, workdir, certs, seed, loop) as env:
        for name in scenarios:
            t0 = time.monotonic()
            report[name] = steps[name](env)
            report[name]["seconds"] = round(time.monotonic() - t0, 1)
        env.sampler.phase = "end"
        report["still_serving"] = still_serving(env)
        report["proxy_hwm_kib"] = env.sampler.now().get("VmHWM")
        report["proxy_peak_fds"] = max((p.get("fds", 0) for p in env.sampler.peaks.values()), default=0)
        report["tracebacks_in_log"] = env.log_count("Traceback")
        report["traceback_samples"] = tracebacks(env.proxy.log_text())
        report["refusals_in_log"] = env.log_count("close=refused-")
        report["proxy_alive"] = env.proxy.is_running()
        env.proxy.stopped = True  # stopped here: the exit status is a result, tracebacks are counted
        report["exit_status"] = stop_process(env.proxy.proc)
        report["clean_exit"] = report["exit_status"] == 0
    # Lost: sessions, messages or logins lost, hangs, a crash, an unclean exit. Tracebacks in the
    # log are findings of their own (counted apart: see the end row and the exit status).
    report["lost"] = sum(report[name]["lost"] for name in scenarios)
    report["lost"] += (not report["still_serving"]) + (not report["clean_exit"])
    report["findings"] = findings(report)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def findings(report: dict[str, Any]) -> list[str]:
    """Everything that is not a loss but is wrong: tracebacks, unclean exits, sessions kept."""
    found = []
    if report["tracebacks_in_log"]:
        first = report["traceback_samples"][0].splitlines() if report["traceback_samples"] else ["?"]
        found.append(f"{report['tracebacks_in_log']} tracebacks in the main proxy's log; first: {first[-1]}")
    for row in report.get("faults", {}).get("backend", {}).get("rows", []):
        if row["exit_status"] != 0 or row["tracebacks"]:
            last = row["traceback_samples"][0].splitlines()[-1] if row["traceback_samples"] else ""
            found.append(
                f"backend {row['backend']}: SIGTERM exit status {row['exit_status']}, "
                f"{row['tracebacks']} traceback(s) {last}"
            )
        if row["released_s"] is None:
            found.append(
                f"backend {row['backend']}: the session outlived its client by more than {RELEASE_WAIT:g} s "
                "(client EOF half-closes toward a backend that never answers; without "
                "limits.half_close_timeout a fixed 30 s grace ends it)"
            )
    return found


def _git_head() -> str:
    """HEAD, plus "+uncommitted" when the proxy's source or this harness differ from it."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO_ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
        harness = ["files/bbproxy/src", "files/bbproxy/tests/torture", "bench/torture.py"]
        dirty = subprocess.run([*git, "status", "--porcelain", "--", *harness],
                               capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
        changed = dirty.stdout.splitlines()
        return head.stdout.strip() + ("+uncommitted" if changed else "")
    return "?"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_fmt(c) for c in cells) + " |"


def _flood_rows(report: dict[str, Any]) -> list[str]:
    f, sc = report["floods"], report["scale"]
    peak, po = f["proxy_peak_hold"], f["proxy_peak_overflow"]
    legit = (
        f"{f['legit_ok']}/{len(f['legit'])} login+message pairs ({f['legit_clients']} TLS 1.0 slixmpp "
        f"clients) OK, slowest {f['legit_max_s']} s; proxy peak RSS {_mib(peak.get('VmHWM'))}, "
        f"{peak.get('fds', '-')} fds; {f['tracebacks']} tracebacks in the proxy log"
    )
    rows = [
        _row(
            "flood held under max_connections",
            f"{f['peak_open_hold']} flood connections open at once (max_connections {sc['max_connections']})",
            legit,
            f["lost"],
        )
    ]
    timeout = max(sc["pre_tls_timeout"], sc["handshake_timeout"])
    for r in f["hold"]:
        what = {
            "idle": "silent (slowloris)",
            "drip": "dripping 1 byte / 0.5 s",
            "stall": "stalled TLS handshake",
        }
        rows.append(
            _row(
                f"- {what.get(r.get('mode', ''), r.get('mode'))}",
                f"{r.get('connects')} connects, {r.get('peak_open')} at once",
                f"ended by the proxy: {_counts(r.get('outcomes', {}))}; longest-lived "
                f"{r.get('max_lifetime_closed_s')} s (timeout {timeout:g} s)",
                "-",
            )
        )
    closes = f.get("proxy_closes_hold", {})
    rows.append(
        _row(
            "- as the proxy logged them",
            ", ".join(f"{reason} {int(v['count'])}" for reason, v in closes.items()) or "-",
            "longest duration from accept: "
            + (
                ", ".join(
                    f"{reason} {v['max_s']:.2f} s" for reason, v in closes.items() if "timeout" in reason
                )
                or "-"
            ),
            "-",
        )
    )
    rows.append(
        _row(
            f"flood over max_connections={sc['max_connections']}",
            f"{sum(r.get('connects', 0) for r in f['overflow'])} silent connects",
            f"{f['refused_in_log_overflow']} refused (log `close=refused-max-connections`), "
            f"{f['refusals_seen_by_clients']} flood clients got `resource-constraint`; peak "
            f"{po.get('fds', '-')} fds; a login meanwhile: {f['login_during_overflow']}; login OK "
            f"{_fmt(f['login_ok_after_overflow_s'])} s after the flood; login+message pair after: "
            f"{f['pair_after_overflow_ok']}",
            "0" if f["pair_after_overflow_ok"] and f["login_ok_after_overflow_s"] is not None else "1",
        )
    )
    rows.append(_row("slowloris connects, whole run", f["slowloris_connects"], "-", "-"))
    return rows


def _hostile_rows(report: dict[str, Any]) -> list[str]:
    h, sc = report["hostile"], report["scale"]
    ip, net = h["in_process"], h["network"]
    passed = sum(a["passed"] for a in h["attacks"])
    net_bad = len(net["mismatches"]) + net["not_closed_within_bound"]
    return [
        _row(
            "hostile input, in process",
            f"{ip['pre_tls']['cases']} pre-TLS dialogues (whole + random chunks), "
            f"{ip['clienthello']['cases']} ClientHellos (random chunks)",
            f"{len(ip['problems'])} broken invariants, {len(ip['notes'])} notes (below); "
            f"{ip['pre_tls']['seconds'] + ip['clienthello']['seconds']:.1f} s",
            len(ip["problems"]),
        ),
        _row(
            "hostile input, network",
            f"{net['cases']} generated cases over sockets",
            f"{net['cases'] - net_bad}/{net['cases']} answered as the in-process parser predicts and closed "
            f"within {sc['pre_tls_timeout'] + 5:g} s (slowest {net['slowest_s']} s); proxy RSS "
            f"{_mib(h['rss_kib_before'])} -> {_mib(h['rss_kib_after'])}, "
            f"fds {h['fds_before']} -> {h['fds_after']}",
            net_bad,
        ),
        _row(
            "named attacks",
            f"{len(h['attacks'])} (table below)",
            f"{passed}/{len(h['attacks'])} as expected; {h['tracebacks']} tracebacks in the proxy log",
            len(h["attacks"]) - passed,
        ),
        _row(
            "JA3 churn",
            f"{h['ja3_churn']['hellos']} TLS 1.0 hellos, cipher order shuffled, from an address outside "
            "tls.legacy_networks; then one real TLS 1.0 client from inside",
            f"{h['ja3_churn']['alerted']} refused with an alert in {h['ja3_churn']['seconds']} s; "
            f"legacy family series: {h['ja3_churn']['series_after_churn']} after the churn, "
            f"{h['ja3_churn']['series_after_device']} after the device (its own)",
            int(not h["ja3_churn"]["passed"]),
        ),
    ]


def _fault_rows(report: dict[str, Any]) -> list[str]:
    fa, sc = report["faults"], report["scale"]
    r = fa["prosody_restarts"]
    rows = [
        _row(
            "Prosody restarted under load",
            f"{r['restarts']} SIGTERM + start, {sc['held_sessions'] + 2} sessions held each, "
            f"{r['background_flood'].get('connects', 0)} flood connects meanwhile",
            f"held sessions ended: {_counts(r['sessions_ended'])}; a login while down: "
            f"{_counts(r['while_down'])}; first login OK {_fmt(r['login_ok_after_up_s_median'])} s (median), "
            f"{_fmt(r['login_ok_after_up_s_max'])} s (max) after Prosody's port is back; "
            "messages before/after "
            f"each restart: {r['messages_ok']}/{2 * r['restarts']}",
            r["lost"],
        )
    ]
    for row in fa["backend"]["rows"]:
        rows.append(
            _row(
                f"backend {row['backend']}",
                f"1 login, backend_connect_timeout {fa['backend']['connect_timeout_s']:g} s",
                f"{row['answer']} after {row['seconds']} s; session released "
                + (
                    f"{row['released_s']} s after the client left"
                    if row["released_s"] is not None
                    else f"**not within {RELEASE_WAIT:g} s after the client left** (a finding)"
                )
                + f"; SIGTERM exit status {row['exit_status']}"
                + (f", **{row['tracebacks']} traceback(s)**" if row["tracebacks"] else ""),
                1 if row["ok"] is False else 0,
            )
        )
    c = fa["certificate"]
    rows.append(
        _row(
            "certificate file replaced by garbage + SIGHUP, then fixed + SIGHUP",
            "1 live session, new logins",
            f"garbage refused: {c['garbage_reload_refused']}; logins meanwhile: "
            f"{c['login_with_garbage_on_disk']}; fix reloaded: {c['good_reload_accepted']}; login after: "
            f"{c['login_after_fix']}; live session kept: {c['live_session_kept']}",
            c["lost"],
        )
    )
    rows += [_row(name, "not run here", why, "-") for name, why in fa["not_run_here"].items()]
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# bbproxy torture run ({report['mode']})",
        "",
        f"{report['when']}, git {report['git']}, seed {report['seed']}, {report['seconds']} s: "
        f"`bench/torture.py --{report['mode']} --loop {report['loop']}`. Loopback only; "
        f"Prosody {_prosody_version()} behind bbproxy; load generators are separate processes.",
        "",
        "*lost*: logins, sessions or messages lost, connections that hung past their bound, wrong answers, "
        "a crash or an unclean exit. Every count and duration is bounded "
        "(see `Scale` in files/bbproxy/tests/torture/core.py).",
        "",
        "| scenario | load / inputs | survived | lost |",
        "| --- | --- | --- | --- |",
    ]
    if "floods" in report:
        lines += _flood_rows(report)
    if "hostile" in report:
        lines += _hostile_rows(report)
    if "faults" in report:
        lines += _fault_rows(report)
    lines.append(
        _row(
            "**end**",
            f"proxy still serving: {report['still_serving']}",
            f"peak RSS (VmHWM) {_mib(report['proxy_hwm_kib'])}, peak {report['proxy_peak_fds']} fds, "
            f"{report['refusals_in_log']} refusals logged, clean SIGTERM exit: {report['clean_exit']}; "
            + (
                f"**{report['tracebacks_in_log']} tracebacks in the proxy log** (a finding: below)"
                if report["tracebacks_in_log"]
                else "0 tracebacks in the proxy log"
            ),
            f"**{report['lost']}**",
        )
    )
    h = report.get("hostile")
    if h:
        lines += [
            "",
            "## Named attacks",
            "",
            "| attack | expected | result | ok | tracebacks logged |",
            "| --- | --- | --- | --- | --- |",
        ]
        for a in h["attacks"]:
            ok = "yes" if a["passed"] else "NO"
            lines.append(_row(a["attack"], a["expected"], a["result"], ok, a.get("tracebacks", "-")))
        lines += ["", "Network fuzz outcomes: " + _counts(h["network"]["outcomes"])]
        lines += ["", "In-process pre-TLS outcomes: " + _counts(h["in_process"]["pre_tls"]["outcomes"])]
        lines += [
            "",
            "In-process ClientHello outcomes: " + _counts(h["in_process"]["clienthello"]["outcomes"]),
        ]
        problems = h["in_process"]["problems"] + h["network"]["mismatches"]
        if problems:
            lines += ["", "Findings (counted as lost):", *[f"- `{p[:300]!r}`" for p in problems]]
        notes = h["in_process"]["notes"]
        if notes:
            lines += ["", "Notes (a stream error either way, but its condition depends on the chunking):"]
            lines += [f"- `{n[:300]!r}`" for n in notes]
    if report.get("findings"):
        lines += ["", "## Findings (not losses, but wrong)", ""]
        lines += [f"- {_fmt(item)}" for item in report["findings"]]
    samples = list(report.get("traceback_samples", []))
    for row in report.get("faults", {}).get("backend", {}).get("rows", []):
        samples += row.get("traceback_samples", [])
    if samples:
        lines += ["", "## Tracebacks in the proxy logs (first ones)", ""]
        for block in samples:
            lines += ["```", block, "```"]
    fa = report.get("faults")
    if fa and fa["prosody_restarts"]["sessions_ended"].get("closed"):
        lines += [
            "",
            "`closed` = the session ended with TLS close_notify and no stream error: Prosody closed the "
            "TCP connection without the `<system-shutdown/>` it logged as sent (seen without the proxy too). "
            "Nothing hung; the proxy does not add a stream error of its own when the backend just closes.",
        ]
    return "\n".join(lines) + "\n"


def _counts(counter: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "-"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def _prosody_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"],
                             capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
        return out.stdout.strip() or "?"
    return "?"


def write_report(report: dict[str, Any], directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = report["when"].replace("-", "").replace(":", "")
    text = markdown(report)
    name = f"{report['mode']}-{report['loop']}"
    base = directory / f"torture-{name}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    base.with_suffix(".md").write_text(text)
    (directory / f"torture-latest-{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (directory / f"torture-latest-{name}.md").write_text(text)
    return base.with_suffix(".md")
