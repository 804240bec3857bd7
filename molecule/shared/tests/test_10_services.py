"""Services, the unit's sandbox, and the files the role templated."""

from __future__ import annotations

import re
from typing import Any

import pytest

from support import BBPROXY_TOML, run_ok, systemctl_show

# The role's promise for `systemd-analyze security bbproxy.service` (0-10 scale, lower is better).
MAX_EXPOSURE = 1.5


@pytest.mark.parametrize("unit", ["prosody", "bbproxy"])
def test_service_running_and_enabled(host: Any, unit: str) -> None:
    service = host.service(unit)
    assert service.is_running, run_ok(host, f"systemctl status --no-pager {unit} || true")
    assert service.is_enabled


# The Prosody line each Debian release ships: the scenario must test the one it claims to.
PROSODY_BY_DEBIAN = {"12": "0.12.", "13": "13."}


def test_prosody_from_the_distribution(host: Any) -> None:
    debian = host.file("/etc/debian_version").content_string.strip().split(".")[0]
    version = host.package("prosody").version
    print(f"Debian {debian}, prosody {version}")
    assert debian in PROSODY_BY_DEBIAN, f"no expectation for Debian {debian}"
    assert version.startswith(PROSODY_BY_DEBIAN[debian]), version


# What `systemctl show bbproxy` must say: the sandbox is really applied, not just written down.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    # 5222/5223 are above 1024: the proxy needs no capability at all.
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "SystemCallArchitectures": "native",
}


def test_unit_hardening(host: Any) -> None:
    shown = systemctl_show(
        host, "bbproxy", *HARDENING, "User", "RestrictAddressFamilies", "SystemCallFilter",
        "LimitNOFILE", "Restart", "ExecReload", "UMask",
    )  # fmt: skip
    wrong = {key: shown.get(key) for key, value in HARDENING.items() if shown.get(key) != value}
    assert not wrong, f"bbproxy.service settings differ from the hardening promise: {wrong}"
    assert shown["User"] not in ("", "root"), "bbproxy must run as its own system user"
    families = set(shown["RestrictAddressFamilies"].split())
    assert {"AF_INET", "AF_INET6"} <= families <= {"AF_INET", "AF_INET6", "AF_UNIX"}, families
    assert shown["SystemCallFilter"], "no SystemCallFilter"
    assert int(shown["LimitNOFILE"]) >= 20000, "two descriptors per session: LimitNOFILE too low"
    assert shown["Restart"] in ("always", "on-failure"), shown["Restart"]
    assert "HUP" in shown["ExecReload"], f"reload must send SIGHUP: {shown['ExecReload']}"
    assert shown["UMask"] == "0077"


def test_unit_exposure(host: Any) -> None:
    output = run_ok(host, "systemd-analyze security --no-pager bbproxy.service")
    match = re.search(r"Overall exposure level for bbproxy\.service: ([0-9.]+)", output)
    assert match, output[-2000:]
    exposure = float(match.group(1))
    print(f"systemd-analyze security bbproxy.service: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"


@pytest.mark.parametrize(
    "path",
    [
        "/etc/prosody/prosody.cfg.lua",
        BBPROXY_TOML,
        "/etc/systemd/system/bbproxy.service",
        "/etc/systemd/system/bbproxy.socket",
    ],
)
def test_templated_files_carry_managed_header(host: Any, path: str) -> None:
    head = "\n".join(host.file(path).content_string.splitlines()[:5])
    assert "Ansible managed" in head, f"{path} lacks the managed header:\n{head}"


def test_proxy_config_is_valid(host: Any) -> None:
    user = systemctl_show(host, "bbproxy", "User")["User"]
    exec_start = systemctl_show(host, "bbproxy", "ExecStart")["ExecStart"]
    binary = re.search(r"path=(\S+)", exec_start)
    assert binary, exec_start
    run_ok(host, f"runuser -u {user} -- {binary.group(1)} --check-config --config {BBPROXY_TOML}")
