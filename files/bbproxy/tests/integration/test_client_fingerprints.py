"""Our own captures: the ClientHello of every client in the interop matrix, named in the table (issue 20).

testssl.sh's data names old devices; the clients operators run today are not in it. Each client
of the interop matrix (slixmpp, libstrophe, go-sendxmpp, sendxmpp, nbxmpp, xmpp.js, Java 17
JSSE) and OpenSSL's ``s_client`` is run against a capture listener (hello_capture.py), over
STARTTLS and direct TLS, at its default and held at its oldest TLS version. Each hello is
committed in ``data/own_hellos.json``; tools/fingerprint_table.py builds the shipped table from
testssl.sh's hellos AND these, so every one of them has a family name.

The test fails when a client's hello no longer has the JA4 recorded (the client or its TLS
stack changed: the table would call it unknown) or when the shipped table does not name it.
When a change is intended (a Debian update of a client), regenerate both and review the diff::

    cd files/bbproxy
    BBPROXY_UPDATE_OWN_HELLOS=1 PYTHONPATH=$PWD/src pytest tests/integration/test_client_fingerprints.py
    cd ../.. && .venv/bin/python tools/fingerprint_table.py
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbproxy import fingerprints
from bbproxy.clienthello import TLS_1_2

from .hello_capture import Captured, HelloCapture
from .interop_clients import ADAPTERS, NODE_MODULES, OPENSSL_NAMES, SYSTEM_PYTHON, Invocation, Job
from .support import DOMAIN, Certs

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent / "data" / "own_hellos.json"
UPDATE = os.environ.get("BBPROXY_UPDATE_OWN_HELLOS") == "1"
CLIENT_TIMEOUT = 20.0  # seconds until the hello must have arrived


@dataclasses.dataclass(frozen=True)
class Cell:
    client: str  # an interop adapter's name, or "s_client"
    direct_tls: bool
    held: str | None  # "1.0" / "1.1": the client held at that version; None: its default

    @property
    def id(self) -> str:
        transport = "direct" if self.direct_tls else "starttls"
        return f"{self.client}-{transport}-{f'tls{self.held}' if self.held else 'default'}"


def _cells() -> list[Cell]:
    cells = []
    for adapter in ADAPTERS.values():
        for direct_tls in (False, True) if adapter.direct_tls else (False,):
            for held in (None, adapter.legacy_tls) if adapter.legacy_tls else (None,):
                cells.append(Cell(adapter.name, direct_tls, held))
    cells += [Cell("s_client", direct_tls, held) for direct_tls in (False, True) for held in (None, "1.0")]
    return cells


def _dpkg(package: str) -> str:
    query = ["dpkg-query", "-W", "-f=${Version}", package]
    return subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()


def client_version(client: str) -> str:
    """The client's release, major.minor, as this machine has it (names the family)."""
    if client == "slixmpp":
        full = importlib.metadata.version("slixmpp")
    elif client == "xmpp.js":
        full = json.loads((NODE_MODULES / "@xmpp" / "client" / "package.json").read_text())["version"]
    elif client == "java":
        full = _dpkg("openjdk-17-jre-headless")
    elif client == "s_client":
        out = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True).stdout
        full = out.split()[1]
    else:
        full = _dpkg({"libstrophe": "libstrophe0", "nbxmpp": "python3-nbxmpp"}.get(client, client))
    match = re.match(r"\d+\.\d+", full)
    assert match, f"{client}: no version in {full!r}"
    return match.group(0)


def family_name(client: str, version: str, held: str | None) -> str:
    """``libstrophe-0.12``, ``java-17.0-tls1.0``: what the table calls this client's hello (s_client's
    is OpenSSL's default hello, which other OpenSSL-based clients send too: ``openssl-3.0``)."""
    client = "openssl" if client == "s_client" else client
    name = re.sub(r"[^a-z0-9.]+", "-", f"{client}-{version}".lower()).strip("-")
    return name + (f"-tls{held}" if held else "")


def _s_client(port: int, direct_tls: bool, held: str | None, cafile: Path) -> list[str]:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", DOMAIN]
    argv += ["-CAfile", str(cafile)]
    if not direct_tls:
        argv += ["-starttls", "xmpp", "-xmpphost", DOMAIN]
    if held:
        flag = "-" + OPENSSL_NAMES[held].lower().replace(".", "_").replace("tlsv", "tls")  # -tls1, -tls1_1
        argv += [flag, "-cipher", "DEFAULT:@SECLEVEL=0"]
    return argv


