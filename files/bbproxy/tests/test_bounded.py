"""State a client can make the proxy keep stays bounded (issue 15, item 5), in-process on loopback.

* JA3 churn: thousands of legacy ClientHellos, each with its cipher suites in another order (a new
  JA3 each), refused by a narrowed ``tls.legacy_networks``, leave the legacy family counts and
  their metric series as they were; a real device's family still gets its own series after.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path

import pytest
import trustme

from bbproxy.clienthello import ClientHelloParser
from bbproxy.config import Address, Limits, Settings, TlsPolicy
from bbproxy.fingerprints import identify
from bbproxy.metric_labels import LEGACY_REFUSED, LEGACY_SERVED, LEGACY_UNKNOWN
from bbproxy.metrics import Metrics
from bbproxy.metrics_http import render
from bbproxy.routing import ALERT_PROTOCOL_VERSION
from bbproxy.server import ProxyServer, load_contexts
from bbproxy.tls import CertPair

from .helpers import hello_of, ja3_churn, run, until
from .kit import ANY_SECLEVEL, client_context
from .test_relay import DOMAIN

CHURN = 5000  # distinct fingerprints, each one connection
PARALLEL = 32
DEVICE_SOURCE = "127.0.0.2"  # the one address allowed legacy TLS; the churn comes from 127.0.0.1


@pytest.fixture(scope="module")
def ca_and_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, CertPair]:
    ca = trustme.CA()
    leaf = ca.issue_cert(DOMAIN)
    directory: Path = tmp_path_factory.mktemp("bounded-certs")
    cert, key = directory / "leaf.crt", directory / "leaf.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ca, CertPair(cert, key)


def legacy_series(metrics: Metrics) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.labels["family"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(render(metrics).decode())
        if family.name == "bbproxy_legacy_clients"
        for sample in family.samples
    }


async def refused_hello(port: int, hello: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(hello)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def test_ja3_churn_from_a_refused_address_leaves_legacy_families_bounded(
    ca_and_pair: tuple[trustme.CA, CertPair],
) -> None:
    ca, pair = ca_and_pair
    device_ctx = client_context(ssl.TLSVersion.TLSv1, ca, ciphers=ANY_SECLEVEL)
    device_hello = hello_of(device_ctx)
    parsed = ClientHelloParser().feed(device_hello)
    assert parsed is not None and parsed.max_version == 0x0301
    device_family = parsed.family(identify(parsed).name)  # TLSv1/<name> (bbproxy.fingerprints)
    churn = ja3_churn(device_hello, CHURN)
    assert len({ClientHelloParser().feed(h).ja3() for h in churn[:200]}) == 200  # type: ignore[union-attr]

    async def scenario() -> None:
        settings = Settings(
            listen=(),
            direct_tls_listen=(Address("127.0.0.1", 0),),
            backend=Address("127.0.0.1", 9),  # never reached: no handshake here relays
            domains=(DOMAIN,),
            min_tls="1.0",
            cert=pair,
            limits=Limits(exempt_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
            tls=TlsPolicy(legacy_networks=(ipaddress.ip_network(f"{DEVICE_SOURCE}/32"),)),
        )
        metrics = Metrics()
        server = ProxyServer(settings, load_contexts(settings), asyncio.get_running_loop(), metrics=metrics)
        await server.start()
        (port,) = server.bound_ports()
        try:
            gate = asyncio.Semaphore(PARALLEL)

            async def one(hello: bytes) -> bytes:
                async with gate:
                    return await refused_hello(port, hello)

            answers = await asyncio.gather(*(one(h) for h in churn))
            assert all(a == ALERT_PROTOCOL_VERSION for a in answers), "a churned hello was not refused"
            await until(lambda: not server.sessions, "the refused sessions to end")
            refused = (LEGACY_UNKNOWN, LEGACY_REFUSED)
            assert server.stats.legacy_families == {refused: CHURN}
            assert legacy_series(metrics) == {refused: CHURN}

            # A real device, from the allowed address, still gets a series of its own.
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=device_ctx, server_hostname=DOMAIN, local_addr=(DEVICE_SOURCE, 0)
            )
            assert writer.get_extra_info("ssl_object").version() == "TLSv1"
            writer.close()
            await until(lambda: not server.sessions, "the device's session to end")
            served = (device_family, LEGACY_SERVED)
            assert server.stats.legacy_families == {refused: CHURN, served: 1}
            assert legacy_series(metrics) == {refused: CHURN, served: 1}
        finally:
            server.request_stop()
            await server.serve_until_stopped()

    run("asyncio", scenario)
