"""Server-level behaviour: certificate choice per domain, connection limit, reload, readiness."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from bbproxy.config import Address, Limits, Settings
from bbproxy.server import ProxyServer, load_contexts
from bbproxy.tls import CertPair, Policy, build_context, has_legacy_policy, self_test

from .helpers import DEADLINE, run
from .kit import ANY_SECLEVEL, client_context, free_port, stream_header
from .test_relay import PROCEED


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, dict[str, CertPair]]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("two-domains")
    pairs = {}
    for domain in ("a.test", "b.test"):
        leaf = ca.issue_cert(domain)
        cert, key = directory / f"{domain}.crt", directory / f"{domain}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        pairs[domain] = CertPair(cert, key)
    return ca, pairs


def settings_for(pairs: dict[str, CertPair], **limits: float) -> Settings:
    return Settings(
        listen=(Address("127.0.0.1", 0),),
        direct_tls_listen=(Address("127.0.0.1", 0),),
        backend=Address("127.0.0.1", 1),  # never reached in these tests
        domains=("a.test", "b.test"),
        min_tls="1.0",
        cert=pairs["a.test"],
        certificates={"b.test": pairs["b.test"]},
        limits=Limits(**limits),  # type: ignore[arg-type]
    )


async def served_name(port: int, ca: trustme.CA, stream_to: str | None, sni: str | None) -> str:
    """Which certificate (by its subject name) the proxy presents."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if stream_to is not None:
        writer.write(stream_header(stream_to))
        await reader.readuntil(b"</stream:features>")
        writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await reader.readuntil(PROCEED)
    ctx = client_context(ssl.TLSVersion.TLSv1_2, ca, ciphers=ANY_SECLEVEL)
    ctx.check_hostname = False  # we want to see the certificate, whichever it is
    await writer.start_tls(ctx, server_hostname=sni)
    cert = writer.get_extra_info("peercert")
    writer.close()
    return str(dict(cert["subjectAltName"])["DNS"])


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_certificate_is_chosen_by_sni_or_else_by_stream_to(
    loop_name: str, two_domains: tuple[trustme.CA, dict[str, CertPair]]
) -> None:
    ca, pairs = two_domains

    async def scenario() -> None:
        settings = settings_for(pairs)
        server = ProxyServer(settings, load_contexts(settings), asyncio.get_running_loop())
        await server.start()
        starttls_port, direct_port = server.bound_ports()
        # STARTTLS without SNI (Java 6): the stream 'to' decides.
        assert await served_name(starttls_port, ca, "b.test", None) == "b.test"
        assert await served_name(starttls_port, ca, "a.test", None) == "a.test"
        # SNI wins when present.
        assert await served_name(starttls_port, ca, "a.test", "b.test") == "b.test"
        # Direct TLS: SNI, or the default certificate.
        assert await served_name(direct_port, ca, None, "b.test") == "b.test"
        assert await served_name(direct_port, ca, None, None) == "a.test"
        server.request_stop()
        await server.serve_until_stopped()

    run(loop_name, scenario)


def test_beyond_max_connections_clients_get_resource_constraint(
    two_domains: tuple[trustme.CA, dict[str, CertPair]],
) -> None:
    _, pairs = two_domains

    async def scenario() -> None:
        settings = settings_for(pairs, max_connections=2)
        server = ProxyServer(settings, load_contexts(settings), asyncio.get_running_loop())
        await server.start()
        port = server.bound_ports()[0]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:  # both are admitted and answered
            writer.write(stream_header("a.test"))
            await reader.readuntil(b"</stream:features>")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(reader.read(), DEADLINE)
        assert b"<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in refused
        assert refused.endswith(b"</stream:stream>")
        assert server.stats.refused == 1
        for _, w in held:
            w.close()
        writer.close()
        # once they are gone, a new client gets in again
        end = asyncio.get_running_loop().time() + DEADLINE
        while server.sessions and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(stream_header("a.test"))
        assert b"<starttls" in await reader.readuntil(b"</stream:features>")
        writer.close()
        server.request_stop()
        await server.serve_until_stopped()

    run("asyncio", scenario)


# -- the real process: signals and readiness ------------------------------------------------


