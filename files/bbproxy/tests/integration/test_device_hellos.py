"""Every real device ClientHello that testssl.sh ships, replayed raw through the proxy (issue 16).

testssl.sh's client simulations (Debian package ``testssl.sh``, file
``/etc/testssl/client-simulation.txt``) hold the raw ClientHello record of ~160 real clients:
Android 2.3 to 12, Java 6 to 17, IE and Edge (Windows Phone 8.0 and 8.1 too), Safari, Firefox,
Chrome, OpenSSL 0.9.8 to 3.0, crawlers. Each one is sent, byte for byte, after the STARTTLS
dialogue, and the proxy's first answer is read (``tls_records.py``): the negotiated version,
suite and certificate key type (``encrypted`` for TLS 1.3), or the alert, or a close. The
answers must equal the committed table ``data/device_hellos.json``, per proxy profile:

* ``rsa``, ``ecdsa``, ``rsa+ecdsa`` -- the default policy (``routing = "terminate-all"``,
  ``min_tls = "1.0"``) with an RSA, an ECDSA, or both certificates;
* ``min-tls-1.2`` -- both certificates with ``min_tls = "1.2"``: the devices such a policy
  change cuts off;
* ``legacy-plain-rsa`` -- both certificates with the opt-in ``tls.legacy_plain_rsa`` (RSA key
  exchange for TLS 1.0/1.1 clients without ECDHE, such as Java 6).

So a change of the TLS policy that loses (or gains) a device class fails here, naming the
devices. The table also records each hello's JA3 string and hash as the proxy computes them
(``clienthello.py``), and whether the proxy's own hello parser reads it.

When a change is intended, regenerate the table and review its diff with the change::

    cd files/bbproxy
    BBPROXY_UPDATE_DEVICE_HELLOS=1 PYTHONPATH=$PWD/src pytest tests/integration/test_device_hellos.py

With that variable set the tests write the table instead of asserting (run them all, not with
``-n``: each test writes its own columns). A missing testssl.sh file fails the test; CI
installs the package (``make deps``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bbproxy import fingerprints
from bbproxy.clienthello import ClientHelloError, ClientHelloParser

from .. import testssl_data
from ..testssl_data import Device, parse_client_simulation
from .support import (
    LOOPBACK,
    STARTTLS,
    ProxyFactory,
    RecordingBackend,
    connect,
    free_port,
    open_stream,
    read_proceed,
)
from .tls_records import Outcome, ServerFlightReader

pytestmark = pytest.mark.integration

TESTSSL_PACKAGE = testssl_data.PACKAGE
TESTSSL_CANDIDATES = testssl_data.CANDIDATES
TABLE = Path(__file__).parent / "data" / "device_hellos.json"
UPDATE = os.environ.get("BBPROXY_UPDATE_DEVICE_HELLOS") == "1"
ANSWER_TIMEOUT = 10.0  # per hello; the proxy answers in milliseconds
POOL = 4  # connections at a time


@dataclass(frozen=True)
class Profile:
    cert: str
    min_tls: str | None
    description: str
    config: dict[str, Any] | None = None


PROFILES = {
    "rsa": Profile("rsa", None, "default policy (terminate-all, min_tls 1.0), one RSA certificate"),
    "ecdsa": Profile("ecdsa", None, "default policy, one ECDSA certificate"),
    "rsa+ecdsa": Profile("rsa+ecdsa", None, "default policy, an RSA and an ECDSA certificate"),
    "min-tls-1.2": Profile("rsa+ecdsa", "1.2", "min_tls 1.2, an RSA and an ECDSA certificate"),
    "legacy-plain-rsa": Profile(
        "rsa+ecdsa",
        None,
        "default policy plus tls.legacy_plain_rsa (Java 6), an RSA and an ECDSA certificate",
        {"tls": {"legacy_plain_rsa": True}},
    ),
}


def client_simulation_file() -> Path:
    for path in TESTSSL_CANDIDATES:
        if path.is_file():
            return path
    pytest.fail(
        f"testssl.sh's client simulations not found ({', '.join(map(str, TESTSSL_CANDIDATES))}): "
        f"apt-get install {TESTSSL_PACKAGE} (make deps installs it)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def devices() -> list[Device]:
    return parse_client_simulation(client_simulation_file().read_text())


def load_table() -> dict[str, Any]:
    try:
        return dict(json.loads(TABLE.read_text()))
    except FileNotFoundError:
        if UPDATE:
            return {}
        pytest.fail(f"{TABLE} missing: write it with BBPROXY_UPDATE_DEVICE_HELLOS=1", pytrace=False)


def update_table(devices: list[Device], columns: dict[str, dict[str, Any]]) -> None:
    """Set ``columns[device name]`` in the table (None: leave the field out); devices testssl.sh
    no longer has are dropped."""
    table = load_table()
    old = table.get("devices", {})
    source = client_simulation_file()
    table["source"] = (
        f"{TESTSSL_PACKAGE} client simulations ({source}), read at test time; see data/README.md"
    )
    table["profiles"] = {name: p.description for name, p in PROFILES.items()}
    table["devices"] = {}
    for device in devices:
        row = {**old.get(device.name, {}), **columns[device.name]}
        table["devices"][device.name] = {k: v for k, v in row.items() if v is not None}
    TABLE.parent.mkdir(exist_ok=True)
    TABLE.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")


def compare(devices: list[Device], actual: dict[str, dict[str, Any]], what: str, log: str = "") -> None:
    """Fail with every device whose ``actual`` fields differ from the table's (None: absent)."""
    expected = load_table().get("devices", {})
    problems = []
    extra = sorted(set(expected) - {d.name for d in devices})
    if extra:
        problems.append(f"in the table but not in testssl.sh's file: {extra}")
    for device in devices:
        if device.name not in expected:
            problems.append(f"{device.name}: not in the table")
            continue
        for field, value in actual[device.name].items():
            want = expected[device.name].get(field)
            if want != value:
                problems.append(f"{device.name}: {field}: expected {want!r}, got {value!r}")
    if problems:
        pytest.fail(
            f"{len(problems)} difference(s) from {TABLE.name} ({what}):\n  "
            + "\n  ".join(problems)
            + "\nIf this change is intended, regenerate the table with BBPROXY_UPDATE_DEVICE_HELLOS=1 "
            "and commit its diff with the change (docs/testing.md)."
            + (f"\n--- proxy log (tail) ---\n{log[-6000:]}" if log else ""),
            pytrace=False,
        )


