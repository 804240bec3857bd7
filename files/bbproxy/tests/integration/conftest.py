"""Fixtures for the integration tests: a real Prosody, trustme certificates, the real proxy
process, and a recording backend. Helpers live in support.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .interop_clients import INTEROP_DIR
from .support import (
    DOMAIN,
    LOOPBACK,
    LOOPS,
    PROSODY_CONFIG,
    Certs,
    Prosody,
    ProxyFactory,
    ProxyProcess,
    ProxyStarter,
    RecordingBackend,
    free_port,
    make_certs,
    port_accepts,
    require_loop,
    require_tool,
    running_prosody,
)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prosody]:
    """A real Prosody (Debian package) in the foreground, plaintext c2s on a loopback port."""
    directory = tmp_path_factory.mktemp("prosody")
    port = free_port()
    config_text = PROSODY_CONFIG.format(dir=directory, port=port, domain=DOMAIN)
    with running_prosody(
        directory,
        config_text,
        ("alice", "bob", "carol"),
        lambda: port_accepts(port),
        f"listen on {LOOPBACK}:{port}",
    ) as (proc, passwords, log, _):
        yield Prosody(LOOPBACK, port, DOMAIN, passwords, log, proc)


@pytest.fixture
def recording_backend() -> Iterator[RecordingBackend]:
    backend = RecordingBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def proxy_factory(tmp_path: Path, certs: Certs) -> Iterator[ProxyFactory]:
    """Start ``python -m bbproxy`` with the given options; stopped (and checked) at teardown."""
    starter = ProxyStarter(tmp_path, certs)
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.fixture(scope="session")
def shared_proxies(
    tmp_path_factory: pytest.TempPathFactory, certs: Certs, prosody: Prosody
) -> Iterator[ProxyFactory]:
    """Proxies in front of the session's Prosody, started once per distinct option set.

    For tests that only connect as clients and leave the proxy as they found it.
    """
    starter = ProxyStarter(tmp_path_factory.mktemp("shared-proxies"), certs)
    cache: dict[tuple[Any, ...], ProxyProcess] = {}

    def get(*, cert: str = "rsa", loop: str | None = None, direct_tls: bool = False) -> ProxyProcess:
        key = (cert, loop, direct_tls)
        proxy = cache.get(key)
        if proxy is None or not proxy.is_running():
            proxy = starter(
                backend=f"{prosody.host}:{prosody.port}", cert=cert, loop=loop, direct_tls=direct_tls
            )
            cache[key] = proxy
        return proxy

    try:
        yield get
    finally:
        starter.stop_all()


@pytest.fixture(params=LOOPS)
def event_loop_name(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over the proxy's event loops (--loop asyncio / uvloop)."""
    loop = str(request.param)
    require_loop(loop)
    return loop


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JavaTls10.java compiled once for the run (javac; OpenJDK 17): the interop matrix and the
    fingerprint captures run it."""
    javac = require_tool("javac", "apt-get install openjdk-17-jdk-headless")
    out = tmp_path_factory.mktemp("java-classes")
    result = subprocess.run(
        [javac, "-d", str(out), str(INTEROP_DIR / "JavaTls10.java")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"javac failed:\n{result.stdout}{result.stderr}"
    return out
