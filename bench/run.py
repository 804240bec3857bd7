#!/usr/bin/env python3
"""bbproxy benchmark: one command, bounded, loopback only, ratios against peers from the same run.

    python bench/run.py --quick            # < 2 minutes (CI-sized)
    python bench/run.py --full             # < 15 minutes (9 000 idle sessions, more samples)
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

Every server and client is a child process started here, on 127.0.0.1, stopped by PID (process
group) in a finally block. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from servers import LEGACY, MODERN  # bench/servers.py: bbproxy's TLS policy, shared by every TLS peer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"  # every socket in this benchmark; never anything else
DOMAIN = "example.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CIPHERS = f"{MODERN}:{LEGACY}:@SECLEVEL=0"  # TLS <= 1.2 suites of every TLS peer; TLS 1.3 defaults

PROFILES: dict[str, dict[str, Any]] = {
    # Sized from measurements on a 2-core VM shared with other work (README): quick 85-110 s, full ~ 12 min.
    "quick": {
        "budget_s": 115,
        "handshakes": 1000,
        "concurrency": 200,
        "repeats": 1,
        "idle_sessions": [1000],
        "stream_s": 1.5,
        "stream_warmup_s": 0.5,
        "stream_conns": [1, 16],
        "stream_tls": ["1.0"],  # bbproxy's relay; TLS 1.3 too in full mode
        "peer_tls": ["1.0"],  # haproxy, stunnel, Prosody handshakes (bbproxy and python-ssl: 1.0 and 1.3)
        "peer_tls_repeated": ["1.0"],  # ... those of them run in every repeat (the others once)
        "peer_stream_tls": ["1.0"],  # haproxy, stunnel relay
        "burst_concurrency": 500,
        "latency_samples": 6000,
    },
    "full": {
        "budget_s": 870,
        "handshakes": 3000,
        "concurrency": 200,
        "repeats": 3,
        "idle_sessions": [1000, 9000],
        "stream_s": 4.0,
        "stream_warmup_s": 1.0,
        "stream_conns": [1, 16],
        "stream_tls": ["1.3", "1.0"],
        "peer_tls": ["1.0", "1.3"],
        "peer_tls_repeated": ["1.0"],
        "peer_stream_tls": ["1.3", "1.0"],
        "burst_concurrency": 500,
        "latency_samples": 20000,
    },
}
SCENARIOS = ("handshake", "idle", "throughput", "latency")
# Targets written in the issues, for the verdict column (the ratios are the headline).
TARGET_FAILURES = "0 at 200 concurrent (#3)"
TARGET_IDLE_KIB = (64.0, "<= 64 KiB (#3); <= 32 KiB (#8)")
TARGET_CPU_MS_TLS10 = {"rsa": (1.0, "<= 1.0 ms (#8)"), "ecdsa": (0.7, "<= 0.7 ms (#8)")}


class BenchError(Exception):
    """A set-up step failed; the message says which and where its log is."""


# -- processes ------------------------------------------------------------------------------


class Processes:
    """Every child this run starts, each in its own process group; stop_all() ends them by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=kwargs.pop("stdout", out),
                stderr=out,
                stdin=kwargs.pop("stdin", subprocess.DEVNULL),
                start_new_session=True,  # its own group: socat's forked children go with it
                **kwargs,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        # Forked children (socat) may outlive a group leader that exited on its own.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def raise_nofile() -> None:
    """Soft fd limit up to the hard one, for us and (inherited) every child."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def program(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return str(args[0]) if isinstance(args, list) else str(args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = regex.search(text)
        if match:
            return match
        if proc.poll() is not None:
            raise BenchError(f"{program(proc)} exited with {proc.returncode} before it was ready; see {log}")
        time.sleep(0.05)
    raise BenchError(f"not ready after {timeout:.0f}s; see {log}")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """For servers that print nothing (socat): is the port in LISTEN state?"""
    hexport = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(hexport) and fields[3] == "0A":
                return
        if proc.poll() is not None:
            raise BenchError(f"{program(proc)} exited with {proc.returncode}")
        time.sleep(0.05)
    raise BenchError(f"port {port} not listening after {timeout:.0f}s")


# -- /proc accounting -----------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants (forked workers, socat's per-connection children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current not in tree:
            tree.append(current)
            todo.extend(children.get(current, ()))
    return tree


def tree_cpu_s(pid: int) -> float:
    """utime+stime of pid and its live descendants, plus the CPU of children they have reaped."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError):
            f = _stat_fields(member)
            # utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat.
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size (or its peak, field="VmHWM") in KiB, summed over the process tree.
    Forked workers share pages, so the sum over-counts them; the deltas the report uses do not."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
    return total


def fd_count(pid: int) -> int:
    """Open fds over the process tree."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{member}/fd"))
    return total


def settle(pid: int, limit: float = 3.0) -> float:
    """Wait (bounded) until pid's CPU stops moving (closing sessions, reaping children)."""
    deadline = time.monotonic() + limit
    last, still = tree_cpu_s(pid), 0
    while time.monotonic() < deadline and still < 2:
        time.sleep(0.1)
        now = tree_cpu_s(pid)
        still = still + 1 if now == last else 0
        last = now
    return last


