"""Helpers for the testinfra checks: the scenario's facts, commands in the container, XMPP bytes.

Where the facts come from (each written down once):
- the instance name: the scenario's molecule.yml ($MOLECULE_FILE); its published ports: podman;
- domain, users and passwords: molecule/shared/group_vars/all.yml (the converge variables);
- certificate paths: the deployed /etc/bbproxy/bbproxy.toml.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
GROUP_VARS = HERE.parent / "group_vars" / "all.yml"
LOGIN_TOOL = REPO / "tools" / "xmpp_login_check.py"
SITE = REPO / "site.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PLAYBOOK_TIMEOUT = 900
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BBPROXY_TOML = "/etc/bbproxy/bbproxy.toml"
# s_client needs SECLEVEL 0 for TLS 1.0's MD5+SHA1 handshake signature on OpenSSL 3.
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"
TLS_PROTOCOL = re.compile(r"^Protocol version: (\S+)$", re.MULTILINE)
# login_check(tls="1.0", *, direct_tls=False, cafile=None) -> CompletedProcess (see conftest.py)
LoginCheck = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    domain: str
    password: str

    @property
    def jid(self) -> str:
        return f"{self.name}@{self.domain}"


@dataclasses.dataclass(frozen=True)
class Scenario:
    instance: str
    published: dict[int, int]  # container port -> host port on 127.0.0.1
    domain: str
    users: tuple[User, ...]
    direct_tls: bool

    def host_port(self, container_port: int) -> int:
        if container_port not in self.published:
            pytest.fail(f"molecule.yml publishes no host port for container port {container_port}")
        return self.published[container_port]


def published_ports(instance: str) -> dict[int, int]:
    """Container port -> host port, as podman published them (molecule.yml lets podman pick free
    host ports, so parallel runs and other services on the host never collide). Only ports
    published on 127.0.0.1 count: nothing here may talk to the container's bridge address."""
    output = subprocess.run(["podman", "port", instance], capture_output=True, text=True, timeout=30, check=True).stdout
    ports = {}
    for line in output.splitlines():  # "5222/tcp -> 127.0.0.1:41234"
        container, _, published = line.partition(" -> ")
        address, _, host_port = published.rpartition(":")
        if container.endswith("/tcp") and address == "127.0.0.1":
            ports[int(container.split("/")[0])] = int(host_port)
    return ports


def load_scenario() -> Scenario:
    molecule_file = os.environ.get("MOLECULE_FILE")
    if not molecule_file:
        raise RuntimeError("MOLECULE_FILE is not set: run these checks through `molecule verify`")
    platform = yaml.safe_load(Path(molecule_file).read_text())["platforms"][0]
    for spec in platform.get("published_ports", []):
        if not spec.startswith("127.0.0.1:"):
            raise RuntimeError(f"{molecule_file}: publish on 127.0.0.1 only, not {spec!r}")
    test_vars = yaml.safe_load(GROUP_VARS.read_text())
    users = tuple(User(u["name"], u["domain"], u["password"]) for u in test_vars["bbproxy_prosody_users"])
    return Scenario(
        instance=platform["name"],
        published=published_ports(platform["name"]),
        domain=test_vars["bbproxy_domains"][0],
        users=users,
        direct_tls=bool(test_vars.get("bbproxy_direct_tls_enabled", False)),
    )


def served_cert_path(config: dict[str, Any], domain: str) -> tuple[str, str]:
    """(cert, key) the proxy serves for DOMAIN to modern clients, per its deployed TOML."""
    entry = config.get("certificates", {}).get(domain, {})
    return entry.get("cert", config["cert"]), entry.get("key", config["key"])


def tls10_cert_path(config: dict[str, Any], domain: str) -> tuple[str, str]:
    """(cert, key) a TLS 1.0 client gets: the legacy chain (tls.legacy_cert) if there is one."""
    tls = config.get("tls", {})
    if tls.get("legacy_cert"):
        return tls["legacy_cert"], tls["legacy_key"]
    return served_cert_path(config, domain)