def replay(port: int, hello: bytes) -> Outcome:
    """STARTTLS, then the raw hello; the proxy's first answer to it."""
    with connect(port) as sock:
        open_stream(sock)
        sock.sendall(STARTTLS)
        read_proceed(sock)
        sock.sendall(hello)
        reader = ServerFlightReader()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return reader.receive_eof()
            outcome = reader.receive_data(chunk)
            if outcome is not None:
                with_rst(sock)
                return outcome
    pytest.fail(f"no decision from the proxy within {ANSWER_TIMEOUT}s", pytrace=False)


def with_rst(sock: socket.socket) -> None:
    """Close by RST: the handshake is abandoned anyway, and no TIME_WAIT piles up."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def run_all(devices: list[Device], one: Callable[[Device], str]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=POOL) as pool:
        return dict(zip([d.name for d in devices], pool.map(one, devices), strict=True))


# --------------------------------------------------------------------------- the tests


def test_client_simulation_parser_reads_blocks() -> None:
    text = (
        "# comment\n\n"
        '     names+=("Device A")\n     short+=("a")\n     handshakebytes+=("16030100")\n'
        "     minDhBits+=(-1)\n"
        '     names+=("Device B")\n     short+=("b")\n     handshakebytes+=("")\n'
    )
    assert parse_client_simulation(text) == [
        Device("Device A", "a", b"\x16\x03\x01\x00"),
        Device("Device B", "b", b""),
    ]
    with pytest.raises(ValueError, match="before the first names"):
        parse_client_simulation('short+=("a")\n')
    with pytest.raises(ValueError, match="not a field"):
        parse_client_simulation('names+=("a")\nrm -rf /\n')


def test_every_hello_parses_as_in_the_table(devices: list[Device]) -> None:
    """The proxy's own parser on each hello: JA3 string and hash, or why it cannot read it."""
    actual: dict[str, dict[str, Any]] = {}
    for device in devices:
        row: dict[str, Any] = {"short": device.short, "ja3": None, "ja3_string": None, "parser_error": None}
        try:
            hello = ClientHelloParser().feed(device.hello)
        except ClientHelloError as exc:
            row["parser_error"] = str(exc)
        else:
            assert hello is not None, f"{device.name}: the hello is incomplete"
            row |= {"ja3": hello.ja3(), "ja3_string": hello.ja3_string()}
        actual[device.name] = row
    if UPDATE:
        update_table(devices, actual)
        return
    compare(devices, actual, "hello parser")