class NoiseMeter:
    """How much of the machine processes other than ours used over an interval (shared machines)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        busy, _steal, total = machine_busy()
        own = sum(
            r.ru_utime + r.ru_stime
            for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        )
        if self.env.echo_pid:  # the one long-lived child; every other child is reaped by now
            with contextlib.suppress(OSError):
                own += tree_cpu_s(self.env.echo_pid)
        return busy / CLK_TCK, total / CLK_TCK, own

    def other_pct(self) -> float:
        (b0, t0, o0), (b1, t1, o1) = self.start, self._sample()
        return max(0.0, 100 * ((b1 - b0) - (o1 - o0)) / max(t1 - t0, 1e-9))


def machine_busy() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies over all CPUs, to show how noisy the machine was."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    steal = f[7] if len(f) > 7 else 0
    total = sum(f[:8])
    return total - idle, steal, total


# -- certificates, servers under test (peers) ---------------------------------------------------


@dataclass
class Cert:
    kind: str  # "ecdsa" or "rsa"
    chain: Path  # leaf + CA, as a real deployment sends leaf + intermediate
    key: Path


def make_certs(workdir: Path) -> dict[str, Cert]:
    """ECDSA P-256 and RSA-2048 chains (CA -> leaf for example.test) with the openssl CLI."""
    if not shutil.which("openssl"):
        raise BenchError("openssl not found (apt-get install openssl)")
    certs = {}
    for kind, newkey in (
        ("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("rsa", ["-newkey", "rsa:2048"]),
    ):
        d = workdir / kind
        d.mkdir()
        common = ["openssl", "req", "-x509", "-nodes", "-days", "2", *newkey]
        subprocess.run(
            [
                *common,
                "-keyout",
                d / "ca.key",
                "-out",
                d / "ca.pem",
                "-subj",
                f"/CN=bbproxy bench {kind} CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *common,
                "-keyout",
                d / "leaf.key",
                "-out",
                d / "leaf.pem",
                "-subj",
                f"/CN={DOMAIN}",
                "-addext",
                f"subjectAltName=DNS:{DOMAIN}",
                "-addext",
                "basicConstraints=CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth",
                "-CA",
                d / "ca.pem",
                "-CAkey",
                d / "ca.key",
            ],
            check=True,
            capture_output=True,
        )
        (d / "chain.pem").write_bytes((d / "leaf.pem").read_bytes() + (d / "ca.pem").read_bytes())
        certs[kind] = Cert(kind, d / "chain.pem", d / "leaf.key")
    return certs


@dataclass
class Env:
    """What every scenario needs: paths, the echo backend, the child processes, the clock."""

    args: argparse.Namespace
    profile: dict[str, Any]
    workdir: Path
    procs: Processes
    certs: dict[str, Cert] = field(default_factory=dict)
    echo_port: int = 0
    echo_pid: int = 0
    echo_loop: str = ""
    deadline: float = 0.0
    notes: list[str] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    starts: int = 0
    missing: dict[str, str] = field(default_factory=dict)  # peer -> why it is not in this run

    def external_peers(self) -> list[ExternalPeer]:
        """haproxy, stunnel, Prosody: those installed, in that order; the others go to `missing`."""
        peers = []
        for cls in EXTERNAL_PEERS:
            if cls.name in self.args.skip_peers:
                self.missing[cls.name] = "skipped (--skip-peers)"
            elif cls.path() is None:
                self.missing[cls.name] = f"not installed (apt-get install {cls.package})"
            else:
                peers.append(cls(self))
        return peers

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"


def max_relayed() -> int:
    """How many relayed sessions (2 fds each) one process can hold under the hard fd limit."""
    return (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200) // 2


class Peer:
    """A server the load generator talks to. Add haproxy/stunnel/Prosody (issue #8) as subclasses.

    proto:  what the client speaks to it ("starttls", "direct-tls" or "plain").
    echoes: whether bytes sent after the handshake come back (through the echo backend).
    pid:   the process whose CPU/RSS is charged to this peer (0 = none, e.g. the echo itself).
    """

    name = "peer"
    proto = "plain"
    tls = True
    echoes = True  # False for a real XMPP server (Prosody): sessions then end after the handshake
    fds_per_session = 1  # 2 for a relay (client + backend)

    def __init__(self, env: Env) -> None:
        self.env = env
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def argv(self, cert: Cert | None) -> list[str]:
        raise NotImplementedError

    def start(self, cert: Cert | None) -> None:
        self.port = free_port()
        argv = self.argv(cert)
        self.env.commands.setdefault(self.name, shlex.join(map(str, argv)))
        self.env.starts += 1
        log = self.log = self.env.log(f"{self.name}-{cert.kind if cert else 'plain'}-{self.env.starts}")
        self.proc = self.env.procs.start(list(map(str, argv)), log)
        self.wait_ready(log)

    def wait_ready(self, log: Path) -> None:
        assert self.proc is not None
        wait_for_line(log, r"\bready\b", self.proc, 20)

    def stop(self) -> None:
        if self.proc is not None:
            self.env.procs.stop(self.proc)
            self.proc = None

    def log_summary(self) -> dict[str, Any]:
        """After stop: error lines in the server's log, and its close reasons (bbproxy's `close=`)."""
        if self.log is None or not self.log.exists():
            return {}
        errors, first = 0, ""
        reasons: Counter[str] = Counter()
        with self.log.open(errors="replace") as lines:
            for line in lines:
                if ERROR_LINE.search(line):
                    errors += 1
                    first = first or line.strip()[:300]
                reason = CLOSE_REASON.search(line)
                if reason:
                    reasons[reason.group(1)] += 1
        return {"error_lines": errors, "first_error": first, "close_reasons": dict(reasons)}


ERROR_LINE = re.compile(r"Traceback|\b(ERROR|CRITICAL)\b|Exception")
CLOSE_REASON = re.compile(r"\bclose=(.+?)\s*$")  # the last field of bbproxy's line; may contain spaces


class BBProxy(Peer):
    name = "bbproxy"
    proto = "starttls"
    fds_per_session = 2

    def argv(self, cert: Cert | None) -> list[str]:
        assert cert is not None
        return [
            self.env.args.python, "-m", "bbproxy",
            "--listen", f"{HOST}:{self.port}", "--backend", f"{HOST}:{self.env.echo_port}",
            "--cert", str(cert.chain), "--key", str(cert.key), "--domain", DOMAIN,
            "--loop", self.env.args.loop, *shlex.split(self.env.args.proxy_args),
        ]  # fmt: skip


class BBProxySplice(BBProxy):
    """bbproxy with ClientHello routing (`--tls-routing legacy-only`): a TLS 1.3 client answers the
    STARTTLS prelude, then its TLS is spliced, still encrypted, to a TLS echo standing in for Prosody's
    direct-TLS port (`servers.py tls-echo`, started and stopped with it; its CPU is not counted). The
    #8 target: this byte splice costs no more CPU per GB than socat's plain relay."""

    name = "bbproxy-splice"

    def start(self, cert: Cert | None) -> None:
        assert cert is not None
        self.tls_echo_port = free_port()
        argv = [
            self.env.args.python, HERE / "servers.py", "tls-echo", "--port", str(self.tls_echo_port),
            "--cert", str(cert.chain), "--key", str(cert.key), "--loop", "auto",
        ]  # fmt: skip
        self.env.commands.setdefault("tls-echo (splice backend)", shlex.join(map(str, argv)))
        log = self.env.log(f"splice-tls-echo-{self.env.starts}")
        self.tls_echo = self.env.procs.start(list(map(str, argv)), log)
        wait_for_line(log, r"\bready\b", self.tls_echo, 20)
        super().start(cert)

    def argv(self, cert: Cert | None) -> list[str]:
        routing = ["--tls-routing", "legacy-only", "--tls-backend", f"{HOST}:{self.tls_echo_port}"]
        return super().argv(cert) + routing

    def stop(self) -> None:
        super().stop()
        self.env.procs.stop(self.tls_echo)


