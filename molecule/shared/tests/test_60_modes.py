"""The optional modes, checked when the scenario turns them on (Debian 13 does; see its host_vars).

Whether a mode is on is read from the deployed files (bbproxy.toml, prosody.cfg.lua), so each
check runs exactly where the role configured that mode and says why it skipped elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from typing import Any

import pytest

from support import (
    ProsodyLog,
    Scenario,
    file_fingerprint,
    listening,
    negotiated_protocol,
    run_ok,
    s_client,
    served_cert_path,
    served_fingerprint,
    tcp_listeners,
    wait_for,
)

PROSODY_CONFIG = "/etc/prosody/prosody.cfg.lua"
STARTTLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
S2S_PORT = 5269
SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")

# Runs inside the container: STARTTLS by hand from SOURCE to the proxy, TLS (no verification: only
# the stream matters here), a stream header; prints what the server sent after TLS as JSON.
STARTTLS_CLIENT = r"""
import json, socket, ssl, subprocess, sys
source, port, domain, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
while_open = sys.argv[5:]  # a command to run while the session is still open
header = ("<?xml version='1.0'?><stream:stream to='%s' version='1.0' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams'>" % domain).encode()
def until(sock, marker):
    data = b""
    while marker not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(15)
sock.bind((source, 0))
sock.connect(("127.0.0.1", port))
sock.sendall(header)
pre = until(sock, b"</stream:features>")
sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
proceed = until(sock, b"/>")
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if version == "1.0":  # what the proxy terminates in every routing mode
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ECDHE+AESGCM:ECDHE+AES:@SECLEVEL=0")
tls = context.wrap_socket(sock, server_hostname=domain)
tls.sendall(header)
post = until(tls, b"</stream:features>")
seen = subprocess.run(while_open, capture_output=True, text=True, timeout=30).stdout if while_open else ""
version = tls.version()
tls.close()
print(json.dumps({"source": source, "version": version, "while_open": seen, "pre": pre.decode(errors="replace"),
                  "proceed": proceed.decode(errors="replace"), "post": post.decode(errors="replace")}))
"""

# Runs inside the container: an s2s stream header to Prosody; prints the features it offers.
S2S_CLIENT = r"""
import socket, sys
port, domain = int(sys.argv[1]), sys.argv[2]
sock = socket.create_connection(("127.0.0.1", port), timeout=15)
sock.sendall(("<?xml version='1.0'?><stream:stream to='%s' from='peer.invalid' version='1.0' "
              "xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>" % domain).encode())
