"""Helpers for the lifecycle checks: running site.yml against the scenario's container from a
check (through Molecule's own inventory and ansible.cfg), and what the proxy's journal says.

The checks run in file order and each phase starts from the state the previous one left: the
scenario runs pytest with -x, so a failed phase stops the rest instead of failing them for it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from support import (
    PLAYBOOK_TIMEOUT,
    REPO,
    LoginCheck,
    PlaybookRun,
    expect_ok,
    journal_cursor,
    journal_text_since,
    playbook_env,
    playbook_result,
    run_ok,
    run_site,
    site_command,
)

__all__ = ["PlaybookRun", "expect_ok", "journal_cursor", "run_site"]

WHEEL_TOOL = REPO / "molecule" / "lifecycle" / "wheel.py"
# The proxy's start-up line (cli.py): one per start, with the version that started.
STARTING = re.compile(r"\bbbproxy (\S+) starting on the ")
RESTART_MARKER = "/var/lib/bbproxy/restart-pending"
WHEEL_DIR = "/opt/bbproxy/wheels"
WHEEL_STAMP = "/opt/bbproxy/venv/bbproxy-wheel.sha1"
# The newer build test_20 installs and leaves running: the phases after it start from it.
AFTER_TEST_20 = "0.1.1.dev1"


def source_version() -> str:
    """The version of the checkout's bbproxy: what site.yml builds and installs by default."""
    text = (REPO / "files" / "bbproxy" / "src" / "bbproxy" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert match, "no __version__ in files/bbproxy/src/bbproxy/__init__.py"
    return match.group(1)


def build_wheel(version: str) -> Path:
    """A wheel of this checkout numbered VERSION, in Molecule's scratch directory."""
    dest = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "wheels"
    done = subprocess.run(
        [sys.executable, str(WHEEL_TOOL), version, str(dest)], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"building the {version} wheel failed:\n{done.stdout}{done.stderr}")
    return Path(done.stdout.strip())


def run_site_killed_when(host: Any, check: str, extra_vars: dict[str, Any] | None = None) -> PlaybookRun:
    """Start site.yml and SIGKILL it (its whole process group: forks, podman exec) as soon as the
    shell command CHECK succeeds in the container, like a controller that crashes or an SSH session
    that drops at that moment.

    A killed run cannot clean up after itself on the controller (the role's temporary directory for
    the wheel it built): it gets a TMPDIR of its own, removed here, so that `make test` leaves
    nothing in /tmp."""
    with tempfile.TemporaryDirectory(prefix="bbproxy-killed-run.", ignore_cleanup_errors=True) as tmpdir:
        process = subprocess.Popen(
            site_command(extra_vars or {}),
            env=playbook_env() | {"TMPDIR": tmpdir},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + PLAYBOOK_TIMEOUT
        killed = False
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if host.run(check).rc == 0:
                    os.killpg(process.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.1)
        finally:
            if process.poll() is None and not killed:
                os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate(timeout=60)
    if not killed:
        pytest.fail(f"`{check}` never succeeded in the container, so the run was not interrupted:\n{output[-6000:]}")
    return playbook_result(process.returncode, output)


def proxy_starts(host: Any, cursor: str) -> list[str]:
    """The versions the proxy started as since CURSOR, in order (its start-up log line)."""
    return STARTING.findall(journal_text_since(host, cursor, "bbproxy"))


def installed_version(host: Any) -> str:
    """The bbproxy version installed in the proxy's virtualenv (not necessarily the one running)."""
    command = "/opt/bbproxy/venv/bin/python -c 'import importlib.metadata as m; print(m.version(\"bbproxy\"))'"
    return run_ok(host, command).strip()


def running_version(host: Any) -> str:
    """The version the running proxy process started as: its latest start-up line."""
    text = run_ok(host, "journalctl -u bbproxy --no-pager -o cat")
    starts = STARTING.findall(text)
    assert starts, "the proxy never logged a start"
    assert host.service("bbproxy").is_running, "bbproxy is not running"
    return str(starts[-1])


def converges_to(host: Any, login_check: LoginCheck, expected: str, extra_vars: dict[str, Any], cursor: str) -> None:
    """After an interrupted run, the next one (with EXTRA_VARS) brings the proxy to build EXPECTED:
    started exactly once since CURSOR, nothing left pending, users log in; the run after that
    changes nothing."""
    expect_ok(run_site(extra_vars))
    assert proxy_starts(host, cursor) == [expected]
    assert installed_version(host) == running_version(host) == expected
    assert not host.file(RESTART_MARKER).exists
    result = login_check("1.0")
    assert result.returncode == 0, result.stdout + result.stderr
    again = expect_ok(run_site(extra_vars))
    assert again.changed == 0, again.describe()
