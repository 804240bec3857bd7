"""Helpers for the federation checks: the two servers, commands in them, a message between them.

Where the facts come from (each written down once):
- instance names: this scenario's molecule.yml ($MOLECULE_FILE); published ports: podman;
- each server's domain, user and password: molecule/federation/host_vars/INSTANCE.yml.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
SITE = HERE.parents[2] / "site.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
HOST_VARS = HERE.parent / "host_vars"
CLIENT = HERE / "federation_client.py"
PROSODY_LOG = "/var/log/prosody/prosody.log"
# The operator's include directory of the role (bbproxy_prosody_extra_config_include).
PROSODY_INCLUDE_DIR = "/etc/prosody/bbproxy.d"
S2S_PORT = 5269
BACKEND_PORT = 522  # bbproxy_backend_port: below 1024, so only Prosody can bind it
STARTTLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


@dataclasses.dataclass(frozen=True)
class Server:
    instance: str
    domain: str
    user: str  # bare JID
    password: str
    port: int  # host port on 127.0.0.1 published for the proxy's 5222
    host: Any  # testinfra host (podman exec)
    cafile: Path  # the certificate the proxy serves for the domain, copied to the host


def published_port(instance: str, container_port: int) -> int:
    """The host port podman published for CONTAINER_PORT, on 127.0.0.1 only."""
    out = subprocess.run(["podman", "port", instance], capture_output=True, text=True, timeout=30, check=True).stdout
    for line in out.splitlines():  # "5222/tcp -> 127.0.0.1:41234"
        container, _, published = line.partition(" -> ")
        address, _, port = published.rpartition(":")
        if container == f"{container_port}/tcp" and address == "127.0.0.1":
            return int(port)
    pytest.fail(f"{instance}: no port published on 127.0.0.1 for {container_port}/tcp:\n{out}")


def platforms() -> list[dict[str, Any]]:
    molecule_file = os.environ.get("MOLECULE_FILE")
    if not molecule_file:
        raise RuntimeError("MOLECULE_FILE is not set: run these checks through `molecule verify`")
    found: list[dict[str, Any]] = yaml.safe_load(Path(molecule_file).read_text())["platforms"]
    for platform in found:
        for spec in platform.get("published_ports", []):
            if not spec.startswith("127.0.0.1:"):
                raise RuntimeError(f"{molecule_file}: publish on 127.0.0.1 only, not {spec!r}")
    return found


def host_vars(instance: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((HOST_VARS / f"{instance}.yml").read_text())
    return loaded


# ---- commands in a container ------------------------------------------------------------------


def run_ok(host: Any, command: str) -> str:
    result = host.run(command)
    if result.rc != 0:
        pytest.fail(f"`{command}` exited {result.rc}:\n{result.stdout}{result.stderr}")
    return str(result.stdout)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def listening(host: Any, port: int) -> bool:
    return any(line.split()[3].endswith(f":{port}") for line in run_ok(host, "ss -Hltn").splitlines())


def restart_prosody(server: Server) -> None:
    """Restart Prosody (which closes every s2s link it has) and wait until it listens again."""
    run_ok(server.host, "prosodyctl check config >/dev/null && systemctl restart prosody")
    wait_for(
        lambda: listening(server.host, S2S_PORT) and listening(server.host, BACKEND_PORT),
        f"Prosody on {server.instance} to listen on {S2S_PORT} and {BACKEND_PORT}",
    )


def log_mark(server: Server) -> int:
    """Size of Prosody's log now; log_since(server, mark) returns what was logged after it."""
    return int(run_ok(server.host, f"stat -c %s {PROSODY_LOG}").strip())


def log_since(server: Server, mark: int) -> str:
    return run_ok(server.host, f"tail -c +{mark + 1} {PROSODY_LOG}")


def s2s_sessions(server: Server) -> list[dict[str, str]]:
    """`prosodyctl shell "s2s:show()"` as rows: Session ID, Host, Dir, Remote, IPv, Security, ..."""
    output = run_ok(server.host, "prosodyctl shell 's2s:show()'")
    lines = [line for line in output.splitlines() if "|" in line]
    if not lines:
        return []
    columns = [cell.strip() for cell in lines[0].split("|")]
    return [dict(zip(columns, (cell.strip() for cell in line.split("|")), strict=False)) for line in lines[1:]]


def ufw_allowed(server: Server, port: int) -> list[str]:
    """The `ufw status` lines that ALLOW PORT/tcp (IPv4 and IPv6), e.g. "5269/tcp  ALLOW  Anywhere"."""
    status = run_ok(server.host, "ufw status")
    assert status.startswith("Status: active"), f"{server.instance}: UFW is not active:\n{status}"
    return [line for line in status.splitlines() if re.match(rf"^{port}/tcp( \(v6\))?\s+ALLOW\s", line)]


