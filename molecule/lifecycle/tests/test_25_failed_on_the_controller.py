"""Runs that fail on the controller, before anything on the target changes: the proxy's wheel does
not build, or an optional wheel (uvloop) is neither in the controller's wheel cache nor
downloadable. Each run must say what failed, leave no temporary directory behind on the controller
(each gets a TMPDIR of its own to look in) and leave the proxy serving as it was."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from lifecycle import AFTER_TEST_20, build_wheel, running_version
from support import LoginCheck, PlaybookRun, run_site

# Port 9 (discard) on loopback: nothing listens, so every index request is refused at once.
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"


def run_site_in_own_tmpdir(
    extra_vars: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[PlaybookRun, list[str]]:
    """site.yml with EXTRA_VARS, in a TMPDIR of its own; the run and what it left in that TMPDIR."""
    with tempfile.TemporaryDirectory(prefix="bbproxy-failed-run.") as tmpdir:
        run = run_site(extra_vars, env={"TMPDIR": tmpdir} | (env or {}))
        left = sorted(os.listdir(tmpdir))
    return run, left


def serves_as_before(host: Any, login_check: LoginCheck) -> None:
    assert running_version(host) == AFTER_TEST_20
    result = login_check("1.0")
    assert result.returncode == 0, f"the proxy stopped serving after the failed run:\n{result.stdout}{result.stderr}"


def test_a_wheel_that_does_not_build(host: Any, login_check: LoginCheck, tmp_path: Path) -> None:
    not_a_project = tmp_path / "not-a-project"
    not_a_project.mkdir()
    run, left = run_site_in_own_tmpdir({"bbproxy_package_source": str(not_a_project)})
    assert run.rc != 0 and run.failed, run.describe()
    said = " ".join(run.output.split())  # the message as the result callback may have wrapped it
    assert f"Building the bbproxy wheel from {not_a_project} (bbproxy_package_source)" in said, run.describe()
    assert "pip said: " in said, run.describe()
    assert not any(name.startswith("bbproxy-wheel.") for name in left), f"the failed run left {left} on the controller"
    serves_as_before(host, login_check)


def test_an_optional_wheel_neither_cached_nor_downloadable(host: Any, login_check: LoginCheck, tmp_path: Path) -> None:
    empty_cache = tmp_path / "wheel-cache"
    # The build test_20 installed, so the proxy's own wheel is unchanged and the run gets as far as uvloop.
    extra_vars = {"bbproxy_package_wheel": str(build_wheel(AFTER_TEST_20)), "bbproxy_wheel_cache_dir": str(empty_cache)}
    no_links = tmp_path / "no-links"
    no_links.mkdir()
    # An air-gapped controller: no pip configuration (this machine's pip configuration names local
    # mirrors), no find-links with wheels in them, no pip cache, and an index nothing answers on.
    index = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": str(no_links),
        "PIP_INDEX_URL": UNREACHABLE_INDEX,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "5",
    }
    run, left = run_site_in_own_tmpdir(extra_vars, index)
    assert run.rc != 0 and run.failed, run.describe()
    assert "uvloop: no wheel matching" in run.output and "Air-gapped controller" in run.output, run.describe()
    assert not any(name.startswith("bbproxy-uvloop.") for name in left), f"the failed run left {left} on the controller"
    serves_as_before(host, login_check)
