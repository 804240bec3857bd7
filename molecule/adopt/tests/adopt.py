"""Helpers for the adopt checks: the scenario's facts and an XMPP client that reads what an
adopted server still holds (a roster, disco#info of its components).

Where the facts come from (each written down once): the instance name from molecule.yml
($MOLECULE_FILE), its published ports from podman, the accounts and components from
molecule/adopt/group_vars/all.yml.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import slixmpp
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
GROUP_VARS = HERE.parent / "group_vars" / "all.yml"
LOGIN_TOOL = REPO / "tools" / "xmpp_login_check.py"
TLS_VERSIONS = {"1.0": "TLSv1", "1.2": "TLSv1_2", "1.3": "TLSv1_3"}


def test_vars() -> dict[str, Any]:
    return dict(yaml.safe_load(GROUP_VARS.read_text()))


def instance() -> str:
    molecule_file = os.environ.get("MOLECULE_FILE")
    if not molecule_file:
        raise RuntimeError("MOLECULE_FILE is not set: run these checks through `molecule verify`")
    return str(yaml.safe_load(Path(molecule_file).read_text())["platforms"][0]["name"])


def published_port(name: str, container_port: int) -> int:
    """The host port podman published for CONTAINER_PORT, on 127.0.0.1 only."""
    out = subprocess.run(["podman", "port", name], capture_output=True, text=True, timeout=30, check=True).stdout
    for line in out.splitlines():  # "5222/tcp -> 127.0.0.1:41234"
        container, _, published = line.partition(" -> ")
        address, _, port = published.rpartition(":")
        if container == f"{container_port}/tcp" and address == "127.0.0.1":
            return int(port)
    pytest.fail(f"{name}: no port published on 127.0.0.1 for {container_port}/tcp:\n{out}")


def context(version: str, cafile: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, TLS_VERSIONS[version])
    if version == "1.0":
        # OpenSSL 3 needs security level 0 for TLS 1.0's SHA-1 handshake signatures.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_verify_locations(cafile=cafile)
    return ctx


async def _inspect(jid: str, password: str, port: int, ctx: ssl.SSLContext, targets: list[str]) -> dict[str, Any]:
    client = slixmpp.ClientXMPP(f"{jid}/adopt-{secrets.token_hex(3)}", password, ssl_context=ctx)
    client.enable_direct_tls = False
    client.enable_starttls = True
    client.enable_plaintext = False
    client.whitespace_keepalive = False
    client.register_plugin("xep_0030")
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    client.add_event_handler("session_start", lambda _e: ready.done() or ready.set_result(None))
    for event in ("failed_all_auth", "connection_failed", "stream_error", "disconnected"):
        client.add_event_handler(
            event, lambda e, event=event: ready.done() or ready.set_exception(RuntimeError(f"{event}: {e}"))
        )
    try:
        client.connect("127.0.0.1", port)
        await asyncio.wait_for(ready, 30)
        request = client.Iq()
        request["type"] = "get"
        request.enable("roster")
        response = await request.send(timeout=15)
        roster = {
            str(jid): {"subscription": item["subscription"], "name": item["name"], "groups": sorted(item["groups"])}
            for jid, item in response["roster"]["items"].items()
        }
        disco = {}
        for target in targets:
            info = await client["xep_0030"].get_info(jid=target, timeout=15)
            disco[target] = {
                "identities": sorted((i[0], i[1]) for i in info["disco_info"]["identities"]),
                "features": sorted(info["disco_info"]["features"]),
            }
        return {"roster": roster, "disco": disco}
    finally:
        if client.transport is not None:
            client.transport.abort()


def inspect(jid: str, password: str, port: int, ctx: ssl.SSLContext, targets: list[str]) -> dict[str, Any]:
    """Log JID in through PORT (STARTTLS), fetch its roster and disco#info of each target."""
    logging.getLogger("slixmpp").setLevel(logging.CRITICAL)
    return asyncio.run(asyncio.wait_for(_inspect(jid, password, port, ctx, targets), 90))


ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
SITE = REPO / "site.yml"


def run_site(extra_vars: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """site.yml against the container with Molecule's inventory, as an operator would run it."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.fail("MOLECULE_INVENTORY_FILE is not set: run these checks through `molecule verify`")
    command = [str(ANSIBLE_PLAYBOOK), "-i", inventory, str(SITE)]
    if extra_vars:
        command += ["--extra-vars", json.dumps(extra_vars)]
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