# Runs inside a container: a TCP connection to HOST:PORT, and how it ended.
CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


def connect_from(client: Server, target: Server, port: int, timeout: float = 5.0) -> str:
    """From CLIENT's container to TARGET's domain (its address on the scenario's network): "connected",
    "refused" (nothing listens, the firewall let it through) or "timeout" (UFW dropped it)."""
    command = f"python3 -c {shlex.quote(CONNECT)} {shlex.quote(target.domain)} {port} {timeout}"
    return run_ok(client.host, command).strip()


def run_site(limit: str, extra_vars: dict[str, Any]) -> int:
    """site.yml against one container (Molecule's inventory, EXTRA_VARS), as an operator would run it;
    fails the check if the run fails. Returns how many tasks changed."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.fail("MOLECULE_INVENTORY_FILE is not set: run these checks through `molecule verify`")
    command = [
        str(ANSIBLE_PLAYBOOK), "-i", inventory, str(SITE), "--limit", limit, "--extra-vars", json.dumps(extra_vars),
    ]  # fmt: skip
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    recaps = RECAP.findall(output)
    if done.returncode != 0 or not recaps or any(int(r[2]) or int(r[3]) for r in recaps):
        pytest.fail(f"site.yml --limit {limit} {extra_vars} exited {done.returncode}:\n{output[-6000:]}")
    return sum(int(r[1]) for r in recaps)


# Runs inside a container: an s2s stream to Prosody on its own loopback claiming to come from
# FROM, optionally followed by a dialback key (a hex HMAC of the FROM server's dialback secret,
# or "" to stop after the features). Prints JSON: the stream id, the features, what came after.
S2S_CLIENT = r"""
import hashlib, hmac, json, re, socket, sys
port, to, frm, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sock = socket.create_connection(("127.0.0.1", port), timeout=20)
sock.sendall(("<?xml version='1.0'?><stream:stream to='%s' from='%s' version='1.0' xmlns='jabber:server' "
              "xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams'>"
              % (to, frm)).encode())
def until(marker, data=b""):
    while marker not in data and len(data) < 65536:
        try:
            chunk = sock.recv(4096)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data
head = until(b"</stream:features>").decode(errors="replace")
stream_id = re.search(r"<stream:stream[^>]* id=['\"]([^'\"]+)['\"]", head).group(1)
after = ""
if secret:
    # mod_dialback's key: hex HMAC-SHA256 keyed with hex SHA-256(secret) of "RECEIVER ORIGINATOR ID".
    key = hmac.new(hashlib.sha256(secret.encode()).hexdigest().encode(), f"{to} {frm} {stream_id}".encode(),
                   hashlib.sha256).hexdigest()
    sock.sendall(f"<db:result from='{frm}' to='{to}'>{key}</db:result>".encode())
    after = until(b"</stream:stream>").decode(errors="replace")
sock.close()
print(json.dumps({"id": stream_id, "features": head, "after": after}))
"""


def raw_s2s(server: Server, claimed_from: str, dialback_secret: str = "") -> dict[str, str]:
    """An s2s stream to SERVER's own 127.0.0.1:5269 without TLS, inside its container."""
    command = (
        f"timeout 40 python3 -c {shlex.quote(S2S_CLIENT)} {S2S_PORT} {shlex.quote(server.domain)} "
        f"{shlex.quote(claimed_from)} {shlex.quote(dialback_secret)}"
    )
    result: dict[str, str] = json.loads(run_ok(server.host, command))
    return result


# ---- a message from one server's user to the other's ------------------------------------------


def send_message(sender: Server, receiver: Server, *, tls: str = "1.0", timeout: float = 20.0) -> dict[str, Any]:
    """Log both users in through their own server's proxy (TLS version TLS) and send one message.

    Returns federation_client.py's JSON: outcome "delivered", "error" (bounced to the sender,
    with its condition) or "timeout" (neither within TIMEOUT seconds after both logged in)."""
    command = [
        sys.executable, str(CLIENT),
        "--sender", sender.user, "--sender-port", str(sender.port), "--sender-cafile", str(sender.cafile),
        "--receiver", receiver.user, "--receiver-port", str(receiver.port),
        "--receiver-cafile", str(receiver.cafile), "--tls", tls, "--timeout", str(timeout),
    ]  # fmt: skip
    # Passwords go through the environment, never the command line.
    env = dict(os.environ, SENDER_PASSWORD=sender.password, RECEIVER_PASSWORD=receiver.password)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=2 * timeout + 30, check=False)
    if done.returncode != 0:
        pytest.fail(f"federation client failed (exit {done.returncode}): {done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