# ---- commands in the container ----------------------------------------------------------------


def run_ok(host: Any, command: str) -> str:
    """Run COMMAND in the container; fail the test with its output when it exits non-zero."""
    result = host.run(command)
    if result.rc != 0:
        pytest.fail(f"`{command}` exited {result.rc}:\n{result.stdout}{result.stderr}")
    return str(result.stdout)


# What a local user's process gets when it binds or connects: "ok", or the OSError's class name
# (its errno's name, e.g. EADDRINUSE, when the class is plain OSError).
_SOCKET_PROBE = """
import errno, socket, sys
action, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(5)
try:
    if action == "bind":
        sock.bind((address, port))
        sock.listen(1)
    else:
        sock.connect((address, port))
except OSError as exc:
    name = type(exc).__name__
    print(errno.errorcode.get(exc.errno, name) if name == "OSError" else name)
else:
    print("ok")
"""


def socket_as(host: Any, user: str, action: str, address: str, port: int) -> str:
    """Bind ("bind") or connect ("connect") to ADDRESS:PORT in the container as USER, without any
    capability: "ok", or the error (PermissionError, ConnectionRefusedError, EADDRINUSE, ...)."""
    group = "nogroup" if user == "nobody" else user
    command = (
        f"setpriv --reuid={shlex.quote(user)} --regid={shlex.quote(group)} --init-groups "
        f"--inh-caps=-all --bounding-set=-all python3 -c {shlex.quote(_SOCKET_PROBE)} "
        f"{action} {shlex.quote(address)} {port}"
    )
    return run_ok(host, command).strip()


def s_client(
    host: Any, port: int, domain: str, tls_flag: str, *, starttls: bool = True, address: str = "127.0.0.1"
) -> str:
    """openssl s_client inside the container; returns its -brief summary (stdout+stderr)."""
    starttls_args = f"-starttls xmpp -xmpphost {shlex.quote(domain)}" if starttls else ""
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    command = (
        f"timeout 20 openssl s_client -connect {target} {starttls_args} "
        f"-servername {shlex.quote(domain)} {tls_flag} -cipher {shlex.quote(LEGACY_CIPHERS)} "
        "-brief </dev/null 2>&1"
    )
    return str(host.run(command).stdout)


def negotiated_protocol(summary: str) -> str | None:
    match = TLS_PROTOCOL.search(summary)
    return match.group(1) if match else None


def served_fingerprint(host: Any, port: int, domain: str, *, starttls: bool = True, tls_flag: str = "-tls1") -> str:
    """SHA-256 fingerprint of the certificate a new handshake gets now.

    At TLS 1.0 by default: the proxy terminates those in every routing mode (with "legacy-only",
    a TLS 1.3 handshake gets Prosody's own certificate), with the legacy chain if one is set.
    """
    starttls_args = f"-starttls xmpp -xmpphost {shlex.quote(domain)}" if starttls else ""
    command = (
        f"timeout 20 openssl s_client -connect 127.0.0.1:{port} {starttls_args} "
        f"-servername {shlex.quote(domain)} {tls_flag} -cipher {shlex.quote(LEGACY_CIPHERS)} </dev/null 2>/dev/null "
        "| openssl x509 -noout -fingerprint -sha256"
    )
    return run_ok(host, command).strip().split("=", 1)[-1]


def file_fingerprint(host: Any, path: str) -> str:
    return run_ok(host, f"openssl x509 -noout -fingerprint -sha256 -in {shlex.quote(path)}").strip().split("=", 1)[-1]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclasses.dataclass(frozen=True)
class Listener:
    address: str
    port: int


