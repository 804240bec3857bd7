"""The certbot deploy hook as the role writes it, through shellcheck and `sh -n`.

The hook (roles/bbproxy/templates/etc/letsencrypt/renewal-hooks/deploy/zz-bbproxy.j2) is a shell
script made by Jinja: `make lint-shell` never sees it, and a quoting slip in a template shows only
on a server, at renewal time. Here it is rendered as Ansible renders templates (trim_blocks, the
role's templates/ on the include path, Ansible's own `comment` and `quote` filters) for a few
shapes of configuration, and each result must pass shellcheck for POSIX sh and dash's syntax
check. ``make molecule-certbot`` runs it for real, with certbot.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
from ansible.plugins.filter.core import FilterModule

TEMPLATES = Path(__file__).resolve().parents[2] / "roles" / "bbproxy" / "templates"
HOOK = "etc/letsencrypt/renewal-hooks/deploy/zz-bbproxy.j2"
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def copy(domain: str, cert: str, key: str, dest: str) -> dict[str, str]:
    return {
        "domain": domain, "cert": cert, "key": key,
        "dest_cert": f"/etc/bbproxy/certs/{dest}.crt", "dest_key": f"/etc/bbproxy/certs/{dest}.key",
    }  # fmt: skip


CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "one domain from Prosody's store": {
        "sources": [copy("example.org", "/etc/prosody/certs/example.org.crt", "/etc/prosody/certs/example.org.key", "example.org")],
        "legacy": [],
        "allow_older": False,
    },
    "certbot lineages, a quote in a path, the legacy chain by ACME, rollback allowed": {
        "sources": [
            copy("example.org", "/etc/letsencrypt/live/example.org/fullchain.pem", "/etc/letsencrypt/live/example.org/privkey.pem", "example.org"),
            copy("chat.example.net", "/srv/o'brien certs/chat.crt", "/srv/o'brien certs/chat.key", "chat.example.net"),
        ],
        "legacy": [
            copy("(legacy clients)", "/etc/letsencrypt/live/bbproxy-legacy/fullchain.pem", "/etc/letsencrypt/live/bbproxy-legacy/privkey.pem", "_legacy"),
        ],
        "allow_older": True,
    },
}  # fmt: skip


def render(configuration: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(FilterModule().filters())
    return env.get_template(HOOK).render(
        ansible_managed="Ansible managed",
        bbproxy_group="bbproxy",
        bbproxy_certificate_allow_older=configuration["allow_older"],
        __bbproxy_cert_sources=configuration["sources"],
        __bbproxy_cert_legacy=configuration["legacy"],
    )


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_the_rendered_hook_passes_shellcheck_and_sh_n(tmp_path: Path, name: str) -> None:
    script = tmp_path / "zz-bbproxy"
    script.write_text(render(CONFIGURATIONS[name]))
    assert script.read_text().startswith("#!/bin/sh\n")
    checked = subprocess.run([str(SHELLCHECK), "--shell=sh", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    parsed = subprocess.run(["/bin/sh", "-n", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert parsed.returncode == 0, parsed.stderr


def test_the_rendered_hook_carries_the_rule_and_the_setting() -> None:
    """The include of newer_copy.sh.j2 resolved, and bbproxy_certificate_allow_older reached it."""
    kept = render(CONFIGURATIONS["one domain from Prosody's store"])
    allowed = render(CONFIGURATIONS["certbot lineages, a quote in a path, the legacy chain by ACME, rollback allowed"])
    assert "newer_copy() {" in kept and "allow_older=no\n" in kept
    assert "allow_older=yes\n" in allowed
    assert "'/srv/o'\"'\"'brien certs/chat.crt'" in allowed
