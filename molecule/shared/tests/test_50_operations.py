"""Day-2 operations: Prosody restarts under the proxy, certificates renewed with a SIGHUP reload.

These tests change the container's state, so they run last (files run in name order, tests in
file order) and the certificate test is the very last one.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from support import (
    LoginCheck,
    Scenario,
    authenticate,
    file_fingerprint,
    fingerprint_of,
    listening,
    main_pid,
    open_session,
    run_ok,
    served_fingerprint,
    socket_as,
    tls10_cert_path,
    wait_for,
)

BACKEND_PORT = 522  # bbproxy_backend_port
PROSODY_TLS_PORT = 523  # bbproxy_prosody_tls_port


def test_prosody_restart_keeps_proxy_up(host: Any, login_check: LoginCheck) -> None:
    proxy_pid = main_pid(host, "bbproxy")
    run_ok(host, "systemctl restart prosody")
    wait_for(lambda: listening(host, BACKEND_PORT), f"Prosody to listen on {BACKEND_PORT} again")
    assert host.service("bbproxy").is_running
    assert main_pid(host, "bbproxy") == proxy_pid, "restarting Prosody restarted the proxy"
    result = login_check("1.0")
    assert result.returncode == 0, f"no login after the Prosody restart: {result.stdout}{result.stderr}"


def test_squatting_while_prosody_is_down_gets_nothing(host: Any, login_check: LoginCheck) -> None:
    """Prosody stopped (as during a restart, an upgrade or a crash): its ports are free, yet a
    local user still cannot take them."""
    run_ok(host, "systemctl stop prosody")
    try:
        assert not listening(host, BACKEND_PORT)
        for port in (BACKEND_PORT, PROSODY_TLS_PORT):
            for address in ("127.0.0.1", "::1"):
                got = socket_as(host, "nobody", "bind", address, port)
                assert got == "PermissionError", f"nobody took [{address}]:{port} while Prosody was down: {got}"
    finally:
        run_ok(host, "systemctl start prosody")
    wait_for(lambda: listening(host, BACKEND_PORT), f"Prosody to listen on {BACKEND_PORT} again")
    result = login_check("1.0")
    assert result.returncode == 0, f"no login after Prosody came back: {result.stdout}{result.stderr}"


# Run as root in the container during `systemctl restart bbproxy`: TCP connects to the STARTTLS port
# (at most 200, each bounded by timeouts) that send a stream header and wait for the proxy's
# answer, and, as `nobody` without capabilities, a loop binding the public port on 0.0.0.0 and [::]
# (at most 60 s). Prints one JSON object: the restart's exit status, each connect's outcome and
# whether the restart was still under way when it started, and the squatter's bind results.
_SQUAT = """
import collections, errno, json, select, socket, sys, time
port, seen, deadline = int(sys.argv[1]), collections.Counter(), time.monotonic() + 60
for _ in range(20000):
    if time.monotonic() > deadline or select.select([sys.stdin], [], [], 0.005)[0]:
        break
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((address, port))
            sock.listen(1)
            seen[address + " ok"] += 1
        except OSError as exc:
            seen[address + " " + errno.errorcode.get(exc.errno, str(exc.errno))] += 1
        finally:
            sock.close()
print(json.dumps(seen))
"""
_RESTART_PROBE = """
import json, socket, subprocess, sys, time
port, domain, squat_code = int(sys.argv[1]), sys.argv[2], sys.argv[3]
HEADER = (
    "<?xml version='1.0'?><stream:stream to='%s' version='1.0' xml:lang='en' "
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>" % domain
).encode()


def attempt():
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return type(exc).__name__
    with sock:
        sock.settimeout(30)
        data = b""
        try:
            sock.sendall(HEADER)
            while b"starttls" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return "closed before the answer: %r" % data[-200:]
                data += chunk
        except OSError as exc:
            return "%s after %r" % (type(exc).__name__, data[-200:])
    return "answered" if b"<stream:features" in data else "odd answer: %r" % data[-200:]


squat = subprocess.Popen(
    ["setpriv", "--reuid=nobody", "--regid=nogroup", "--init-groups", "--inh-caps=-all",
     "--bounding-set=-all", "python3", "-c", squat_code, str(port)],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
)
time.sleep(0.2)
restart = subprocess.Popen(["systemctl", "restart", "bbproxy"])
connects, after, deadline = [], 0, time.monotonic() + 120
while len(connects) < 200 and time.monotonic() < deadline:
    during = restart.poll() is None
    after += not during
    if after > 20:
        break
    connects.append([during, attempt()])
    time.sleep(0.02)