def tcp_listeners(host: Any) -> list[Listener]:
    """Every listening TCP socket in the container, from `ss` (addresses without brackets)."""
    listeners = []
    for line in run_ok(host, "ss -Hltn").splitlines():
        local = line.split()[3]  # State Recv-Q Send-Q Local:Port Peer:Port
        address, _, port = local.rpartition(":")
        listeners.append(Listener(address.strip("[]").split("%")[0], int(port)))
    return listeners


def systemctl_show(host: Any, unit: str, *props: str) -> dict[str, str]:
    args = " ".join(f"-p {p}" for p in props)
    values = {}
    for line in run_ok(host, f"systemctl show {unit} {args}").splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    return values


def main_pid(host: Any, unit: str) -> int:
    return int(systemctl_show(host, unit, "MainPID")["MainPID"])


def listening(host: Any, port: int) -> bool:
    return any(listener.port == port for listener in tcp_listeners(host))


# ---- Prosody's log ---------------------------------------------------------------------------


class ProsodyLog:
    """What Prosody logged after a mark: its files under /var/log/prosody and its journal.

    Marks are exact (file sizes, a journal cursor), so lines logged just before the mark, e.g.
    by the previous test in the same second, never count."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def mark(self) -> dict[str, Any]:
        sizes = {}
        for line in self.host.run("stat -c '%s %n' /var/log/prosody/*.log 2>/dev/null").stdout.splitlines():
            size, name = line.split(" ", 1)
            sizes[name] = int(size)
        last = run_ok(self.host, "journalctl -n 1 --show-cursor --no-pager -o cat").splitlines()[-1]
        assert last.startswith("-- cursor: "), last
        return {"sizes": sizes, "cursor": last.removeprefix("-- cursor: ")}

    def since(self, mark: dict[str, Any]) -> str:
        text = [
            self.host.run(f"tail -c +{size + 1} {shlex.quote(name)}").stdout for name, size in mark["sizes"].items()
        ]
        text.append(journal_text_since(self.host, mark["cursor"], "prosody"))
        return "".join(text)


# ---- raw XMPP from the host ------------------------------------------------------------------


def stream_header(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' "
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    ).encode()


def read_until(sock: socket.socket, marker: bytes, limit: int = 65536) -> bytes:
    """Read until MARKER, EOF or LIMIT bytes; the socket's timeout bounds each read."""
    data = b""
    while marker not in data and len(data) < limit:
        try:
            chunk = sock.recv(4096)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


# ---- site.yml, run again from a check ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlaybookRun:
    rc: int
    changed: int
    failed: int
    output: str

    def describe(self) -> str:
        return f"site.yml exited {self.rc} (changed={self.changed}, failed={self.failed}):\n{self.output[-6000:]}"

    def changed_tasks(self) -> list[str]:
        """The names of the tasks and handlers that reported "changed" (default callback output)."""
        names, current = [], ""
        for line in self.output.splitlines():
            header = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \*+$", line)
            if header:
                current = header.group(1).split(" : ", 1)[-1]
            elif line.startswith("changed: [") and current not in names:
                names.append(current)
        return names


def site_command(extra_vars: dict[str, Any], *, tags: str = "") -> list[str]:
    if not os.environ.get("MOLECULE_INVENTORY_FILE"):
        pytest.fail("MOLECULE_INVENTORY_FILE is not set: run these checks through `molecule verify`")
    return [
        str(ANSIBLE_PLAYBOOK), "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SITE),
        "--extra-vars", json.dumps(extra_vars),
    ] + (["--tags", tags] if tags else [])  # fmt: skip


def playbook_env() -> dict[str, str]:
    # Molecule's environment (ANSIBLE_CONFIG, roles path) reaches us through the verifier; its
    # colours would only get in the way of reading the recap.
    return dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")


def playbook_result(rc: int, output: str) -> PlaybookRun:
    output = ANSI.sub("", output)
    recaps = RECAP.findall(output)
    changed = sum(int(r[1]) for r in recaps)
    failed = sum(int(r[3]) + int(r[2]) for r in recaps)
    return PlaybookRun(rc=rc, changed=changed, failed=failed, output=output)