class TlsBaseline(Peer):
    """A plain Python ssl server (asyncio, direct TLS, no XMPP, no relay) with bbproxy's TLS policy."""

    name = "python-ssl"
    proto = "direct-tls"

    def argv(self, cert: Cert | None) -> list[str]:
        assert cert is not None
        return [
            self.env.args.python, HERE / "servers.py", "tls-echo", "--port", str(self.port),
            "--cert", str(cert.chain), "--key", str(cert.key), "--loop", self.env.args.loop,
        ]  # fmt: skip


class SocatRelay(Peer):
    """The plain TCP relay an operator could run instead: one forked socat per connection."""

    name = "socat"
    tls = False

    def argv(self, cert: Cert | None) -> list[str]:
        return [
            "socat",
            f"TCP-LISTEN:{self.port},bind={HOST},reuseaddr,fork,backlog=1024,nodelay",
            f"TCP:{HOST}:{self.env.echo_port},nodelay",
        ]

    def wait_ready(self, log: Path) -> None:
        assert self.proc is not None
        wait_listening(self.port, self.proc, 10)


class ExternalPeer(Peer):
    """A C server an operator could put on the port instead (issue #8), started from its Debian
    package's binary with a config file written to the work dir. Optional: if `binary` is not
    installed, the report says "not installed" for it."""

    binary = ""
    package = ""

    @classmethod
    def path(cls) -> str | None:
        return shutil.which(cls.binary)

    def config_file(self, suffix: str) -> Path:
        return self.env.workdir / f"{self.name}-{self.port}.{suffix}"

    def wait_ready(self, log: Path) -> None:
        assert self.proc is not None
        wait_listening(self.port, self.proc, 20)


class HAProxy(ExternalPeer):
    """haproxy terminating direct TLS (TLS 1.0-1.3, bbproxy's cipher policy) in front of the echo.
    One thread (`nbthread 1`), like one bbproxy process; no per-connection logging."""

    name = "haproxy"
    proto = "direct-tls"
    binary = "haproxy"
    package = "haproxy"
    fds_per_session = 2

    def argv(self, cert: Cert | None) -> list[str]:
        assert cert is not None
        pem = cert.chain.parent / "haproxy.pem"  # haproxy wants chain and key in one file
        if not pem.exists():
            pem.write_bytes(cert.chain.read_bytes() + cert.key.read_bytes())
        cfg = self.config_file("cfg")
        cfg.write_text(
            f"""global
    nbthread 1
    maxconn {max_relayed()}
    ssl-default-bind-options ssl-min-ver TLSv1.0
    ssl-default-bind-ciphers {CIPHERS}

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend tls
    bind {HOST}:{self.port} ssl crt {pem} ssl-min-ver TLSv1.0 ciphers {CIPHERS}
    default_backend echo

backend echo
    server echo {HOST}:{self.env.echo_port}
"""
        )
        return [self.binary, "-db", "-f", str(cfg)]