def cert_of(port: int, ca: trustme.CA) -> str:
    """The served leaf certificate (PEM) for a direct-TLS connection."""
    ctx = client_context(ssl.TLSVersion.TLSv1_3, ca, ciphers=ANY_SECLEVEL)
    ctx.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw,
        ctx.wrap_socket(raw, server_hostname="a.test") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der)


def wait_for_log(proc: subprocess.Popen[str], lines: list[str], needle: str) -> None:
    assert proc.stderr is not None
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return
    pytest.fail(f"no {needle!r} in the proxy's log: {''.join(lines)}")


def test_sighup_reloads_certificates_and_refuses_a_bad_one(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    first = ca.issue_cert("a.test")
    first.cert_chain_pems[0].write_to_path(str(cert))
    first.private_key_pem.write_to_path(str(key))
    port = free_port()
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(DEADLINE)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bbproxy", "--direct-tls-listen", f"127.0.0.1:{port}", "--listen",
         f"127.0.0.1:{free_port()}", "--backend", "127.0.0.1:1", "--cert", str(cert), "--key", str(key),
         "--domain", "a.test", "--loop", "asyncio"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    try:
        # READY=1 comes only once the listeners are bound: a connection must succeed right after.
        assert notify.recv(256) == b"READY=1"
        before = cert_of(port, ca)
        assert before == first.cert_chain_pems[0].bytes().decode()

        second = ca.issue_cert("a.test")
        second.cert_chain_pems[0].write_to_path(str(cert))
        second.private_key_pem.write_to_path(str(key))
        proc.send_signal(signal.SIGHUP)
        assert notify.recv(256) == b"RELOADING=1"
        assert notify.recv(256) == b"READY=1"
        wait_for_log(proc, lines, "certificates reloaded")
        assert cert_of(port, ca) == second.cert_chain_pems[0].bytes().decode()

        key.write_text("garbage\n")
        proc.send_signal(signal.SIGHUP)
        assert notify.recv(256) == b"RELOADING=1"
        assert notify.recv(256) == b"READY=1"  # still serving, with the previous certificates
        wait_for_log(proc, lines, "reload refused")
        assert "Traceback" not in "".join(lines)
        assert cert_of(port, ca) == second.cert_chain_pems[0].bytes().decode()  # old one still served

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        assert notify.recv(256) == b"STOPPING=1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        notify.close()


def test_per_ip_limits_answer_with_a_stream_error(
    two_domains: tuple[trustme.CA, dict[str, CertPair]],
) -> None:
    _, pairs = two_domains

    async def scenario() -> None:
        settings = settings_for(pairs)
        settings = dataclasses.replace(settings, limits=Limits(max_connections_per_ip=2, exempt_networks=()))
        server = ProxyServer(settings, load_contexts(settings), asyncio.get_running_loop())
        await server.start()
        port = server.bound_ports()[0]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:
            writer.write(stream_header("a.test"))
            await reader.readuntil(b"</stream:features>")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(reader.read(), DEADLINE)
        assert b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in refused
        assert b"too many connections from your address" in refused
        writer.close()
        for _, w in held:
            w.close()
        server.request_stop()
        await server.serve_until_stopped()

    run("asyncio", scenario)


class _Peer:
    """What ProxyServer.admit() reads of a session."""

    def __init__(self, ip: str) -> None:
        self.peer_ip = ip
        self.listener = dataclasses.make_dataclass("L", [("name", str)])("starttls/[::]:5222")


def test_default_per_ip_limits_hold_an_ipv6_host_to_its_64(
    two_domains: tuple[trustme.CA, dict[str, CertPair]],
) -> None:
    """On by default: an IPv6 host that rotates through its /64 gets max_connections_per_ip slots,
    not one per address; another /64 and loopback are not affected."""
    _, pairs = two_domains
    limits = Limits()
    assert limits.max_connections_per_ip > 0 and limits.connect_rate_per_ip > 0 and limits.ipv6_prefix == 64

    async def scenario() -> None:
        settings = settings_for(pairs)
        server = ProxyServer(settings, load_contexts(settings), asyncio.get_running_loop())
        rotating = [
            f"2001:db8:1:2:{i:x}:{i * 7:x}:{i * 13:x}:1" for i in range(limits.max_connections_per_ip + 5)
        ]
        verdicts = [server.admit(_Peer(ip)) for ip in rotating]  # type: ignore[arg-type]
        assert verdicts == [None] * limits.max_connections_per_ip + ["per-ip-connections"] * 5
        assert server.admit(_Peer("2001:db8:1:3::1")) is None  # type: ignore[arg-type]
        assert all(server.admit(_Peer("::1")) is None for _ in range(limits.max_connections_per_ip + 5))  # type: ignore[arg-type]

    run("asyncio", scenario)


def test_metrics_endpoint_counts_a_tls10_handshake(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    import urllib.request

    ca = trustme.CA()
    leaf = ca.issue_cert("a.test")
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bbproxy", "--direct-tls-listen", f"127.0.0.1:{port}", "--listen",
         f"127.0.0.1:{free_port()}", "--backend", "127.0.0.1:1", "--cert", str(cert), "--key", str(key),
         "--domain", "a.test", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        wait_for_log(proc, lines, "metrics on http://")
        ctx = client_context(ssl.TLSVersion.TLSv1, ca, ciphers=ANY_SECLEVEL)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw,
            ctx.wrap_socket(raw, server_hostname="a.test") as tls,
        ):
            assert tls.version() == "TLSv1"
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        end = time.monotonic() + DEADLINE
        while True:
            with urllib.request.urlopen(url, timeout=DEADLINE) as response:
                text = response.read().decode()
            if "bbproxy_connections_closed_total{" in text or time.monotonic() > end:
                break
            time.sleep(0.05)
        handshakes = [line for line in text.splitlines() if line.startswith("bbproxy_handshakes_total{")]
        assert any('version="TLSv1"' in line and line.endswith(" 1.0") for line in handshakes), text
        assert "bbproxy_connections_accepted_total{" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.parametrize("min_tls", ["1.0", "1.1", "1.2", "1.3"])
def test_self_test_handshakes_at_the_lowest_promised_version(
    min_tls: str, two_domains: tuple[trustme.CA, dict[str, CertPair]]
) -> None:
    _, pairs = two_domains
    policy = Policy.LEGACY if has_legacy_policy(min_tls) else Policy.MODERN
    ctx = build_context(pairs["a.test"], policy, min_tls)
    assert self_test(ctx, min_tls) is None


def test_self_test_fails_when_the_context_cannot_do_the_version(
    two_domains: tuple[trustme.CA, dict[str, CertPair]],
) -> None:
    _, pairs = two_domains
    modern_only = build_context(pairs["a.test"], Policy.MODERN, "1.2")  # as if OpenSSL had no TLS 1.0
    problem = self_test(modern_only, "1.0")
    assert problem is not None and problem != ""


def test_legacy_and_failed_handshakes_are_logged_with_a_fingerprint(
    two_domains: tuple[trustme.CA, dict[str, CertPair]], caplog: pytest.LogCaptureFixture
) -> None:
    ca, pairs = two_domains
    caplog.set_level(logging.INFO, logger="bbproxy.session")

    async def handshake(port: int, version: ssl.TLSVersion) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        ctx = client_context(version, ca, ciphers=ANY_SECLEVEL)
        ctx.check_hostname = False
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.start_tls(ctx, server_hostname="b.test")
        writer.close()

    async def scenario() -> None:
        for min_tls in ("1.0", "1.2"):
            settings = dataclasses.replace(settings_for(pairs), min_tls=min_tls)
            server = ProxyServer(settings, load_contexts(settings), asyncio.get_running_loop())
            await server.start()
            direct_port = server.bound_ports()[1]
            await handshake(direct_port, ssl.TLSVersion.TLSv1)
            await handshake(direct_port, ssl.TLSVersion.TLSv1_3)
            server.request_stop()
            await server.serve_until_stopped()

    run("asyncio", scenario)
    lines = [r.getMessage() for r in caplog.records if "versions=" in r.getMessage()]
    legacy = [line for line in lines if "legacy client TLSv1:" in line]
    failed = [line for line in lines if "handshake failed" in line]
    assert len(legacy) == 1 and "versions=TLSv1 " in legacy[0] and "sni=b.test" in legacy[0], lines
    assert "ja3=" in legacy[0]
    assert len(failed) == 1 and "versions=TLSv1 " in failed[0], lines  # TLS 1.0 against min_tls 1.2
    assert not any("TLSv1.3" in line for line in lines)  # modern handshakes are not logged