def _command(cell: Cell, port: int, certs: Certs, workdir: Path, classes: Path) -> Invocation:
    if cell.client == "s_client":
        return Invocation(_s_client(port, cell.direct_tls, cell.held, certs.cafile), dict(os.environ))
    adapter = ADAPTERS[cell.client]
    adapter.require()
    job = Job(
        host="127.0.0.1", port=port, domain=DOMAIN, user="alice", password="not-used-capture-only",
        to=f"bob@{DOMAIN}", peer_password="not-used-capture-only", body="capture", cafile=certs.cafile,
        direct_tls=cell.direct_tls, legacy_tls=cell.held, workdir=workdir, java_classes=classes,
    )  # fmt: skip
    return adapter.invocation(job)


def _wanted(cell: Cell, hellos: list[Captured]) -> Captured | None:
    """The hello of the client under test (slixmpp's check also logs in a peer at TLS 1.3)."""
    for captured in hellos:
        if cell.held is None or captured.hello.max_version < TLS_1_2:
            return captured
    return None


@pytest.fixture(scope="module")
def capture() -> Iterator[HelloCapture]:
    server = HelloCapture(DOMAIN)
    yield server
    server.close()


@pytest.fixture(scope="module")
def recorded() -> Iterator[dict[str, Any]]:
    data: dict[str, Any] = json.loads(DATA.read_text()) if DATA.exists() else {"clients": {}}
    yield data
    if UPDATE:
        data["about"] = "ClientHellos captured by tests/integration/test_client_fingerprints.py"
        data["clients"] = dict(sorted(data["clients"].items()))
        DATA.write_text(json.dumps(data, indent=1) + "\n")


def _table_names() -> dict[str, str]:
    """Client label -> family name, from the shipped table's ``clients`` lists."""
    table = tomllib.loads((Path(fingerprints.__file__).parent / "fingerprints.toml").read_text())
    return {client: family["name"] for family in table["family"] for client in family["clients"]}


@pytest.mark.parametrize("cell", _cells(), ids=lambda cell: cell.id)
def test_every_client_we_interoperate_with_has_a_family_name(
    cell: Cell,
    capture: HelloCapture,
    recorded: dict[str, Any],
    certs: Certs,
    java_classes: Path,
    tmp_path: Path,
) -> None:
    if cell.client == "s_client":
        assert shutil.which("openssl"), "openssl is not installed: apt-get install openssl"
    elif cell.client == "nbxmpp":
        assert Path(SYSTEM_PYTHON).exists()
    capture.take()
    invocation = _command(cell, capture.port(starttls=not cell.direct_tls), certs, tmp_path, java_classes)
    process = subprocess.Popen(
        invocation.argv, env=invocation.env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdin is not None
        process.stdin.write(invocation.stdin)  # the message body some clients read before connecting
        process.stdin.close()
        hellos = capture.wait(lambda got: _wanted(cell, got) is not None, CLIENT_TIMEOUT)
    finally:
        time.sleep(0.2)
        process.kill()
        process.wait(timeout=10)
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.stderr.close()
    captured = _wanted(cell, hellos)
    assert captured is not None, (
        f"{cell.id}: no ClientHello within {CLIENT_TIMEOUT}s (capture errors: {capture.errors}); "
        f"client stderr:\n{stderr.decode(errors='replace')[-2000:]}"
    )
    ja4 = fingerprints.ja4(captured.hello)
    version = client_version(cell.client)
    transport = "direct TLS" if cell.direct_tls else "STARTTLS"
    label = f"{cell.client} {version} ({transport}, {f'held at TLS {cell.held}' if cell.held else 'default'})"
    if UPDATE:
        recorded["clients"][cell.id] = {
            "client": label,
            "family": family_name(cell.client, version, cell.held),
            "ja4": ja4,
            "ja3": captured.hello.ja3(),
            "hello": captured.raw.hex(),
        }
        return
    entry = recorded["clients"].get(cell.id)
    assert entry is not None, f"{cell.id} is not in {DATA.name}: run with BBPROXY_UPDATE_OWN_HELLOS=1"
    assert ja4 == entry["ja4"], (
        f"{cell.id}: {label} now sends JA4 {ja4}, recorded {entry['ja4']} ({entry['client']}): "
        "regenerate (this file's docstring)"
    )
    named = fingerprints.identify(captured.hello).name
    assert named == _table_names().get(entry["client"]), (
        f"{cell.id}: the proxy calls it {named!r}; the shipped table is not built from {DATA.name}"
    )
    assert not named.startswith("unknown:")
