"""Runs killed midway (the controller crashes, the SSH session drops), at the two points where the
next run could otherwise miss that the proxy is out of date:

1. after the new wheel was copied, before it was installed: the copy is unchanged next time, and
   the old version still imports fine;
2. after the new wheel was installed (and its checksum recorded), before the handlers restarted
   the proxy: nothing is left to change next time, yet the old build keeps running.

Each time the next run must bring the proxy to the installed build, with one restart, and the
run after that changes nothing."""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from lifecycle import (
    AFTER_TEST_20,
    RESTART_MARKER,
    WHEEL_DIR,
    WHEEL_STAMP,
    build_wheel,
    converges_to,
    installed_version,
    journal_cursor,
    run_site_killed_when,
    running_version,
    source_version,
)
from support import LoginCheck

NEXT = "0.1.2.dev1"


def test_killed_after_copying_the_wheel(host: Any, login_check: LoginCheck) -> None:
    assert running_version(host) == AFTER_TEST_20
    cursor = journal_cursor(host)
    # site.yml's default: the current build, under a new file name in the wheel directory.
    copied = f"{WHEEL_DIR}/bbproxy-{source_version()}-py3-none-any.whl"
    run_site_killed_when(host, f"test -e {shlex.quote(copied)}")
    assert installed_version(host) == AFTER_TEST_20, "the killed run got as far as installing the wheel"
    converges_to(host, login_check, source_version(), {}, cursor)


def test_killed_after_installing_the_wheel(host: Any, login_check: LoginCheck) -> None:
    wheel = build_wheel(NEXT)
    checksum = hashlib.sha1(wheel.read_bytes()).hexdigest()  # sha1: what Ansible's copy module reports
    assert running_version(host) == source_version()
    assert not host.file(RESTART_MARKER).exists, "a restart is already pending before the run"
    cursor = journal_cursor(host)
    run_site_killed_when(host, f"grep -qx {checksum} {WHEEL_STAMP}", {"bbproxy_package_wheel": str(wheel)})
    assert installed_version(host) == NEXT
    assert running_version(host) == source_version(), "the killed run restarted the proxy: nothing was interrupted"
    assert host.file(RESTART_MARKER).exists, "the killed run left no record of the restart it owed"
    converges_to(host, login_check, NEXT, {"bbproxy_package_wheel": str(wheel)}, cursor)