class Stunnel(ExternalPeer):
    """stunnel terminating direct TLS (TLS 1.0-1.3, bbproxy's cipher policy) in front of the echo.
    A thread per connection (Debian's build); log level warning (no per-connection lines)."""

    name = "stunnel"
    proto = "direct-tls"
    binary = "stunnel4"
    package = "stunnel4"
    fds_per_session = 2

    def argv(self, cert: Cert | None) -> list[str]:
        assert cert is not None
        cfg = self.config_file("conf")
        cfg.write_text(
            f"""foreground = yes
syslog = no
pid =
debug = 4

[tls]
accept = {HOST}:{self.port}
connect = {HOST}:{self.env.echo_port}
cert = {cert.chain}
key = {cert.key}
sslVersionMin = TLSv1
ciphers = {CIPHERS}
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""
        )
        return [self.binary, str(cfg)]


class Prosody(ExternalPeer):
    """Prosody itself with TLS 1.0 enabled (what an operator tries first): STARTTLS on c2s, a
    private config, data dir and pidfile in the work dir. It is the real XMPP server, so its
    stream is no echo: sessions end after the TLS handshake (handshake and idle scenarios only).
    Log level warn (no per-connection lines). Never started without this private --config."""

    name = "prosody"
    proto = "starttls"
    echoes = False
    binary = "prosody"
    package = "prosody"

    def argv(self, cert: Cert | None) -> list[str]:
        assert cert is not None
        home = self.env.workdir / f"prosody-{self.port}"
        for sub in ("data", "certs"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        ssl_opts = (
            f'{{ certificate = "{cert.chain}"; key = "{cert.key}"; protocol = "tlsv1+"; '
            f'ciphers = "{CIPHERS}" }}'
        )
        cfg = self.config_file("cfg.lua")
        cfg.write_text(
            f"""-- private Prosody for bbproxy's benchmark (bench/run.py): loopback only, c2s only
run_as_root = true
pidfile = "{home}/prosody.pid"
data_path = "{home}/data"
certificates = "{home}/certs"
plugin_paths = {{}}
interfaces = {{ "{HOST}" }}
local_interfaces = {{ "{HOST}" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
s2s_ports = {{}}
component_ports = {{}}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "tls"; "saslauth"; "posix" }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = true
authentication = "internal_hashed"
network_settings = {{ nagle = false }}
log = {{ warn = "{home}/prosody.log" }}
ssl = {ssl_opts}

VirtualHost "{DOMAIN}"
    ssl = {ssl_opts}
"""
        )
        return [self.binary, "-F", "--config", str(cfg)]


EXTERNAL_PEERS: tuple[type[ExternalPeer], ...] = (HAProxy, Stunnel, Prosody)


class Direct(Peer):
    """No proxy: the client talks to the echo backend itself."""

    name = "direct"
    tls = False

    def start(self, cert: Cert | None) -> None:
        self.port = self.env.echo_port

    def stop(self) -> None:
        pass


def start_echo(env: Env) -> None:
    log = env.log("echo")
    argv = [env.args.python, str(HERE / "servers.py"), "echo", "--port", str(free_port()), "--loop", "auto"]
    env.commands["echo"] = shlex.join(argv)
    proc = env.procs.start(argv, log)
    match = wait_for_line(log, r"ready (\d+) (\w+)", proc, 20)
    env.echo_port, env.echo_loop, env.echo_pid = int(match.group(1)), match.group(2), proc.pid


@contextlib.contextmanager
def running(peer: Peer, cert: Cert | None) -> Iterator[Peer]:
    peer.start(cert)
    try:
        yield peer
    finally:
        peer.stop()


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


def warm_up(env: Env, peer: Peer, tls: str) -> None:
    """A few sessions first, so one-time costs (imports, first allocations) are not measured."""
    cfg = {
        "mode": "handshake",
        "port": peer.port,
        "proto": peer.proto,
        "stanza_size": 200 if peer.echoes else 0,
        "tls": tls,
        "count": 100,
        "concurrency": 20,
        "time_limit": 15,
    }
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
    env: Env, peer: Peer, tls: str, cert: Cert, concurrency: int | None = None
) -> dict[str, Any]:
    p = env.profile
    procs = env.args.clients
    concurrency = concurrency or p["concurrency"]
    warm_up(env, peer, tls)
    cfgs = [
        {
            "mode": "handshake",
            "port": peer.port,
            "proto": peer.proto,
            "stanza_size": 200 if peer.echoes else 0,
            "tls": tls,
            "count": n,
            "concurrency": c,
            "time_limit": 60,
            "session_timeout": 30,
        }
        for n, c in zip(split(p["handshakes"], procs), split(concurrency, procs), strict=True)
    ]
    with loadgens(env, cfgs, f"hs-{peer.name}-{tls}-{cert.kind}") as gens:
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
        "peer": peer.name, "proto": peer.proto, "tls": tls, "cert": cert.kind, "sessions": p["handshakes"],
        "concurrency": concurrency, "client_procs": procs, "ok": ok, "failed": sum(failures.values()),
        "failures": dict(failures), "elapsed_s": round(elapsed, 3), "wall_s": round(wall, 3),
        "rate_per_s": ok / elapsed if elapsed else 0.0,
        "peer_cpu_ms_per_session": (cpu1 - cpu0) * 1000 / ok if ok else None,
        "client_cpu_ms_per_session": sum(r["client_cpu_s"] for r in results) * 1000 / ok if ok else None,
        "echo_cpu_ms_per_session": (echo1 - echo0) * 1000 / ok if ok else None,
        "negotiated": results[0].get("negotiated"),
        "session_ms_p50": percentile(durations, 50), "session_ms_p99": percentile(durations, 99),
    }  # fmt: skip


def run_idle(env: Env, peer: Peer, sessions: int, cert: Cert) -> dict[str, Any]:
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
        {
            "mode": "hold",
            "port": peer.port,
            "proto": peer.proto,
            "stanza_size": 200 if peer.echoes else 0,
            "tls": tls,
            "count": n,
            "concurrency": 64,
            "time_limit": 20 + n / 50,
            "session_timeout": 30,
            "hold_limit": 300,
        }
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
        "open_s": round(open_s, 2),
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


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when it would mean nothing (no baseline, or a baseline <= 0: a noisy difference)."""
    return a / b if a is not None and b is not None and b > 0 else None


# The peers of issue #8, in table order, and what each one is.
PEER_LABELS = {
    "bbproxy": "bbproxy (STARTTLS + XMPP prelude + relay)",
    "haproxy": "haproxy (direct TLS + relay)",
    "stunnel": "stunnel (direct TLS + relay)",
    "prosody": "Prosody itself (STARTTLS, no relay)",
    "python-ssl": "python-ssl (direct TLS, no relay)",
    "bbproxy-splice": "bbproxy, ClientHello routing: TLS 1.3 spliced to a TLS echo",
    "socat": "socat (plain relay, no TLS)",
    "direct": "direct (no proxy)",
}
HEADLINE_PEERS = ("haproxy", "stunnel", "prosody", "python-ssl", "socat")
TARGET_HAPROXY_HS_RATIO = 1.35  # #8: within 1.35x of haproxy's direct-TLS handshake CPU
TARGET_IDLE_KIB_8 = 32.0  # #8: at 10 000 sessions
TARGET_BURST = 500  # #8: zero failures at 500 concurrent connects


def pick(rows: list[dict[str, Any]], key: str, **match: Any) -> float | None:
    """Median of `key` over the rows matching every `match` item (repeats of one measurement)."""
    return median_of([r for r in rows if all(r.get(k) == v for k, v in match.items())], key)


def headline(
    results: dict[str, list[dict[str, Any]]], profile: dict[str, Any], hard_nofile: int = 0
) -> list[dict[str, Any]]:
    """One row per claim: bbproxy's value, each peer's value from the same run and bbproxy / peer,
    and the issues' targets with a verdict (met: True/False; None = not measured in this run)."""
    rows: list[dict[str, Any]] = []

    def row(
        metric: str,
        unit: str,
        mine: float | None,
        peers: dict[str, float | None],
        targets: list[tuple[str, bool | None]] | None = None,
    ) -> None:
        targets = targets or []
        verdicts = [met for _, met in targets]
        rows.append({
            "metric": metric, "unit": unit, "bbproxy": mine,
            "peers": {name: {"value": v, "ratio": ratio(mine, v)} for name, v in peers.items()},
            "targets": [{"target": t, "met": met} for t, met in targets],
            "met": None if all(m is None for m in verdicts) else all(m is True for m in verdicts),
        })  # fmt: skip

    def at_most(value: float | None, limit: float | None, text: str) -> tuple[str, bool | None]:
        if value is None or limit is None:
            return (text, None)
        return (text, value <= limit)

    hs = [r for r in results.get("handshake", []) if not r.get("burst")]
    for tls in ("1.0", "1.3"):
        for kind in ("ecdsa", "rsa"):
            mine = pick(hs, "peer_cpu_ms_per_session", peer="bbproxy", tls=tls, cert=kind)
            if mine is None:
                continue
            peers = {
                name: pick(hs, "peer_cpu_ms_per_session", peer=name, tls=tls, cert=kind)
                for name in HEADLINE_PEERS[:4]
            }
            targets = []
            if tls == "1.0":
                limit, text = TARGET_CPU_MS_TLS10[kind]
                targets.append(at_most(mine, limit, text))
                haproxy = peers.get("haproxy")
                targets.append(at_most(
                    mine, haproxy * TARGET_HAPROXY_HS_RATIO if haproxy else None,
                    f"<= {TARGET_HAPROXY_HS_RATIO}x haproxy (#8)",
                ))  # fmt: skip
            label = "ECDSA P-256" if kind == "ecdsa" else "RSA-2048"
            row(f"TLS {tls} {label}: server CPU per session", "ms", mine, peers, targets)
    mine = pick(hs, "rate_per_s", peer="bbproxy", tls="1.0", cert="ecdsa")
    if mine is not None:
        peers = {
            name: pick(hs, "rate_per_s", peer=name, tls="1.0", cert="ecdsa") for name in HEADLINE_PEERS[:4]
        }
        row("TLS 1.0 ECDSA: sessions/s (machine-bound, shared cores)", "1/s", mine, peers)
    if hs:
        mine_rows = [r for r in hs if r["peer"] == "bbproxy"]
        failed = sum(r["failed"] for r in mine_rows)
        peers = {
            name: sum(r["failed"] for r in hs if r["peer"] == name)
            for name in HEADLINE_PEERS[:4]
            if any(r["peer"] == name for r in hs)
        }
        row(
            f"failed sessions at {profile['concurrency']} concurrent "
            f"({sum(r['sessions'] for r in mine_rows)} bbproxy sessions)",
            "sessions", failed, peers, [(TARGET_FAILURES, failed == 0)],
        )  # fmt: skip
    bursts = [r for r in results.get("handshake", []) if r.get("burst")]
    burst_failed = sum(r["failed"] for r in bursts) if bursts else None
    row(
        f"failed sessions at {TARGET_BURST} concurrent connects (TLS 1.0 ECDSA, "
        f"{sum(r['sessions'] for r in bursts)} sessions)",
        "sessions", burst_failed, {},
        [(f"0 at {TARGET_BURST} concurrent (#8)", None if burst_failed is None else burst_failed == 0)],
    )  # fmt: skip
    idle = results.get("idle", [])
    for sessions in profile["idle_sessions"]:
        mine_rows = [r for r in idle if r["peer"] == "bbproxy" and r.get("requested") == sessions]
        if not mine_rows:
            continue
        m = mine_rows[0]
        kib = m["kib_per_session"]
        clean = m["failed"] == 0 and m["dead_at_close"] == 0
        peers = {
            name: pick(idle, "kib_per_session", peer=name, requested=sessions) for name in HEADLINE_PEERS[:4]
        }
        limit3, text3 = TARGET_IDLE_KIB
        row(
            f"idle TLS 1.0 session RSS, {m['ok']} sessions", "KiB", kib, peers,
            [
                (text3.split(";")[0] + (", no drops" if clean else ", **sessions dropped**"),
                 kib is not None and kib <= limit3 and clean),
                (f"<= {TARGET_IDLE_KIB_8:.0f} KiB at 10 000 (#8; measured at {m['ok']})",
                 kib is not None and kib <= TARGET_IDLE_KIB_8 and clean),
            ],
        )  # fmt: skip
    if "idle" in results and hard_nofile:
        most = (hard_nofile - 200) // 2
        row(
            f"idle sessions at 10 000 and 50 000: not possible on this machine (hard fd limit "
            f"{hard_nofile} per process, 2 fds per relayed session: at most {most} per process)",
            "sessions", None, {}, [("10 000 and 50 000 sessions with no errors (#8)", None)],
        )  # fmt: skip
    st = results.get("throughput", [])
    for tls in profile["stream_tls"]:
        for conns in profile["stream_conns"]:
            for key, unit, what, better in (
                ("mb_per_s", "MB/s", "throughput", ">="),
                ("peer_cpu_s_per_gb", "s/GB", "relay CPU", "<="),
            ):
                mine = pick(st, key, peer="bbproxy", tls=tls, conns=conns)
                if mine is None:
                    continue
                peers = {
                    name: pick(st, key, peer=name, tls=tls, conns=conns) for name in ("haproxy", "stunnel")
                }
                peers["socat"] = pick(st, key, peer="socat", conns=conns)
                haproxy = peers["haproxy"]
                if haproxy is None:
                    target: tuple[str, bool | None] = (f"{better} haproxy (#8)", None)
                elif better == ">=":
                    target = (">= haproxy (#8)", mine >= haproxy)
                else:
                    target = ("<= haproxy (#8)", mine <= haproxy)
                row(f"relay TLS {tls}, {conns} conn: {what}", unit, mine, peers, [target])
    for conns in profile["stream_conns"]:
        mine = pick(st, "peer_cpu_s_per_gb", peer="bbproxy-splice", conns=conns)
        if mine is None:
            continue
        socat = pick(st, "peer_cpu_s_per_gb", peer="socat", conns=conns)
        row(
            f"ClientHello-routing splice (TLS 1.3 client, legacy-only), {conns} conn: relay CPU",
            "s/GB", mine, {"socat": socat}, [at_most(mine, socat, "<= socat's CPU per GB (#8)")],
        )  # fmt: skip
        mine = pick(st, "mb_per_s", peer="bbproxy-splice", conns=conns)
        socat = pick(st, "mb_per_s", peer="socat", conns=conns)
        row(
            f"ClientHello-routing splice, {conns} conn: throughput (bound by the Python TLS echo)",
            "MB/s", mine, {"socat": socat},
        )  # fmt: skip
    lat = {(r["peer"], r["tls"]): r for r in results.get("latency", []) if not r["failed"]}
    direct = lat.get(("direct", None))

    def added(name: str, tls: str | None, q: str) -> float | None:
        """A path's round trip minus the direct path's (what the relay adds), same quantile."""
        r = lat.get((name, tls))
        return r[f"{q}_us"] - direct[f"{q}_us"] if r and direct else None

    if direct:
        for tls in ("1.0", "1.3"):
            if ("bbproxy", tls) not in lat:
                continue
            for q in ("p50", "p99"):
                mine = added("bbproxy", tls, q)
                peers = {name: added(name, tls, q) for name in ("haproxy", "stunnel", "python-ssl")}
                peers["socat"] = added("socat", None, q)
                targets = []
                if q == "p99":
                    targets.append(at_most(mine, peers["haproxy"], "<= haproxy's added p99 (#8)"))
                row(f"200 B round trip TLS {tls}: added {q} vs direct", "µs", mine, peers, targets)
    return rows


# Targets of #8 this benchmark does not measure (the report lists them, so nobody reads silence as "met").
NOT_MEASURED = [
    "`--workers 2` handshake throughput >= 1.8x one worker (#8): needs the load generator on another "
    "machine or accounted for; run `--proxy-args '--workers 2'` and compare sessions/s by hand",
    "a real Prosody behind bbproxy/haproxy/stunnel (#8 deliverable 1): every relay runs in front of the "
    "loopback echo; Prosody is measured alone (handshake and idle)",
]


def source_fingerprint() -> str:
    """A hash of bbproxy's source files, to notice the tree changing under a running benchmark."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "files/bbproxy/src").rglob("*.py")):
        with contextlib.suppress(OSError):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def git_info() -> dict[str, Any]:
    def git(*a: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "proxy_src_dirty": bool(git("status", "--porcelain", "--", "files/bbproxy/src", "bench")),
    }


VERSION_PROBE = """
import sys, ssl, bbproxy
print(sys.version.split()[0]); print(ssl.OPENSSL_VERSION); print(getattr(bbproxy, "__version__", "?"))
try:
    import uvloop; print(uvloop.__version__)
except ImportError:
    print("-")
"""


def peer_version(cls: type[ExternalPeer]) -> str:
    """The Debian package version (never runs the server: a bare `prosody` would start the system one)."""
    if cls.path() is None:
        return "not installed"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", cls.package], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "installed (version unknown)"


def machine_info(env: Env) -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    probe = subprocess.run(
        [env.args.python, "-c", VERSION_PROBE], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise BenchError(
            f"{env.args.python} cannot import bbproxy: {probe.stderr.strip().splitlines()[-1:]} "
            "(pip install -e files/bbproxy, or pass --python)"
        )
    py, ossl, bbv, uvl = probe.stdout.strip().splitlines()
    socat_v = subprocess.run(["socat", "-V"], capture_output=True, text=True, check=False).stdout
    socat_m = re.search(r"socat version (\S+)", socat_v)
    cli_ossl = subprocess.run(
        ["openssl", "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_total_kib": int(Path("/proc/meminfo").read_text().split()[1]),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "loadavg_start": os.getloadavg(),
        "python": py,
        "python_ssl": ossl,
        "openssl_cli": cli_ossl,
        "bbproxy": bbv,
        "uvloop": uvl,
        "socat": socat_m.group(1) if socat_m else "?",
        "peers": {cls.name: peer_version(cls) for cls in EXTERNAL_PEERS},
        "bench_python": sys.version.split()[0],
        "bench_python_ssl": ssl.OPENSSL_VERSION,
    }


# -- report ----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def tls_label(row: dict[str, Any]) -> str:
    """'1.3 TLS_AES_256_GCM_SHA384': the version asked for and the suite the server picked."""
    if not row.get("tls"):
        return "plain"
    cipher = (row.get("negotiated") or {}).get("cipher")
    return f"{row['tls']} {cipher}" if cipher else str(row["tls"])


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return [*out, ""]


def peers_table(report: dict[str, Any]) -> list[str]:
    """The issue's peers table (one row per peer, TLS 1.0 unless said), from this run's rows."""
    res, missing = report["results"], report.get("peers_missing", {})
    hs = [r for r in res.get("handshake", []) if not r.get("burst")]
    idle, st = res.get("idle", []), res.get("throughput", [])
    lat = {(r["peer"], r["tls"]): r for r in res.get("latency", [])}
    largest = max((r["requested"] for r in idle), default=0)
    direct = lat.get(("direct", None))

    def pair(a: float | None, b: float | None) -> str:
        return "-" if a is None and b is None else f"{fmt(a)} / {fmt(b)}"

    rows = []
    for name, label in PEER_LABELS.items():
        if name in missing:
            rows.append([label, missing[name], "", "", "", "", "", ""])
            continue
        tls = {"socat": None, "direct": None, "bbproxy-splice": "1.3"}.get(name, "1.0")
        cpu = partial(pick, hs, "peer_cpu_ms_per_session", peer=name)
        stream = partial(pick, st, peer=name, tls=tls)
        rtt = lat.get((name, tls))
        rows.append([
            label,
            pair(cpu(tls="1.0", cert="rsa"), cpu(tls="1.0", cert="ecdsa")),
            pair(cpu(tls="1.3", cert="rsa"), cpu(tls="1.3", cert="ecdsa")),
            pick(idle, "kib_per_session", peer=name, requested=largest),
            pair(stream("mb_per_s", conns=1), stream("mb_per_s", conns=16)),
            pair(stream("peer_cpu_s_per_gb", conns=1), stream("peer_cpu_s_per_gb", conns=16)),
            pair(rtt["p50_us"], rtt["p99_us"]) if rtt and not rtt["failed"] else "-",
            pair(rtt["p50_us"] - direct["p50_us"], rtt["p99_us"] - direct["p99_us"])
            if rtt and direct and not rtt["failed"] else "-",
        ])  # fmt: skip
    return [
        "## Peers, as in issue #8 (TLS 1.0 unless said; socat and direct: plain TCP)",
        "",
        *table(
            [
                "peer",
                "handshake CPU ms, RSA-2048 / ECDSA P-256",
                "TLS 1.3: RSA / ECDSA",
                f"idle KiB/session ({largest} sessions, ECDSA)" if largest else "idle KiB/session",
                "relay MB/s, 1 / 16 conns",
                "relay CPU s/GB, 1 / 16",
                "200 B round trip p50 / p99 µs",
                "added vs direct p50 / p99 µs",
            ],
            rows,
        ),
    ]


def markdown(report: dict[str, Any]) -> str:
    m, res = report["machine"], report["results"]
    lines = [
        f"# bbproxy benchmark ({report['mode']}, {report['started']})",
        "",
        (
            f"`{report['command']}` — {report['duration_s']:.0f} s, git {report['git']['commit'][:12]}"
            f"{' (uncommitted changes in src/ or bench/)' if report['git']['proxy_src_dirty'] else ''}"
        ),
        "",
        (
            f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, load avg at start "
            f"{m['loadavg_start'][0]:.2f}; processes other than this benchmark's used "
            f"{report['other_cpu_pct']:.0f}% of the machine during the run (column `other %` per "
            f"scenario). Python {m['python']}, {m['python_ssl']}, bbproxy {m['bbproxy']} (--loop "
            f"{(report['settings']['loop'] + ' ' + report['settings']['proxy_args']).strip()}"
            f"), socat {m['socat']}, "
            + "".join(f"{k} {v}, " for k, v in m.get("peers", {}).items())
            + "echo backend on "
            f"{report['settings']['echo_loop']}."
        ),
        "",
        "## Headline: bbproxy against each peer, measured in the same run",
        "",
        (
            "bbproxy runs its STARTTLS path (the issue's target: XMPP prelude, STARTTLS, TLS, a new "
            "backend connection, relay). haproxy, stunnel and python-ssl run direct TLS: they cannot "
            "speak XMPP STARTTLS. Prosody runs STARTTLS but is the XMPP server itself (no relay, no "
            "backend connection, no 200 B round trip). Each cell: the peer's value (bbproxy / peer)."
        ),
        "",
    ]
    shown = [name for name in HEADLINE_PEERS if any(name in r["peers"] for r in report["headline"])]
    missing = report.get("peers_missing", {})

    def cell(r: dict[str, Any], name: str) -> str:
        if name in missing and name in r["peers"]:
            return missing[name].split(" (")[0]
        got = r["peers"].get(name)
        if not got or got["value"] is None:
            return ""
        return fmt(got["value"]) + (f" ({fmt(got['ratio'])})" if got["ratio"] is not None else "")

    def verdicts(r: dict[str, Any]) -> str:
        words = {None: "not measured", True: "met", False: "**NOT met**"}
        return "; ".join(f"{t['target']}: {words[t['met']]}" for t in r["targets"])

    lines += table(
        ["metric", "unit", "bbproxy", *shown, "targets"],
        [
            [r["metric"], r["unit"], r["bbproxy"], *(cell(r, name) for name in shown), verdicts(r)]
            for r in report["headline"]
        ],
    )
    lines += [
        (
            "ratio = bbproxy / peer (sessions/s and MB/s: higher is better; CPU, RSS and latency: lower "
            "is better). `python-ssl` = a plain Python asyncio `ssl` echo server (direct TLS, no XMPP, "
            "no relay, same TLS policy); `socat` = plain TCP relay, no TLS; `direct` = the echo backend "
            "itself. Medians over repeats where a scenario ran more than once. Every TLS peer uses "
            "bbproxy's policy: TLS 1.0-1.3, ECDHE AES-CBC-SHA below TLS 1.2 at `@SECLEVEL=0`."
        ),
        "",
    ]
    if missing:
        lines += ["Peers not in this run: " + ", ".join(f"{k}: {v}" for k, v in missing.items()), ""]
    if report.get("not_measured"):
        lines += ["Targets of #8 this run does not measure:", ""]
        lines += [f"- {t}" for t in report["not_measured"]] + [""]
    lines += peers_table(report)
    if res.get("handshake"):
        lines += [
            "## Handshakes (connect, STARTTLS or direct TLS, one 200 B round trip via the backend, close)",
            "",
        ]
        lines += table(
            [
                "peer",
                "TLS",
                "cert",
                "run",
                "ok",
                "failed",
                "sessions/s",
                "peer CPU ms",
                "client CPU ms",
                "echo CPU ms",
                "session p50 ms",
                "p99 ms",
                "other %",
            ],
            [
                [
                    r["peer"],
                    tls_label(r),
                    r["cert"],
                    r["repeat"] + 1,
                    r["ok"],
                    r["failed"],
                    r["rate_per_s"],
                    r["peer_cpu_ms_per_session"],
                    r["client_cpu_ms_per_session"],
                    r["echo_cpu_ms_per_session"],
                    r["session_ms_p50"],
                    r["session_ms_p99"],
                    r.get("other_cpu_pct"),
                ]
                for r in res["handshake"]
            ],
        )
    if res.get("idle"):
        lines += ["## Idle established TLS 1.0 sessions (ECDSA)", ""]
        lines += table(
            [
                "peer",
                "sessions",
                "ok",
                "failed",
                "dead at close",
                "RSS before MiB",
                "RSS held MiB",
                "KiB/session",
                "RSS after close MiB",
                "peak RSS MiB",
                "fds held",
                "fds after close",
                "open s",
                "other %",
            ],
            [
                [
                    r["peer"],
                    r["sessions"],
                    r["ok"],
                    r["failed"],
                    r["dead_at_close"],
                    r["rss_before_kib"] / 1024,
                    r["rss_held_kib"] / 1024,
                    r["kib_per_session"],
                    r["rss_after_close_kib"] / 1024,
                    r.get("rss_peak_kib", 0) / 1024,
                    r["fds_held"],
                    r.get("fds_after_close"),
                    r["open_s"],
                    r.get("other_cpu_pct"),
                ]
                for r in res["idle"]
            ],
        )
    if res.get("throughput"):
        lines += [
            "## Relay throughput (payload echoed back per second; each byte crosses the relay twice)",
            "",
        ]
        lines += table(
            [
                "path",
                "TLS",
                "conns",
                "run",
                "MB/s",
                "peer CPU s/GB",
                "peer CPU %",
                "echo CPU %",
                "client CPU %",
                "failed",
                "other %",
            ],
            [
                [
                    r["peer"],
                    tls_label(r),
                    r["conns"],
                    r["repeat"] + 1,
                    r["mb_per_s"],
                    r["peer_cpu_s_per_gb"],
                    r["peer_cpu_pct"],
                    r["echo_cpu_pct"],
                    r["client_cpu_pct"],
                    r["failed"],
                    r.get("other_cpu_pct"),
                ]
                for r in res["throughput"]
            ],
        )
    if res.get("latency"):
        lines += [
            "## 200-byte round trip (one connection per path, sequential, paths interleaved in rounds, µs)",
            "",
        ]
        lines += table(
            ["path", "TLS", "samples", "p50", "p90", "p99", "p99.9", "mean", "failed", "other %"],
            [
                [
                    r["peer"],
                    tls_label(r),
                    r["samples"],
                    r.get("p50_us"),
                    r.get("p90_us"),
                    r.get("p99_us"),
                    r.get("p999_us"),
                    r.get("mean_us"),
                    r["failed"],
                    r.get("other_cpu_pct"),
                ]
                for r in res["latency"]
            ],
        )
    failures: Counter[str] = Counter()
    for rows in res.values():
        for r in rows:
            failures.update({f"{r['peer']}: {k}": v for k, v in r.get("failures", {}).items()})
    if failures:
        lines += ["## Failures", ""] + [f"- {k}: {v}" for k, v in failures.most_common()] + [""]
    reasons = []
    for scenario, rows in res.items():
        merged: Counter[str] = Counter()
        for r in rows:
            if r["peer"] == "bbproxy":
                merged.update((r.get("server_log") or {}).get("close_reasons", {}))
        if merged:
            reasons.append(f"- {scenario}: " + ", ".join(f"`{k}` {v}" for k, v in merged.most_common()))
    if reasons:
        lines += [
            "## bbproxy close reasons (from its per-connection log lines, warm-ups included)",
            "",
            *reasons,
            "",
        ]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["## Commands", ""] + [f"- {k}: `{v}`" for k, v in report["commands"].items()] + [""]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="< 2 min (default)")
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
    parser.add_argument("--keep-workdir", action="store_true", help="keep certs and logs in the temp dir")
    args = parser.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.skip_peers = {s.strip() for s in args.skip_peers.split(",") if s.strip()}
    if args.only - set(SCENARIOS):
        parser.error(f"--only: unknown {sorted(args.only - set(SCENARIOS))}")
    if not 1 <= args.clients <= 16:
        parser.error("--clients must be 1..16")
    return args


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

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
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
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        procs.stop_all()
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
