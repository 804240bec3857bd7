"""Fixtures for the testinfra checks of every single-host Molecule scenario (conftest.py imports them;
molecule/lifecycle/tests/conftest.py too).

The checks look at the provisioned container from the outside, like an operator: commands run
inside it through podman (`podman exec`), and XMPP clients connect from the host through the
ports Molecule published on 127.0.0.1. Nothing talks to the podman bridge address.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import testinfra

from support import (
    BBPROXY_TOML,
    LOGIN_TOOL,
    REPO,
    LoginCheck,
    ProsodyLog,
    Scenario,
    load_scenario,
    served_cert_path,
    tls10_cert_path,
)


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    return load_scenario()


@pytest.fixture(scope="session")
def host(scenario: Scenario) -> Any:
    """The container, reached with `podman exec` (replaces testinfra's parametrised fixture)."""
    return testinfra.get_host(f"podman://{scenario.instance}")


@pytest.fixture(scope="session")
def proxy_config(host: Any) -> dict[str, Any]:
    return tomllib.loads(host.file(BBPROXY_TOML).content_string)


@pytest.fixture(scope="session")
def served_cafile(host: Any, proxy_config: dict[str, Any], scenario: Scenario, tmp_path_factory: Any) -> Path:
    """The self-signed certificates the proxy serves (and the legacy chain), to verify them against."""
    certs = {served_cert_path(proxy_config, scenario.domain)[0], tls10_cert_path(proxy_config, scenario.domain)[0]}
    path = tmp_path_factory.mktemp("ca") / "served.pem"
    path.write_text("".join(host.file(cert).content_string for cert in sorted(certs)))
    return path


@pytest.fixture(scope="session")
def login_check(scenario: Scenario, served_cafile: Path) -> LoginCheck:
    """Run tools/xmpp_login_check.py from the host through a published port.

    User 0 and user 1 log in (TLS, SASL, bind), user 0 sends user 1 a message; exit 0 = it arrived.
    """

    def run(
        tls: str = "1.0", *, direct_tls: bool = False, cafile: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        if not LOGIN_TOOL.exists():
            pytest.fail(f"{LOGIN_TOOL.relative_to(REPO)} is missing: the full-login check needs it")
        user, peer = scenario.users[0], scenario.users[1]
        port = scenario.host_port(5223 if direct_tls else 5222)
        command = [
            sys.executable, str(LOGIN_TOOL), "--host", "127.0.0.1", "--port", str(port),
            "--domain", scenario.domain, "--tls", tls, "--user", user.name, "--peer", peer.name,
            "--cafile", str(cafile or served_cafile), "--timeout", "30",
        ]  # fmt: skip
        if direct_tls:
            command.append("--direct-tls")
        # Passwords go through the environment, never the command line.
        env = dict(os.environ, XMPP_CHECK_PASSWORD=user.password, XMPP_CHECK_PEER_PASSWORD=peer.password)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    return run


@pytest.fixture()
def prosody_log(host: Any) -> ProsodyLog:
    return ProsodyLog(host)