status = restart.wait(timeout=120)
squatted, _ = squat.communicate(input="stop", timeout=90)
print(json.dumps({"restart": status, "connects": connects, "squat": json.loads(squatted)}))
"""


@pytest.fixture(scope="module")
def restart_under_load(host: Any, scenario: Scenario) -> dict[str, Any]:
    """One `systemctl restart bbproxy` with clients connecting and `nobody` binding throughout."""
    old_pid = main_pid(host, "bbproxy")
    args = " ".join(shlex.quote(arg) for arg in (_RESTART_PROBE, "5222", scenario.domain, _SQUAT))
    output = run_ok(host, f"python3 -c {args}")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    assert result["restart"] == 0, output
    assert main_pid(host, "bbproxy") not in (0, old_pid), "systemctl restart bbproxy did not restart the proxy"
    return result


def test_proxy_restart_refuses_no_client(restart_under_load: dict[str, Any]) -> None:
    """The old proxy stops accepting, the new one accepts from the same socket (bbproxy.socket):
    clients that arrive in between wait in the listen queue and are answered by the new proxy."""
    connects = restart_under_load["connects"]
    during = [outcome for under_way, outcome in connects if under_way]
    # Control: the loop really overlapped the restart, and went on after it.
    assert during, f"no connect was made while the restart was under way: {connects}"
    assert len(during) < len(connects), connects
    failed = [outcome for _, outcome in connects if outcome != "answered"]
    assert not failed, f"{len(failed)} of {len(connects)} connects ({len(during)} during the restart) failed: {failed}"


def test_squatting_the_public_ports_during_a_proxy_restart_gets_nothing(restart_under_load: dict[str, Any]) -> None:
    """systemd holds the public ports while the proxy drains and restarts: a local user can never
    bind them, so the new proxy never meets "address in use"."""
    squat = restart_under_load["squat"]
    taken = {key: count for key, count in squat.items() if not key.endswith(" EADDRINUSE")}
    assert not taken, f"nobody bound the public port during the restart: {squat}"
    assert squat.get("0.0.0.0 EADDRINUSE", 0) > 0 and squat.get(":: EADDRINUSE", 0) > 0, squat


def test_public_ports_stay_taken_after_the_restart(host: Any) -> None:
    for address in ("0.0.0.0", "::"):
        assert socket_as(host, "nobody", "bind", address, 5222) == "EADDRINUSE", address
    # Control: the same user binds a free unprivileged port at once.
    assert socket_as(host, "nobody", "bind", "0.0.0.0", 5200) == "ok"


def test_sighup_serves_new_cert_and_keeps_sessions(host: Any, scenario: Scenario, proxy_config: dict[str, Any]) -> None:
    cert, key = tls10_cert_path(proxy_config, scenario.domain)  # what served_fingerprint() sees
    old = file_fingerprint(host, cert)
    assert served_fingerprint(host, 5222, scenario.domain) == old
    session = open_session(scenario)
    try:
        assert fingerprint_of(session) == old
        # A renewal: new key and certificate written in place (owner and mode stay), then reload.
        domain = shlex.quote(scenario.domain)
        run_ok(
            host,
            "set -e; d=$(mktemp -d); "
            f"openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={domain} "
            f"-addext subjectAltName=DNS:{domain} -keyout $d/key -out $d/crt 2>/dev/null; "
            f"cat $d/key > {shlex.quote(key)}; cat $d/crt > {shlex.quote(cert)}; rm -r $d",
        )
        new = file_fingerprint(host, cert)
        assert new != old
        proxy_pid = main_pid(host, "bbproxy")
        run_ok(host, "systemctl reload bbproxy")
        wait_for(
            lambda: served_fingerprint(host, 5222, scenario.domain) == new, "new handshakes to get the new cert", 15
        )
        assert main_pid(host, "bbproxy") == proxy_pid, "the reload restarted the proxy"
        if scenario.direct_tls:
            assert served_fingerprint(host, 5223, scenario.domain, starttls=False) == new
        # The session opened before the reload still relays to Prosody: log in on it.
        reply = authenticate(session, scenario.users[0])
        assert b"<success" in reply, f"the pre-reload session no longer works: {reply!r}"
    finally:
        session.close()
