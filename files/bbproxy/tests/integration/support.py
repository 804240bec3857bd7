"""Helpers for the integration tests: processes, sockets, clients. Fixtures are in conftest.py.

Everything runs on 127.0.0.1 with ports picked by binding port 0, in pytest's temp dirs.
Every wait has a deadline; every process we start is stopped by its PID.

Environment:
  BBPROXY_TEST_CMD  command that runs the proxy (shell-split), default
                    "<this python> -m bbproxy" with files/bbproxy/src on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bbproxy.tls import ALPN_XMPP_CLIENT, MODERN_SUITES, Policy, cipher_string

# The test kit's pieces, re-exported: the integration tests import everything from here.
from ..kit import DOMAIN as DOMAIN
from ..kit import LOOPBACK as LOOPBACK
from ..kit import STARTTLS as STARTTLS
from ..kit import STREAM_NS as STREAM_NS
from ..kit import CertPair as CertPair
from ..kit import Certs as Certs
from ..kit import client_context as client_context
from ..kit import free_port as free_port
from ..kit import make_certs as make_certs
from ..kit import recv_until as recv_until
from ..kit import recv_until_closed as recv_until_closed
from ..kit import stream_error_condition as stream_error_condition
from ..kit import stream_header as stream_header

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # files/bbproxy
REPO_ROOT = PACKAGE_DIR.parents[1]
LOGIN_CHECK = REPO_ROOT / "tools" / "xmpp_login_check.py"
# --------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed: {install_hint}", pytrace=False)
    return path


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


# Replaces itself (same PID) with argv[2:] after asking Linux to SIGTERM it when its parent,
# this pytest process, dies: a pytest killed by a CI timeout leaves no proxy or Prosody behind.
_EXEC_OWNED = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit("parent already gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def owned_command(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that the process dies with the test run (see _EXEC_OWNED)."""
    return [sys.executable, "-c", _EXEC_OWNED, str(os.getpid()), *argv]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM by PID, then SIGKILL after ``grace`` seconds. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    return proc.returncode


@contextlib.contextmanager
def running_prosody(
    directory: Path, config_text: str, users: Sequence[str], ready: Callable[[], bool], waiting_for: str
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path, Path]]:
    """Register USERS, start Prosody in the foreground with CONFIG_TEXT, wait until READY.

    Yields (process, passwords, log path, config path); stops the process by PID at the end.
    """
    prosodyctl = require_tool("prosodyctl", "apt-get install prosody")
    (directory / "data").mkdir(mode=0o700)
    (directory / "certs").mkdir()
    config = directory / "prosody.cfg.lua"
    config.write_text(config_text)
    log = directory / "prosody.log"
    passwords = {user: secrets.token_urlsafe(12) for user in users}
    for user, password in passwords.items():
        result = subprocess.run(
            [prosodyctl, "--config", str(config), "register", user, DOMAIN, password],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"prosodyctl register {user} failed: {result.stdout!r} {result.stderr!r}")

    proc = spawn_prosody(config)
    try:
        deadline = time.monotonic() + 20
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"prosody exited with {proc.returncode} during start-up:\n{tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"prosody did not {waiting_for} within 20s:\n{tail(log)}")
            time.sleep(0.05)
        yield proc, passwords, log, config
    finally:
        stop_process(proc)


def spawn_prosody(config: Path) -> subprocess.Popen[bytes]:
    """Prosody in the foreground with CONFIG, in its directory, its console appended to
    console.log there; a session of its own, so a Ctrl-C in pytest must not hit it before
    teardown does. Started again with the same CONFIG, it keeps its data (a restart)."""
    prosody_bin = require_tool("prosody", "apt-get install prosody")
    with (config.parent / "console.log").open("ab") as console:
        return subprocess.Popen(
            owned_command([prosody_bin, "-F", "--config", str(config)]),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            start_new_session=True,
        )


# --------------------------------------------------------------------------- prosody


@dataclasses.dataclass(frozen=True)
class Prosody:
    host: str
    port: int
    domain: str
    passwords: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]


