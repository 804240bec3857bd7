"""The servers under test and the run's environment (Env): bbproxy, bbproxy with ClientHello
splicing, the python-ssl baseline, socat, haproxy, stunnel, Prosody (each writes its own config
into the work dir), no proxy at all (Direct), and the echo backend they relay to."""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import CIPHERS, DOMAIN, HERE, HOST, Cert, free_port
from procstat import Processes, max_relayed, wait_for_line, wait_listening


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
        self.launch(list(map(str, argv)), cert.kind if cert else "plain")

    def launch(self, argv: list[str], label: str) -> None:
        """Start ``argv`` as this peer's process, with a log of its own, and wait until it serves."""
        self.env.starts += 1
        log = self.log = self.env.log(f"{self.name}-{label}-{self.env.starts}")
        self.proc = self.env.procs.start(argv, log)
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


class BBProxyDirect(BBProxy):
    """bbproxy on a direct-TLS listener (XEP-0368, no XMPP prelude): the same session as haproxy's
    (direct TLS, relay to the echo), so the two compare like for like. Its STARTTLS listener is moved
    to an unused port."""

    name = "bbproxy-direct"
    proto = "direct-tls"

    def argv(self, cert: Cert | None) -> list[str]:
        argv = super().argv(cert)
        argv[argv.index("--listen") + 1] = f"{HOST}:{free_port()}"
        return [*argv, "--direct-tls-listen", f"{HOST}:{self.port}"]


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
    Log level warn (no per-connection lines). Never started without this private --config.

    ``users`` (name -> password), when set before start, are registered with prosodyctl against
    the same config (the whole-login benchmark, bench/login.py, logs them in)."""

    name = "prosody"
    proto = "starttls"
    echoes = False
    binary = "prosody"
    package = "prosody"
    modules = ("saslauth", "posix")  # + "tls" when Prosody does the TLS; bind is mod_saslauth's

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.users: dict[str, str] = {}

    def argv(self, cert: Cert | None) -> list[str]:
        home = self.env.workdir / f"{self.name}-{self.port}"
        for sub in ("data", "certs"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        if self.tls:
            assert cert is not None
            ssl_opts = (
                f'{{ certificate = "{cert.chain}"; key = "{cert.key}"; protocol = "tlsv1+"; '
                f'ciphers = "{CIPHERS}" }}'
            )
            modules = ("tls", *self.modules)
            security = f"c2s_require_encryption = true\nssl = {ssl_opts}"
            vhost = f"    ssl = {ssl_opts}"
        else:  # behind a TLS terminator on loopback (bbproxy, haproxy): plaintext c2s
            modules = self.modules
            security = "c2s_require_encryption = false\nallow_unencrypted_plain_auth = true"
            vhost = '    modules_disabled = { "tls" }'
        cfg = self.config_file("cfg.lua")
        cfg.write_text(
            f"""-- private Prosody for bbproxy's benchmark (bench/): loopback only, c2s only
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
modules_enabled = {{ {"; ".join(f'"{m}"' for m in modules)} }}
modules_disabled = {{ "s2s" }}
{security}
authentication = "internal_hashed"
network_settings = {{ nagle = false }}
log = {{ warn = "{home}/prosody.log" }}

VirtualHost "{DOMAIN}"
{vhost}
"""
        )
        for user, password in self.users.items():
            subprocess.run(
                ["prosodyctl", "--config", str(cfg), "register", user, DOMAIN, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
        return [self.binary, "-F", "--config", str(cfg)]

    def restart(self) -> None:
        """The same server as a fresh process (same port, config and accounts). Prosody's CPU per
        login grows with the logins one process has served (about 3.4 -> 5.3 ms over 3 000 SCRAM
        logins here), so bench/login.py compares paths only from a fresh start each."""
        assert self.proc is not None
        argv = [str(a) for a in self.proc.args]  # type: ignore[union-attr]
        self.stop()
        self.launch(argv, f"{self.port}-restart")


class PlainProsody(Prosody):
    """The same Prosody without TLS (plaintext c2s, PLAIN allowed): the backend of bbproxy and
    haproxy in the whole-login benchmark, as the role runs it behind bbproxy."""

    name = "prosody-plain"
    proto = "plain"
    tls = False


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
