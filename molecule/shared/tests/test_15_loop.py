"""The event loop: uvloop installed (or not) as bbproxy_uvloop says, and the running proxy on it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import GROUP_VARS, REPO, Scenario, run_ok, systemctl_show

VENV_PYTHON = "/opt/bbproxy/venv/bin/python"
UVLOOP_LOCK = REPO / "roles" / "bbproxy" / "files" / "requirements-uvloop.txt"
ROLE_DEFAULTS = REPO / "roles" / "bbproxy" / "defaults" / "main.yml"
STARTING = re.compile(r"starting on the (\S+) event loop")


def uvloop_wanted(scenario: Scenario) -> bool:
    """bbproxy_uvloop as the converge saw it: host_vars over group_vars over the role's default."""
    value = yaml.safe_load(ROLE_DEFAULTS.read_text())["bbproxy_uvloop"]
    sources = [GROUP_VARS, Path(os.environ["MOLECULE_FILE"]).parent / "host_vars" / f"{scenario.instance}.yml"]
    for path in sources:
        if path.exists():
            value = (yaml.safe_load(path.read_text()) or {}).get("bbproxy_uvloop", value)
    return bool(value)


def installed_uvloop(host: Any) -> str | None:
    """uvloop's version in the proxy's virtualenv, None when it isn't importable there."""
    result = host.run(f"{VENV_PYTHON} -c 'import importlib.metadata as m, uvloop; print(m.version(\"uvloop\"))'")
    return result.stdout.strip() if result.rc == 0 else None


def test_uvloop_installed_as_configured(host: Any, scenario: Scenario) -> None:
    locked = re.search(r"^uvloop==(\S+)", UVLOOP_LOCK.read_text(), re.MULTILINE)
    assert locked, f"{UVLOOP_LOCK} pins no uvloop version"
    expected = locked.group(1) if uvloop_wanted(scenario) else None
    assert installed_uvloop(host) == expected


def test_proxy_runs_on_the_expected_loop(host: Any, proxy_config: dict[str, Any]) -> None:
    """The current run's journal names the loop the deployed venv and config imply."""
    choice = proxy_config.get("loop", "auto")
    has_uvloop = installed_uvloop(host) is not None
    expected = "uvloop" if choice == "uvloop" or (choice == "auto" and has_uvloop) else "asyncio"
    invocation = systemctl_show(host, "bbproxy", "InvocationID")["InvocationID"]
    if not invocation:
        pytest.fail("bbproxy has no InvocationID: is it running?")
    journal = run_ok(host, f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    loops = STARTING.findall(journal)
    assert loops, f"no 'starting on the ... event loop' line in this run's journal:\n{journal[-2000:]}"
    assert set(loops) == {expected}, f"config loop={choice!r}, uvloop installed={has_uvloop}: journal says {loops}"