def run_site(
    extra_vars: dict[str, Any] | None = None, *, tags: str = "", env: dict[str, str] | None = None
) -> PlaybookRun:
    """ansible-playbook site.yml against the container, as an operator would run it (with TAGS:
    a partial run, --tags TAGS; ENV: more environment for the controller, such as TMPDIR)."""
    done = subprocess.run(
        site_command(extra_vars or {}, tags=tags),
        env=playbook_env() | (env or {}), capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False,
    )  # fmt: skip
    return playbook_result(done.returncode, done.stdout + done.stderr)


def expect_ok(run: PlaybookRun) -> PlaybookRun:
    if run.rc != 0 or run.failed:
        pytest.fail(run.describe())
    return run


def journal_cursor(host: Any) -> str:
    last = run_ok(host, "journalctl -n 1 --show-cursor --no-pager -o cat").splitlines()[-1]
    assert last.startswith("-- cursor: "), last
    return last.removeprefix("-- cursor: ")


def journal_since(host: Any, cursor: str, unit: str, priority: str | None = None) -> list[dict[str, Any]]:
    """UNIT's journal entries after CURSOR (at PRIORITY or more severe), as journalctl's JSON.

    --cursor, not --after-cursor: systemd 252's --after-cursor skips the first entry that matches
    the filters when the cursor's own entry does not. --cursor starts at the cursor's entry, which
    is dropped here if it matches."""
    level = f" -p {priority}" if priority else ""
    command = f"journalctl -u {unit} --no-pager -o json{level} --cursor {shlex.quote(cursor)}"
    entries = [json.loads(line) for line in run_ok(host, command).splitlines() if line.strip()]
    return [entry for entry in entries if entry.get("__CURSOR") != cursor]


def journal_text_since(host: Any, cursor: str, unit: str) -> str:
    """The messages of UNIT's journal entries after CURSOR, one per line (like ``-o cat``)."""
    return "".join(f"{entry.get('MESSAGE', '')}\n" for entry in journal_since(host, cursor, unit))


# ---- a live TLS 1.0 session from the host ---------------------------------------------------


def legacy_client_context() -> ssl.SSLContext:
    """A TLS 1.0 client like a BlackBerry 10; it trusts anything (fingerprints are compared)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def open_session(scenario: Scenario, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    """STARTTLS through the published port, up to Prosody's SASL features: with TLS 1.0 trusting
    anything, or with CONTEXT (whose verification failure raises ssl.SSLCertVerificationError)."""
    raw = socket.create_connection(("127.0.0.1", scenario.host_port(5222)), timeout=15)
    raw.sendall(stream_header(scenario.domain))
    assert b"starttls" in read_until(raw, b"</stream:features>")
    raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    # Read exactly the <proceed/> element: a byte more would be the server's TLS data.
    proceed = b""
    while not re.search(rb"<proceed[^>]*/>", proceed) and len(proceed) < 1024:
        byte = raw.recv(1)
        if not byte:
            break
        proceed += byte
    assert re.search(rb"<proceed[^>]*/>", proceed), proceed
    session = (context or legacy_client_context()).wrap_socket(raw, server_hostname=scenario.domain)
    session.sendall(stream_header(scenario.domain))
    features = read_until(session, b"</stream:features>")
    assert b"PLAIN" in features, f"no SASL PLAIN from Prosody behind the proxy: {features!r}"
    return session


def fingerprint_of(session: ssl.SSLSocket) -> str:
    der = session.getpeercert(binary_form=True)
    assert der
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def authenticate(session: ssl.SSLSocket, user: User) -> bytes:
    """SASL PLAIN as USER on a session at Prosody's SASL features; Prosody's reply (<success/> or not)."""
    token = base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode()
    session.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    return read_until(session, b"success")
