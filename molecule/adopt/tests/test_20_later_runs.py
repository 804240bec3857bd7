"""Later runs: the operator's edits of the adopted file stay; a prosody.cfg.lua the role did
not write, or an adopted file Prosody cannot load, stops the run before anything changes."""

from __future__ import annotations

from typing import Any

import pytest

from adopt import run_site

ADOPTED = "/etc/prosody/adopted.cfg.lua"
PROSODY_CFG = "/etc/prosody/prosody.cfg.lua"
EDIT = 'contact_info = { admin = { "xmpp:alice@chat.test" } } -- a later edit by the operator'


def sha256(host: Any, path: str) -> str:
    return str(host.run(f"sha256sum {path}").stdout.split()[0])


def test_operator_edit_survives_a_run(host: Any) -> None:
    host.run(f"printf '%s\\n' '{EDIT}' >> {ADOPTED}")
    before = sha256(host, PROSODY_CFG)
    done = run_site()
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert EDIT in host.file(ADOPTED).content_string
    assert sha256(host, PROSODY_CFG) == before


@pytest.mark.parametrize("mode", ["refuse", "carry_over"])
def test_foreign_configuration_stops_the_run(host: Any, mode: str) -> None:
    """refuse: the default stop; carry_over: an adopted file exists already and is not overwritten."""
    host.run(f"cp -p {PROSODY_CFG} /root/role.cfg.lua")
    host.run(f"printf '%s\\n' '-- replaced by hand' 'admins = {{ }}' > {PROSODY_CFG}")
    try:
        before = {path: sha256(host, path) for path in (PROSODY_CFG, ADOPTED)}
        done = run_site({"bbproxy_prosody_adopt": mode})
        output = done.stdout + done.stderr
        assert done.returncode != 0, output[-6000:]
        assert "Nothing was changed" in output, output[-6000:]
        assert {path: sha256(host, path) for path in before} == before
    finally:
        host.run(f"mv /root/role.cfg.lua {PROSODY_CFG}")


def test_an_adopted_file_prosody_cannot_load_stops_the_run(host: Any) -> None:
    """A later edit with a syntax error: the role reads the adopted file with Prosody's own parser on
    every run, so the run stops, names the parser's error, and changes nothing; Prosody keeps running
    on what it loaded before."""
    host.run(f"cp -p {ADOPTED} /root/adopted.cfg.lua")
    host.run(f"printf '%s\\n' 'VirtualHost \"broken.test\"' '    modules_enabled = {{' >> {ADOPTED}")
    try:
        before = {path: sha256(host, path) for path in (PROSODY_CFG, ADOPTED)}
        done = run_site()
        output = done.stdout + done.stderr
        assert done.returncode != 0, output[-6000:]
        assert "Prosody's own parser could not load" in output, output[-6000:]
        assert "Nothing was changed" in output, output[-6000:]
        assert "(parser)" in output, output[-6000:]
        assert {path: sha256(host, path) for path in before} == before
        assert host.service("prosody").is_running
    finally:
        host.run(f"mv /root/adopted.cfg.lua {ADOPTED}")
