"""Fixtures for the federation checks: the two provisioned servers, a.test and b.test.

Commands run inside each container through podman (`podman exec`); XMPP clients log in from the
host through each proxy's port published on 127.0.0.1. Server-to-server traffic only flows
between the two containers, on this scenario's own podman network.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import testinfra

from federation import Server, host_vars, platforms, published_port


@pytest.fixture(scope="session")
def servers(tmp_path_factory: Any) -> tuple[Server, Server]:
    """(a.test's server, b.test's server), in molecule.yml's order."""
    found = []
    for platform in platforms():
        instance = platform["name"]
        test_vars = host_vars(instance)
        user = test_vars["bbproxy_prosody_users"][0]
        domain = test_vars["bbproxy_domains"][0]
        host = testinfra.get_host(f"podman://{instance}")
        # The certificate the proxy serves (its deployed TOML), to verify the TLS 1.0 login against.
        config = tomllib.loads(host.file("/etc/bbproxy/bbproxy.toml").content_string)
        cert = config.get("certificates", {}).get(domain, {}).get("cert", config["cert"])
        cafile = tmp_path_factory.mktemp(instance) / "served.pem"
        cafile.write_text(host.file(cert).content_string)
        found.append(
            Server(
                instance=instance,
                domain=domain,
                user=f"{user['name']}@{user['domain']}",
                password=user["password"],
                port=published_port(instance, 5222),
                host=host,
                cafile=cafile,
            )
        )
    if len(found) != 2:
        pytest.fail(f"the federation scenario needs exactly two platforms, molecule.yml has {len(found)}")
    return found[0], found[1]
