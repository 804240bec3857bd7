"""Fixtures for the adopt checks: the container, the proxy's port, the served certificates."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import testinfra

from adopt import instance, published_port, test_vars


@pytest.fixture(scope="session")
def scenario_vars() -> dict[str, Any]:
    return test_vars()


@pytest.fixture(scope="session")
def host() -> Any:
    """The container, reached with `podman exec`."""
    return testinfra.get_host(f"podman://{instance()}")


@pytest.fixture(scope="session")
def port() -> int:
    """The proxy's STARTTLS port 5222, as published on 127.0.0.1."""
    return published_port(instance(), 5222)


@pytest.fixture(scope="session")
def cafiles(host: Any, tmp_path_factory: Any, scenario_vars: dict[str, Any]) -> dict[str, Path]:
    """Domain -> the certificate the proxy serves for it (per its deployed TOML), copied here."""
    config = tomllib.loads(host.file("/etc/bbproxy/bbproxy.toml").content_string)
    found = {}
    for domain in scenario_vars["bbproxy_domains"]:
        cert = config.get("certificates", {}).get(domain, {}).get("cert", config["cert"])
        path = tmp_path_factory.mktemp(domain) / "served.pem"
        path.write_text(host.file(cert).content_string)
        found[domain] = path
    return found