PROSODY_CONFIG = """\
-- Private Prosody for the bbproxy integration tests. Plaintext c2s on loopback only.
run_as_root = true -- CI and this machine run tests as root; nothing here needs privileges
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{dir}/certs"
plugin_paths = {{}}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
s2s_ports = {{}}
component_ports = {{}}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "posix" }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
network_settings = {{ nagle = false }}
log = {{ debug = "{dir}/prosody.log" }}

VirtualHost "{domain}"
    modules_disabled = {{ "tls" }}
"""


# --------------------------------------------------------------------------- recording backend


@dataclasses.dataclass
class BackendConnection:
    data: bytearray = dataclasses.field(default_factory=bytearray)
    eof: bool = False  # the proxy half-closed (or closed) its side cleanly


class RecordingBackend:
    """A plain TCP server (threads) that records every byte each connection sends it.

    With ``forward_to`` it also relays each connection to that address (e.g. Prosody), so one
    backend can both serve real logins and prove that nothing else reached it. With ``echo``
    it sends every byte back. Half-closes are passed on, not turned into full closes.
    """

    def __init__(
        self,
        forward_to: tuple[str, int] | None = None,
        port: int = 0,
        *,
        echo: bool = False,
        stalled: bool = False,
    ) -> None:
        self.forward_to = forward_to
        self.echo = echo
        self._lock = threading.Lock()
        self._received: list[BackendConnection] = []
        self._sockets: list[socket.socket] = []
        self._stopping = False
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOOPBACK, port))
        self.port = int(self.listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name="recording-backend", daemon=True)
        self._filler: socket.socket | None = None
        if stalled:
            # A full accept queue: Linux drops further SYNs, so connecting here hangs (the
            # client retries its SYN after 1 s, 3 s, ...) until start() accepts the filler.
            self.listener.listen(0)
            self._filler = socket.create_connection((LOOPBACK, self.port), timeout=5)
        else:
            self.listener.listen(128)
            self._thread.start()

    def start(self) -> None:
        """Begin accepting (for a ``stalled`` backend); the filler connection is dropped."""
        if self._filler is not None:
            filler, _ = self.listener.accept()
            filler.close()
            self._filler.close()
            self._filler = None
            self._thread.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def connections(self) -> list[bytes]:
        """What each accepted connection has sent so far, in accept order."""
        with self._lock:
            return [bytes(c.data) for c in self._received]

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._received)

    def saw_eof(self, index: int) -> bool:
        with self._lock:
            return len(self._received) > index and self._received[index].eof

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> list[bytes]:
        wait_until(lambda: self.connection_count >= count, timeout, f"{count} backend connection(s)")
        return self.connections

    def wait_for_bytes(self, index: int, needle: bytes, timeout: float = 5.0) -> bytes:
        wait_until(
            lambda: self.connection_count > index and needle in self.connections[index],
            timeout,
            f"{needle!r} on backend connection {index}",
        )
        return self.connections[index]

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                record = BackendConnection()
                self._received.append(record)
                self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: BackendConnection) -> None:
        upstream: socket.socket | None = None
        if self.forward_to is not None:
            try:
                upstream = socket.create_connection(self.forward_to, timeout=5)
                upstream.settimeout(None)
            except OSError:
                conn.close()
                return
            with self._lock:
                self._sockets.append(upstream)
            threading.Thread(target=self._pipe, args=(upstream, conn, None), daemon=True).start()
        elif self.echo:
            upstream = conn
        self._pipe(conn, upstream, record)

    def _pipe(self, src: socket.socket, dst: socket.socket | None, record: BackendConnection | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    if record is not None:
                        record.eof = True
                    break
                if record is not None:
                    with self._lock:
                        record.data.extend(data)
                if dst is not None:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            if dst is not None:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            sockets = list(self._sockets)
        # shutdown() wakes a thread blocked in accept(); close() alone does not on Linux.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self._filler is not None:
            self._filler.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# --------------------------------------------------------------------------- the proxy


def proxy_command() -> list[str]:
    override = os.environ.get("BBPROXY_TEST_CMD")
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "bbproxy"]