@pytest.mark.parametrize("profile", list(PROFILES))
def test_device_outcomes(
    devices: list[Device], proxy_factory: ProxyFactory, recording_backend: RecordingBackend, profile: str
) -> None:
    """Each device's hello through one proxy with this profile; the answers must match the table."""
    settings = PROFILES[profile]
    backend = recording_backend.address
    proxy = proxy_factory(
        backend=backend, cert=settings.cert, min_tls=settings.min_tls, config=settings.config
    )
    outcomes = run_all(devices, lambda d: str(replay(proxy.port, d.hello)))
    # No handshake completes (the replayed hello cannot finish one), so nothing reaches Prosody.
    assert recording_backend.connection_count == 0
    actual = {name: {profile: outcome} for name, outcome in outcomes.items()}
    if UPDATE:
        update_table(devices, actual)
        return
    compare(devices, actual, f"profile {profile}: {settings.description}", proxy.log_text())


def test_legacy_networks_refuses_every_legacy_device(
    devices: list[Device], proxy_factory: ProxyFactory, recording_backend: RecordingBackend
) -> None:
    """With tls.legacy_networks excluding the client, no device gets TLS below 1.2, whatever the
    format of its hello."""
    config = {"tls": {"legacy_plain_rsa": True, "legacy_networks": ["192.0.2.0/24"]}}
    proxy = proxy_factory(backend=recording_backend.address, cert="rsa+ecdsa", config=config)
    outcomes = run_all(devices, lambda d: str(replay(proxy.port, d.hello)))
    served_legacy = {name: o for name, o in outcomes.items() if o.startswith(("TLSv1 ", "TLSv1.1 "))}
    assert served_legacy == {}, f"legacy TLS served outside tls.legacy_networks:\n{proxy.log_text()[-3000:]}"


def test_missing_testssl_file_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "TESTSSL_CANDIDATES", (Path("/nonexistent/sim.txt"),))
    with pytest.raises(pytest.fail.Exception, match=re.escape("apt-get install testssl.sh")):
        client_simulation_file()


def test_every_device_is_logged_by_its_family_name_and_counted(
    devices: list[Device], proxy_factory: ProxyFactory, recording_backend: RecordingBackend
) -> None:
    """Names, not hashes (issue 20): each replayed hello's log line ends in the family name the
    shipped table (tools/fingerprint_table.py) gives its JA4, and each legacy one is counted in
    bbproxy_legacy_clients_total. A few families are spelled out here so that a table that lost
    its names fails too."""
    metrics_port = free_port()
    proxy = proxy_factory(
        backend=recording_backend.address,
        cert="rsa+ecdsa",
        config={"metrics_listen": f"{LOOPBACK}:{metrics_port}"},
    )
    run_all(devices, lambda d: str(replay(proxy.port, d.hello)))
    expected: dict[str, str] = {}
    for device in devices:
        hello = ClientHelloParser().feed(device.hello)
        assert hello is not None
        expected[device.name] = fingerprints.identify(hello).name
    for name, family in {
        "Java 7u25": "java-7u25",
        "IE 10 Win Phone 8.0": "ie-10-win-phone-8.0",
        "Android 4.3": "android-4.2.2-4.3",
        "Android 4.0.4": "android-4.0.4",
    }.items():
        assert expected[name] == family, f"{name}: the table calls it {expected[name]!r}"
    assert not [n for n in expected.values() if n.startswith("unknown:")], "a testssl.sh client has no name"
    deadline = time.monotonic() + 10
    while (logged := re.findall(r" family=(\S+)$", proxy.log_text(), re.MULTILINE)) and len(logged) < len(
        devices
    ):
        assert time.monotonic() < deadline, f"{len(logged)} fingerprint lines for {len(devices)} hellos"
        time.sleep(0.05)
    assert sorted(logged) == sorted(expected.values())
    with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    # A replayed hello never completes: every legacy one is a failed legacy handshake, counted
    # under its family name (every testssl.sh client is named, so none is "unknown").
    legacy: Counter[str] = Counter()
    for device in devices:
        hello = ClientHelloParser().feed(device.hello)
        if hello is not None and hello.max_version < 0x0303:
            legacy[hello.family(expected[device.name])] += 1
    counted = {
        family: float(count)
        for family, count in re.findall(
            r'^bbproxy_legacy_clients_total\{family="([^"]+)",outcome="failed"\} (\S+)$', text, re.MULTILINE
        )
    }
    assert legacy and counted == legacy, text[-3000:]
    assert counted["TLSv1/java-7u25"] >= 1 and "unknown" not in counted
