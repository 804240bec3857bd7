"""apt killed between its unpack and configure steps leaves a package unpacked but not configured
(what `dpkg --audit` reports, and what apt asks to finish with `dpkg --configure -a`). Re-running
the role finishes it and converges."""

from __future__ import annotations

from typing import Any

from lifecycle import expect_ok, run_site
from support import LoginCheck, run_ok


def test_the_role_finishes_an_interrupted_apt_run(host: Any, login_check: LoginCheck) -> None:
    run_ok(host, "apt-get install --reinstall --download-only -y -q prosody")
    # What apt runs first (dpkg --unpack), without the dpkg --configure it would run next.
    run_ok(host, "dpkg --unpack /var/cache/apt/archives/prosody_*.deb")
    assert "prosody" in host.run("dpkg --audit").stdout, "the package was left configured: nothing to repair"

    expect_ok(run_site())
    assert host.run("dpkg --audit").stdout.strip() == ""
    assert run_ok(host, "dpkg-query --show --showformat='${Status}' prosody") == "install ok installed"
    assert host.service("prosody").is_running
    result = login_check("1.0")
    assert result.returncode == 0, result.stdout + result.stderr

    again = expect_ok(run_site())
    assert again.changed == 0, again.describe()