def proxy_env() -> dict[str, str]:
    env = dict(os.environ)
    if not os.environ.get("BBPROXY_TEST_CMD"):
        src = str(PACKAGE_DIR / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_proxy_once(args: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the proxy CLI to completion (e.g. --check-config); never listens."""
    return subprocess.run(
        [*proxy_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=proxy_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_table(name: str, table: dict[str, Any]) -> list[str]:
    """A tiny TOML writer: scalars and lists first, then sub-tables (names quoted)."""
    lines = [f"[{name}]"] if name else []
    lines += [f"{toml_value(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", *toml_table(f"{name}.{toml_value(key)}" if name else toml_value(key), value)]
    return lines


def write_toml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text("\n".join(toml_table("", config)) + "\n")
    return path


@dataclasses.dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    direct_tls_port: int | None
    backend: str
    loop: str | None
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM, bounded wait, SIGKILL; asserts a clean exit and no traceback in the log."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        status = stop_process(self.proc)
        log = self.log_text()
        assert "Traceback" not in log, f"traceback in the proxy log:\n{log[-4000:]}"
        assert status == 0, f"proxy exited with {status} on SIGTERM (contract: 0):\n{log[-2000:]}"
        return status


ProxyFactory = Callable[..., ProxyProcess]


class ProxyStarter:
    def __init__(self, directory: Path, certs: Certs) -> None:
        self.directory = directory
        self.certs = certs
        self.started: list[ProxyProcess] = []
        self._n = 0

    def __call__(
        self,
        *,
        backend: str,
        cert: str = "rsa",  # rsa, ecdsa or rsa+ecdsa
        loop: str | None = None,
        min_tls: str | None = None,
        direct_tls: bool = False,
        config: dict[str, Any] | None = None,
        domains: Sequence[str] = (DOMAIN,),
        extra_args: Sequence[str] = (),
        ready_timeout: float = 15.0,
        journal: bool = False,
    ) -> ProxyProcess:
        """journal: JOURNAL_STREAM names the log file, as systemd names the journal stream it
        connects a unit's stderr to (the proxy then writes journald priority prefixes)."""
        self._n += 1
        port = free_port()
        direct_port = free_port() if direct_tls else None
        pairs = self.certs.pairs(cert)
        args = ["--listen", f"{LOOPBACK}:{port}", "--backend", backend]
        if len(pairs) == 1:
            args += ["--cert", str(pairs[0].cert), "--key", str(pairs[0].key)]
        else:  # lists of paths exist in the TOML file only
            paths = {"cert": [str(p.cert) for p in pairs], "key": [str(p.key) for p in pairs]}
            config = {**paths, **(config or {})}
        for domain in domains:
            args += ["--domain", domain]
        if direct_port is not None:
            args += ["--direct-tls-listen", f"{LOOPBACK}:{direct_port}"]
        if min_tls is not None:
            args += ["--min-tls", min_tls]
        if loop is not None:
            args += ["--loop", loop]
        if config is not None:
            args += ["--config", str(write_toml(self.directory / f"proxy{self._n}.toml", config))]
        args += list(extra_args)
        log_path = self.directory / f"proxy{self._n}.log"
        with log_path.open("wb") as log:
            env = proxy_env()
            if journal:
                status = os.fstat(log.fileno())
                env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
            else:
                env.pop("JOURNAL_STREAM", None)
            proc = subprocess.Popen(
                owned_command([*proxy_command(), *args]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proxy = ProxyProcess(proc, log_path, port, direct_port, backend, loop)
        self.started.append(proxy)
        deadline = time.monotonic() + ready_timeout
        while "ready" not in proxy.log_text():
            if proc.poll() is not None:
                proxy.stopped = True
                pytest.fail(
                    f"proxy exited with {proc.returncode} before 'ready':\n{proxy.log_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                stop_process(proc)
                proxy.stopped = True
                pytest.fail(f"proxy not ready within {ready_timeout}s:\n{proxy.log_text()[-4000:]}")
            time.sleep(0.02)
        return proxy

    def stop_all(self) -> None:
        errors = []
        for proxy in self.started:
            try:
                proxy.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


# --------------------------------------------------------------------------- loops and clients

LOOPS = ("asyncio", "uvloop")


def require_loop(loop: str) -> None:
    if loop == "uvloop":
        probe = subprocess.run(
            [sys.executable, "-c", "import uvloop"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode != 0:
            pytest.skip("uvloop not installed (optional extra): pip install uvloop")


@dataclasses.dataclass(frozen=True)
class LoginResult:
    returncode: int
    output: str


def run_login_check(
    *,
    port: int,
    prosody: Prosody,
    cafile: Path,
    tls: str,
    peer_tls: str | None = None,
    user: str = "alice",
    peer: str = "bob",
    direct_tls: bool = False,
    timeout: float = 20.0,
    extra: Sequence[str] = (),
) -> LoginResult:
    """Run tools/xmpp_login_check.py as a subprocess (passwords via the environment)."""
    args = [
        sys.executable, str(LOGIN_CHECK),
        "--host", LOOPBACK, "--port", str(port), "--domain", prosody.domain,
        "--tls", tls, "--user", user, "--peer", peer,
        "--cafile", str(cafile), "--timeout", str(timeout),
    ]  # fmt: skip
    if peer_tls:
        args += ["--peer-tls", peer_tls]
    if direct_tls:
        args.append("--direct-tls")
    args += list(extra)
    env = dict(os.environ)
    env["XMPP_CHECK_PASSWORD"] = prosody.passwords[user]
    env["XMPP_CHECK_PEER_PASSWORD"] = prosody.passwords[peer]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    output = result.stdout + result.stderr
    for password in prosody.passwords.values():
        assert password not in output, "the login check printed a password"
    return LoginResult(result.returncode, output)


@dataclasses.dataclass(frozen=True)
class OpenSSLResult:
    returncode: int
    output: str

    @property
    def protocol(self) -> str | None:
        """The negotiated version from the SSL-Session ``Protocol  :`` line.

        With TLS 1.3 and an empty stdin, s_client quits before the session ticket arrives and
        prints no SSL-Session block; then the ``New, TLSv1.3, Cipher is`` line says it (that
        line names the cipher's own version, which is only the protocol's for TLS 1.3 suites).
        """
        for line in self.output.splitlines():
            stripped = line.strip()
            if stripped.startswith("Protocol") and ":" in stripped:
                return stripped.split(":", 1)[1].strip()
        match = re.search(r"^New, (TLSv1\.3), Cipher is", self.output, re.MULTILINE)
        return match.group(1) if match else None

    @property
    def cipher(self) -> str | None:
        match = re.search(r"^New, \S+, Cipher is (\S+)", self.output, re.MULTILINE)
        return match.group(1) if match else None


def run_s_client(
    port: int,
    *,
    version_flag: str,
    cafile: Path,
    starttls: bool = True,
    alpn: str | None = None,
    sni: bool = True,
    extra: Sequence[str] = (),
    timeout: float = 20.0,
) -> OpenSSLResult:
    """``openssl s_client`` against the proxy; stdin is empty so it quits after the handshake."""
    openssl = require_tool("openssl", "apt-get install openssl")
    args = [openssl, "s_client", "-connect", f"{LOOPBACK}:{port}", version_flag]
    args += ["-servername", DOMAIN] if sni else ["-noservername"]
    if version_flag in ("-tls1", "-tls1_1"):
        args += ["-cipher", "DEFAULT:@SECLEVEL=0"]
    if starttls:
        args += ["-starttls", "xmpp", "-xmpphost", DOMAIN]
    if alpn:
        args += ["-alpn", alpn]
    args += ["-CAfile", str(cafile), "-verify_hostname", DOMAIN, "-verify_return_error", *extra]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    return OpenSSLResult(result.returncode, result.stdout + result.stderr)


# OpenSSL's own TLS 1.3 suites, which the proxy leaves as they are; named for s_server all the same.
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"


def s_server_argv(cert: Path, key: Path, port: int, directory: Path) -> list[str]:
    """``openssl s_server -www`` set up as the proxy's direct-TLS contexts (tls.py): the reference.

    Same certificate chain and key, TLS 1.0-1.3, the suites of both policy classes in one
    cipher string (``@SECLEVEL=0`` included: s_server cannot pick a context by the hello),
    server preference, no renegotiation, no tickets, ALPN ``xmpp-client``. s_server's ``-cert``
    takes only the leaf, so the rest of the chain file goes to ``-cert_chain`` (in ``directory``).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl not installed: apt-get install openssl")
    pem = rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?"
    blocks = re.findall(pem, cert.read_bytes(), re.S)
    leaf = directory / "s_server-leaf.pem"
    leaf.write_bytes(blocks[0])
    argv = [openssl, "s_server", "-www", "-accept", f"{LOOPBACK}:{port}"]
    argv += ["-cert", str(leaf), "-key", str(key)]
    if len(blocks) > 1:
        chain = directory / "s_server-chain.pem"
        chain.write_bytes(b"".join(blocks[1:]))
        argv += ["-cert_chain", str(chain)]
    argv += [
        "-min_protocol", "TLSv1",
        "-cipher", f"{MODERN_SUITES}:{cipher_string(Policy.LEGACY)}",
        "-ciphersuites", TLS13_SUITES,
        "-serverpref",
        "-no_renegotiation",
        "-no_ticket",
        "-alpn", ALPN_XMPP_CLIENT,
    ]  # fmt: skip
    return argv


@contextlib.contextmanager
def running_s_server(pair: CertPair, directory: Path, ready_timeout: float = 10.0) -> Iterator[int]:
    """The reference server on a free loopback port, stopped by its PID afterwards; yields the port."""
    port = free_port()
    log_path = directory / f"s_server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            owned_command(s_server_argv(pair.cert, pair.key, port, directory)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while b"ACCEPT" not in log_path.read_bytes():  # printed once it listens
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"openssl s_server did not start: {log_path.read_text(errors='replace')}")
            time.sleep(0.02)
        yield port
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------- raw XMPP clients


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_stream(sock: socket.socket, to: str = DOMAIN, timeout: float = 5.0) -> bytes:
    """Send our stream header and read the proxy's answer up to the end of its features."""
    sock.sendall(stream_header(to))
    answer = recv_until(sock, b"</stream:features>", timeout)
    assert b"</stream:features>" in answer, f"no stream features from the proxy: {answer!r}"
    return answer


PROCEED_RE = re.compile(rb"<proceed[^>]*?(/>|>\s*</proceed>)")


def read_proceed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read exactly up to the end of ``<proceed/>`` and not a byte further (nothing follows it)."""
    data = recv_until(sock, PROCEED_RE, timeout, chunk=4096)
    match = PROCEED_RE.search(data)
    assert match is not None, f"no <proceed/>: {data!r}"
    assert match.end() == len(data), f"bytes after <proceed/>: {data!r}"
    return data


def starttls_over(sock: socket.socket, version: str, cafile: Path | None) -> ssl.SSLSocket:
    """STARTTLS through the proxy on a connected socket, then the client's TLS at ``version``."""
    try:
        open_stream(sock)
        sock.sendall(STARTTLS)
        read_proceed(sock)
        return client_context(version, cafile).wrap_socket(sock, server_hostname=DOMAIN)
    except BaseException:
        sock.close()
        raise


def client_hello(version: str) -> bytes:
    """The bytes of a real ClientHello for ``version`` (generated with a memory BIO)."""
    ctx = client_context(version, None)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=DOMAIN)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def xmpp_over_tls(tls: ssl.SSLSocket, timeout: float = 10.0) -> bytes:
    """Open the post-TLS stream and return the backend's answer up to its features."""
    tls.sendall(stream_header())
    return recv_until(tls, b"</stream:features>", timeout)
