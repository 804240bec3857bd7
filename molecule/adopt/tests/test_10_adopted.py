"""After converge: the hand-made server kept its VirtualHosts, Components, accounts and roster, and
its clients log in through the proxy (TLS 1.0 and 1.3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adopt import LOGIN_TOOL, context, inspect

ADOPTED = "/etc/prosody/adopted.cfg.lua"
PROSODY_CFG = "/etc/prosody/prosody.cfg.lua"
MARKER = "Written by the bbproxy Ansible role"


def test_configuration_carried_over_unchanged(host: Any) -> None:
    adopted = host.file(ADOPTED)
    assert adopted.exists, f"{ADOPTED} is missing: the operator's configuration was not carried over"
    text = adopted.content_string
    assert MARKER not in text
    for line in (
        'VirtualHost "chat.test"',
        'VirtualHost "team.test"',
        'Component "conference.chat.test" "muc"',
        'Component "upload.chat.test" "http_file_share"',
        'motd_text = "adopt scenario: chat.test"',
    ):
        assert line in text, f"{ADOPTED} lost {line!r}"
    written = host.file(PROSODY_CFG).content_string
    assert MARKER in written
    assert f'Include "{ADOPTED}"' in written
    # The operator's modules and admin are merged into the role's global lists.
    assert re.search(r'^\s*"mam";$', written, re.MULTILINE), "the operator's mod_mam is not enabled any more"
    assert re.search(r'^admins = \{[^}]*"alice@chat.test"', written, re.MULTILINE)


def test_proxy_owns_the_public_port(host: Any) -> None:
    """The operator's c2s_ports = { 5222 } is overridden: bbproxy listens there, Prosody on loopback."""
    listeners = host.run("ss -Hltnp 'sport = :5222'").stdout
    assert listeners.strip(), "nothing listens on 5222"
    assert "lua" not in listeners and "prosody" not in listeners, listeners


@pytest.mark.parametrize("tls", ["1.0", "1.3"])
@pytest.mark.parametrize("pair", [("alice", "bob"), ("carol", "dave")], ids=["chat.test", "team.test"])
def test_existing_accounts_log_in(
    scenario_vars: dict[str, Any], port: int, cafiles: dict[str, Path], pair: tuple[str, str], tls: str
) -> None:
    """User logs in (TLS, SASL, bind) through the proxy, sends peer a message; both existed before."""
    user, peer = pair
    accounts = {a["name"]: a for a in scenario_vars["adopt_accounts"]}
    domain = accounts[user]["domain"]
    command = [
        sys.executable, str(LOGIN_TOOL), "--host", "127.0.0.1", "--port", str(port), "--domain", domain,
        "--tls", tls, "--user", user, "--peer", peer, "--cafile", str(cafiles[domain]), "--timeout", "30",
    ]  # fmt: skip
    env = dict(
        os.environ,
        XMPP_CHECK_PASSWORD=accounts[user]["password"],
        XMPP_CHECK_PEER_PASSWORD=accounts[peer]["password"],
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{user}@{domain} (TLS {tls}):\n{done.stdout}{done.stderr}"


def test_roster_muc_and_upload_intact(scenario_vars: dict[str, Any], port: int, cafiles: dict[str, Path]) -> None:
    owner = scenario_vars["adopt_roster_owner"]
    name, _, domain = owner.partition("@")
    account = next(a for a in scenario_vars["adopt_accounts"] if a["name"] == name and a["domain"] == domain)
    muc, upload = scenario_vars["adopt_muc"], scenario_vars["adopt_upload"]
    found = inspect(owner, account["password"], port, context("1.3", cafiles[domain]), [muc, upload, owner])
    contact = scenario_vars["adopt_roster_contact"]
    assert found["roster"].get(contact) == {"subscription": "both", "name": "Carol", "groups": ["Team"]}, found[
        "roster"
    ]
    assert ("conference", "text") in found["disco"][muc]["identities"], found["disco"][muc]
    assert "http://jabber.org/protocol/muc" in found["disco"][muc]["features"]
    assert "urn:xmpp:http:upload:0" in found["disco"][upload]["features"], found["disco"][upload]
    # mod_mam (the account's archive), from the operator's own global modules_enabled.
    assert "urn:xmpp:mam:2" in found["disco"][owner]["features"], found["disco"][owner]