data = b""
while b"</stream:features>" not in data and len(data) < 65536:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
sock.close()
print(data.decode(errors="replace"))
"""


def starttls_from(
    host: Any, source: str, domain: str, version: str = "any", while_open: tuple[str, ...] = ()
) -> dict[str, str]:
    """STARTTLS through the proxy from SOURCE; VERSION "1.0" or "any" (the newest both sides have).

    WHILE_OPEN: a command (argv) run in the container while the post-TLS stream is still open.
    """
    args = [source, "5222", domain, version, *while_open]
    command = f"timeout 60 python3 -c {shlex.quote(STARTTLS_CLIENT)} {shlex.join(args)}"
    result: dict[str, str] = json.loads(run_ok(host, command))
    return result


@pytest.fixture(scope="module")
def metrics_listen(proxy_config: dict[str, Any]) -> str:
    address = str(proxy_config.get("metrics_listen", ""))
    if not address:
        pytest.skip("metrics are off here (metrics_listen is empty in /etc/bbproxy/bbproxy.toml)")
    return address


def scrape(host: Any, address: str) -> str:
    script = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    return run_ok(host, f"python3 -c {shlex.quote(script)} http://{address}/metrics")


def tls10_handshakes(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == "bbproxy_handshakes_total" and 'version="TLSv1"' in match.group(2):
            total += float(match.group(3))
    return total


def test_metrics_count_a_tls10_handshake(host: Any, scenario: Scenario, metrics_listen: str) -> None:
    before = tls10_handshakes(scrape(host, metrics_listen))
    summary = s_client(host, 5222, scenario.domain, "-tls1")
    assert negotiated_protocol(summary) == "TLSv1", summary
    after = scrape(host, metrics_listen)
    assert tls10_handshakes(after) > max(before, 0), f"no new TLSv1 handshake sample:\n{after}"


def test_metrics_port_is_loopback_and_not_in_ufw(host: Any, metrics_listen: str) -> None:
    port = int(metrics_listen.rpartition(":")[2])
    bound = [lst for lst in tcp_listeners(host) if lst.port == port]
    assert bound, f"nothing listens on the metrics port {port}"
    assert all(ipaddress.ip_address(lst.address).is_loopback for lst in bound), bound
    status = run_ok(host, "ufw status")
    assert not re.search(rf"^{port}\b", status, re.MULTILINE), f"UFW mentions the metrics port:\n{status}"


def test_prosody_logs_the_real_client_address(
    host: Any, scenario: Scenario, proxy_config: dict[str, Any], prosody_log: ProsodyLog
) -> None:
    if proxy_config.get("send_proxy_protocol", "off") == "off":
        pytest.skip("send_proxy_protocol is off here (/etc/bbproxy/bbproxy.toml)")
    mark = prosody_log.mark()
    # TLS 1.0: terminated by the proxy in every routing mode (spliced sessions: the test below).
    session = starttls_from(host, "127.0.0.2", scenario.domain, "1.0")
    assert "<stream:features" in session["post"], session

    def logged() -> bool:
        return "Client address 127.0.0.2 " in prosody_log.since(mark)

    wait_for(logged, "Prosody to log 'Client address 127.0.0.2' (mod_bbproxy_proxy)", timeout=15)


def test_no_starttls_offered_after_the_proxy(host: Any, scenario: Scenario) -> None:
    # Whatever the TLS mode, Prosody must not offer a second STARTTLS on the proxied stream.
    session = starttls_from(host, "127.0.0.1", scenario.domain)
    assert STARTTLS_NS in session["pre"], session
    assert "<stream:features" in session["post"], session
    assert STARTTLS_NS not in session["post"], session


def test_backend_secure_keeps_s2s_starttls(host: Any, scenario: Scenario) -> None:
    if '"bbproxy_backend"' not in host.file(PROSODY_CONFIG).content_string:
        pytest.skip("bbproxy_prosody_tls_mode is not backend_secure here (no mod_bbproxy_backend)")
    if not listening(host, S2S_PORT):
        pytest.skip(f"Prosody has no s2s listener on {S2S_PORT}")
    command = f"timeout 30 python3 -c {shlex.quote(S2S_CLIENT)} {S2S_PORT} {shlex.quote(scenario.domain)}"
    features = run_ok(host, command)
    assert STARTTLS_NS in features, f"Prosody's s2s port offers no STARTTLS:\n{features}"


@pytest.fixture(scope="module")
def legacy_only(proxy_config: dict[str, Any]) -> dict[str, Any]:
    tls: dict[str, Any] = proxy_config.get("tls", {})
    if tls.get("routing") != "legacy-only":
        pytest.skip("tls.routing is not legacy-only here (/etc/bbproxy/bbproxy.toml)")
    return tls


SHOW_C2S = ("prosodyctl", "shell", "c2s:show()")  # Prosody's session table, with a Security column


def mechanisms(features: str) -> list[str]:
    return re.findall(r"<mechanism>([^<]+)</mechanism>", features)


def test_legacy_only_modern_client_gets_prosodys_own_tls(
    host: Any, scenario: Scenario, legacy_only: dict[str, Any]
) -> None:
    """Prosody's session table says TLS, and it offers channel binding: the TLS is Prosody's."""
    session = starttls_from(host, "127.0.0.1", scenario.domain, "any", SHOW_C2S)
    assert session["version"] == "TLSv1.3", session
    assert any(m.endswith("-PLUS") for m in mechanisms(session["post"])), session["post"]
    rows = [line for line in session["while_open"].splitlines() if "[127.0.0.1]:" in line]
    assert rows and all("TLSv1.3" in row for row in rows), session["while_open"]


def test_legacy_only_tls10_client_is_terminated_by_the_proxy(
    host: Any, scenario: Scenario, legacy_only: dict[str, Any]
) -> None:
    since = run_ok(host, "date '+%Y-%m-%d %H:%M:%S'").strip()
    session = starttls_from(host, "127.0.0.1", scenario.domain, "1.0", SHOW_C2S)
    assert session["version"] == "TLSv1", session
    assert "<stream:features" in session["post"], session
    assert not any(m.endswith("-PLUS") for m in mechanisms(session["post"])), session["post"]
    assert "TLSv1.3" not in session["while_open"], session["while_open"]

    def fingerprint_logged() -> bool:
        journal = run_ok(host, f"journalctl -u bbproxy --no-pager --since {shlex.quote(since)}")
        return "legacy client TLSv1: versions=TLSv1 " in journal

    wait_for(fingerprint_logged, "the proxy's fingerprint line for the TLS 1.0 client", timeout=15)


def test_legacy_only_spliced_client_is_seen_by_prosody_from_its_own_address(
    host: Any, scenario: Scenario, legacy_only: dict[str, Any]
) -> None:
    """tls.splice "starttls" (bbproxy_tls_splice "auto" with the PROXY header on): Prosody's own
    TLS, with channel binding, in a session whose address is the client's, not the proxy's."""
    if legacy_only.get("splice", "direct-tls") != "starttls":
        pytest.skip("tls.splice is not starttls here (/etc/bbproxy/bbproxy.toml)")
    session = starttls_from(host, "127.0.0.2", scenario.domain, "any", SHOW_C2S)
    assert session["version"] == "TLSv1.3", session
    assert any(m.endswith("-PLUS") for m in mechanisms(session["post"])), session["post"]
    rows = [line for line in session["while_open"].splitlines() if "[127.0.0.2]:" in line]
    assert rows and all("TLSv1.3" in row for row in rows), session["while_open"]


def test_prosodys_tls_port_is_loopback_only_and_not_in_ufw(host: Any, legacy_only: dict[str, Any]) -> None:
    port = int(str(legacy_only["backend"]).rpartition(":")[2])
    bound = [lst for lst in tcp_listeners(host) if lst.port == port]
    assert bound, f"Prosody does not listen on its port for spliced clients {port}"
    assert all(ipaddress.ip_address(lst.address).is_loopback for lst in bound), bound
    status = run_ok(host, "ufw status")
    assert not re.search(rf"^{port}\b", status, re.MULTILINE), f"UFW mentions port {port}:\n{status}"


def test_a_legacy_chain_goes_to_legacy_clients_only(
    host: Any, scenario: Scenario, proxy_config: dict[str, Any]
) -> None:
    legacy_cert = proxy_config.get("tls", {}).get("legacy_cert")
    if not legacy_cert:
        pytest.skip("no tls.legacy_cert here (bbproxy_legacy_certificate is {})")
    legacy = file_fingerprint(host, legacy_cert)
    assert served_fingerprint(host, 5222, scenario.domain) == legacy
    modern = served_fingerprint(host, 5222, scenario.domain, tls_flag="-tls1_3")
    assert modern != legacy
    assert modern == file_fingerprint(host, served_cert_path(proxy_config, scenario.domain)[0])
