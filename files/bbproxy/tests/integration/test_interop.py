"""Interop matrix: XMPP clients nobody in this project wrote, through bbproxy and against Prosody.

Every cell: one client logs in (SASL, resource bind) over STARTTLS or direct TLS and sends a
chat message to bob, who is logged in on Prosody's plaintext port by a receiver here; the cell
passes when the client exits 0 and bob got the message (slixmpp's login check proves delivery
itself). The TLS version each session really had is read from the proxy's session line
(``tls=``) or, against Prosody, from its "Stream encrypted (...)" line, and checked.

Doors (targets):
  prosody        the reference: Prosody's own STARTTLS and direct TLS (OpenSSL 3, tls_profile
                 intermediate). TLS 1.0 must FAIL here: that is the problem bbproxy solves.
  terminate-all  bbproxy terminates every TLS version and relays to Prosody in plaintext.
  legacy-only    bbproxy terminates only legacy (< TLS 1.2) clients; modern ones are spliced
                 to Prosody's own direct-TLS port (the session line says tls=passthrough).

A client that passes against Prosody must pass through both proxies; a TLS 1.0 client must
pass through both proxies although Prosody refuses it. docs/interop.md has the table.

BBPROXY_INTEROP_REPORT=<file> writes the observed matrix there as Markdown rows.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .interop_clients import ADAPTERS, OPENSSL_NAMES, Adapter, Invocation, Job
from .support import (
    DOMAIN,
    LOOPBACK,
    PROSODY_CONFIG,
    Certs,
    ProxyProcess,
    ProxyStarter,
    free_port,
    port_accepts,
    recv_until,
    running_prosody,
    stream_header,
)

pytestmark = pytest.mark.integration

USERS = ("alice", "bob", "carol")
SENDER, RECEIVER = "alice", "bob"
CLIENT_TIMEOUT = 30.0  # seconds per client run; each also has its own shorter deadline
TARGETS = ("prosody", "terminate-all", "legacy-only")
ENCRYPTED_RE = re.compile(r"Stream encrypted \((TLSv[\d.]+) with")
SESSION_TLS_RE = re.compile(r" tls=(\S+) cipher=")
MODERN = {"TLSv1.2", "TLSv1.3"}


# --------------------------------------------------------------------------- Prosody and the receiver


@dataclasses.dataclass(frozen=True)
class ProsodyDoors:
    plain_port: int  # the receiver's (and bbproxy's backend) port
    starttls_port: int | None  # Prosody's own STARTTLS, None when its c2s port has no TLS
    direct_tls_port: int
    passwords: dict[str, str]
    log: Path


@contextlib.contextmanager
def prosody_doors(directory: Path, certs: Certs, *, starttls: bool, cert: str) -> Iterator[ProsodyDoors]:
    """A Prosody with a c2s port (STARTTLS offered when ``starttls``, never required: the
    receiver logs in without TLS) and its own direct-TLS port with ``cert``."""
    port, tls_port = free_port(), free_port()
    pair = certs.pair(cert)
    config = PROSODY_CONFIG.format(dir=directory, port=port, domain=DOMAIN).replace(
        "c2s_direct_tls_ports = {}",
        f"c2s_direct_tls_ports = {{ {tls_port} }}\n"
        f'ssl = {{ certificate = "{pair.cert}"; key = "{pair.key}" }}',
    )
    if starttls:
        config = config.replace('"posix" }', '"posix"; "tls" }').replace(
            'modules_disabled = { "tls" }', "modules_disabled = {}"
        )
    with running_prosody(
        directory,
        config,
        USERS,
        lambda: port_accepts(port) and port_accepts(tls_port),
        f"listen on {LOOPBACK}:{port} and {tls_port}",
    ) as (_, passwords, log, _config):
        yield ProsodyDoors(port, port if starttls else None, tls_port, passwords, log)


class Receiver:
    """bob, logged in on Prosody's plaintext port (SASL PLAIN, bind, presence), collecting bytes.

    Not a client under test: it only has to see the message arrive.
    """

    def __init__(self, port: int, password: str) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self._data = bytearray()
        self._lock = threading.Lock()
        sock = self.sock
        sock.sendall(stream_header())
        features = recv_until(sock, b"</stream:features>", 10)
        assert b"PLAIN" in features, f"receiver: no SASL PLAIN in {features!r}"
        token = base64.b64encode(f"\0{RECEIVER}\0{password}".encode()).decode()
        sock.sendall(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode()
        )
        assert b"<success" in recv_until(sock, b"success", 10), "receiver: SASL failed"
        sock.sendall(stream_header())
        recv_until(sock, b"</stream:features>", 10)
        sock.sendall(
            b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>interop-receiver</resource></bind></iq><presence/>"
        )
        assert b"<jid>" in recv_until(sock, b"</iq>", 10), "receiver: no resource bound"
        sock.settimeout(None)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                with self._lock:
                    self._data.extend(chunk)

    def got(self, body: str) -> bool:
        # The token alone: sendxmpp sends the line it read, newline included.
        with self._lock:
            return body.encode() in self._data

    def wait_for(self, body: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.got(body):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- doors


@dataclasses.dataclass(frozen=True)
class Door:
    """Where a client connects, who receives, and whose log says which TLS it got."""

    name: str
    starttls_port: int
    direct_tls_port: int
    prosody: ProsodyDoors  # the Prosody the receiver is on
    receiver: Receiver
    proxy: ProxyProcess | None


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[dict[str, Door]]:
    """The reference Prosody (own STARTTLS + direct TLS), and the two proxies in front of a second
    Prosody (plaintext port + its own direct-TLS port for legacy-only's splices)."""
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(
            prosody_doors(tmp_path_factory.mktemp("prosody-reference"), certs, starttls=True, cert="rsa")
        )
        # The backend's own TLS uses the ECDSA certificate, the proxies the RSA one.
        backend = stack.enter_context(
            prosody_doors(tmp_path_factory.mktemp("prosody-backend"), certs, starttls=False, cert="ecdsa")
        )
        starter = ProxyStarter(tmp_path_factory.mktemp("interop-proxies"), certs)
        stack.callback(starter.stop_all)
        plain = f"{LOOPBACK}:{backend.plain_port}"
        terminate_all = starter(backend=plain, direct_tls=True)
        legacy_only = starter(
            backend=plain,
            direct_tls=True,
            config={"tls": {"routing": "legacy-only", "backend": f"{LOOPBACK}:{backend.direct_tls_port}"}},
        )
        receivers = {
            name: Receiver(p.plain_port, p.passwords[RECEIVER])
            for name, p in (("ref", reference), ("be", backend))
        }
        for receiver in receivers.values():
            stack.callback(receiver.close)
        assert reference.starttls_port is not None
        result = {"prosody": Door("prosody", reference.starttls_port, reference.direct_tls_port, reference,
                                  receivers["ref"], None)}  # fmt: skip
        for proxy in (terminate_all, legacy_only):
            assert proxy.direct_tls_port is not None
            name = "terminate-all" if proxy is terminate_all else "legacy-only"
            result[name] = Door(name, proxy.port, proxy.direct_tls_port, backend, receivers["be"], proxy)
        yield result


# --------------------------------------------------------------------------- the matrix


@dataclasses.dataclass(frozen=True)
class Cell:
    client: str
    door: str
    direct_tls: bool
    legacy_tls: str | None  # held at this version; None: the client's default

    @property
    def id(self) -> str:
        transport = "direct" if self.direct_tls else "starttls"
        version = f"tls{self.legacy_tls}" if self.legacy_tls else "default"
        return f"{self.client}-{self.door}-{transport}-{version}"


def _cells() -> list[pytest.param]:
    cells = []
    for adapter in ADAPTERS.values():
        for door in TARGETS:
            for direct_tls in (False, True) if adapter.direct_tls else (False,):
                for legacy_tls in (None, adapter.legacy_tls) if adapter.legacy_tls else (None,):
                    cell = Cell(adapter.name, door, direct_tls, legacy_tls)
                    cells.append(pytest.param(cell, id=cell.id, marks=XFAIL.get(cell.id, ())))
    return cells


# Cells that fail through bbproxy for a reason found and reported (docs/interop.md), strict.
XFAIL: dict[str, pytest.MarkDecorator] = {}

REPORT: list[str] = []


def _versions(door: Door, offset: int) -> list[str]:
    """The TLS versions of the sessions logged since ``offset`` at this door."""
    if door.proxy is None:
        return ENCRYPTED_RE.findall(_log_since(door.prosody.log, offset))
    return SESSION_TLS_RE.findall(_log_since(door.proxy.log_path, offset))


def _run(invocation: Invocation, passwords: dict[str, str]) -> tuple[int, str]:
    try:
        result = subprocess.run(
            invocation.argv,
            input=invocation.stdin,
            capture_output=True,
            timeout=CLIENT_TIMEOUT,
            env=invocation.env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return -1, f"killed after {CLIENT_TIMEOUT}s: " + out.decode(errors="replace")[-2000:]
    output = (result.stdout + result.stderr).decode(errors="replace")
    for password in passwords.values():
        assert password not in output, "the client printed a password"
    return result.returncode, output[-3000:]


def _log_since(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


@pytest.mark.parametrize("cell", _cells())
def test_interop(
    cell: Cell, doors: dict[str, Door], certs: Certs, java_classes: Path, tmp_path: Path
) -> None:
    adapter: Adapter = ADAPTERS[cell.client]
    adapter.require()
    door = doors[cell.door]
    body = f"interop-{secrets.token_hex(8)}"
    job = Job(
        host=LOOPBACK,
        port=door.direct_tls_port if cell.direct_tls else door.starttls_port,
        domain=DOMAIN,
        user=SENDER,
        password=door.prosody.passwords[SENDER],
        to=f"{RECEIVER}@{DOMAIN}",
        peer_password=door.prosody.passwords[RECEIVER],
        body=body,
        cafile=certs.cafile,
        direct_tls=cell.direct_tls,
        legacy_tls=cell.legacy_tls,
        workdir=tmp_path,
        java_classes=java_classes,
    )
    log = door.proxy.log_path if door.proxy is not None else door.prosody.log
    prosody_offset = door.prosody.log.stat().st_size
    offset = log.stat().st_size
    rc, output = _run(adapter.invocation(job), door.prosody.passwords)
    delivered = rc == 0 and (adapter.checks_delivery or door.receiver.wait_for(body, 5))
    # The proxy writes a session's line when it closes, just after the client exits (the login
    # check has two sessions: its receiver logs in through the same door).
    sessions = 2 if adapter.checks_delivery else 1
    deadline = time.monotonic() + 5
    while delivered and len(_versions(door, offset)) < sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    versions = _versions(door, offset)
    spliced = ENCRYPTED_RE.findall(_log_since(door.prosody.log, prosody_offset)) if door.proxy else []
    seen = ",".join(versions) + (f" (Prosody: {','.join(spliced)})" if "passthrough" in versions else "")
    outcome = "delivered" if delivered else f"not delivered (exit {rc}: {output.strip().splitlines()[:1]})"
    REPORT.append(f"| {cell.id} | {outcome} | {seen or '-'} |")
    context = f"client output:\n{output}\nTLS seen: {seen or 'none'}"

    if cell.door == "prosody" and cell.legacy_tls:
        # The reference premise: Prosody (OpenSSL 3, tls_profile intermediate) refuses < TLS 1.2.
        assert not delivered, (
            f"Prosody accepted a TLS {cell.legacy_tls} client: the premise is wrong\n{context}"
        )
        return
    assert delivered, f"{cell.id}: client exit status {rc}, message not delivered\n{context}"
    if cell.legacy_tls:
        expected = OPENSSL_NAMES[cell.legacy_tls]
        assert expected in versions, f"the client was not held at {expected}\n{context}"
    elif door.proxy is not None and cell.door == "legacy-only":
        assert "passthrough" in versions and set(spliced) <= MODERN and spliced, f"not spliced\n{context}"
    else:
        assert versions and set(versions) <= MODERN, f"not a modern TLS version\n{context}"


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    target = os.environ.get("BBPROXY_INTEROP_REPORT")
    if target and REPORT:
        Path(target).write_text(
            "| cell | result | TLS seen |\n| --- | --- | --- |\n" + "\n".join(REPORT) + "\n"
        )
