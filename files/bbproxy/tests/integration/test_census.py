"""bbproxy census end to end (issue 20): known hellos through a real proxy, then its report.

Served legacy logins are real TLS 1.0 handshakes (Python's ssl and `openssl s_client -tls1`);
failed ones are testssl.sh's Java 7u25 and Android 4.0.4 hellos replayed raw (they never
finish). The report is read from the proxy's own log file by `bbproxy census`, as an operator
would run it against the journal.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .. import testssl_data
from .support import (
    DOMAIN,
    STARTTLS,
    Certs,
    ProxyFactory,
    RecordingBackend,
    client_context,
    connect,
    open_stream,
    proxy_env,
    read_proceed,
    wait_until,
)
from .test_device_hellos import client_simulation_file, replay

pytestmark = pytest.mark.integration


def tls10_login(port: int, certs: Certs) -> str:
    with connect(port) as sock:
        open_stream(sock)
        sock.sendall(STARTTLS)
        read_proceed(sock)
        with client_context("1.0", certs.cafile).wrap_socket(sock, server_hostname=DOMAIN) as tls:
            return tls.version() or "-"


def census(log: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bbproxy", "census", "--log", log, "--days", "0", *args],
        capture_output=True, text=True, timeout=60, env=proxy_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_census_and_dry_run_from_the_proxys_own_log(
    proxy_factory: ProxyFactory, recording_backend: RecordingBackend, certs: Certs
) -> None:
    devices = {d.name: d for d in testssl_data.parse_client_simulation(client_simulation_file().read_text())}
    # The recording backend never answers a client's goodbye: end those sessions after a second.
    proxy = proxy_factory(backend=recording_backend.address, config={"limits": {"half_close_timeout": 1}})
    for _ in range(3):
        assert tls10_login(proxy.port, certs) == "TLSv1"
    for name in ("Java 7u25", "Java 7u25", "Android 4.0.4"):
        replay(proxy.port, devices[name].hello)
    # Read as the journal would be, while the proxy runs: once every session has its close line.
    wait_until(lambda: proxy.log_text().count(" close=") >= 6, 30, "six close lines")
    log = str(proxy.log_path)

    text = census(log)
    logged_in = "clients below TLS 1.2 that logged in: 1 distinct (family, address): 1 openssl-3.0-tls1.0+1"
    assert logged_in in text
    java = next(line for line in text.splitlines() if line.startswith("java-7u25"))
    assert java.split()[1:6] == ["TLSv1", "0", "0", "2", "1"]  # two failed handshakes, one address
    assert any(line.startswith("android-4.0.4 ") for line in text.splitlines())

    text = census(log, "--min-tls", "1.2")
    assert "1 clients (3 logins) would no longer log in:" in text and "127.0.0.0/24: 1" in text
    text = census(log, "--legacy-networks", "127.0.0.0/8")
    assert "nobody who logged in would be refused" in text
    text = census(log, "--legacy-networks", "192.0.2.0/24")
    assert "1 clients (3 logins) would no longer log in:" in text
