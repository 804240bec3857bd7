"""Spliced clients reach Prosody with their own address: ``tls.splice = "starttls"`` (issue 15, item 5).

A private Prosody 0.12 loads the role's modules as the role does with bbproxy_send_proxy_protocol
on and "legacy-only" routing: mod_bbproxy_proxy reads the PROXY header on the plaintext backend
port (sessions marked secure by mod_bbproxy_backend) and on a STARTTLS port
(``bbproxy_proxy_starttls_ports``), where bbproxy does STARTTLS before the client's ClientHello
goes through. Prosody also has a direct-TLS port of its own: what it offers there after TLS is
what a spliced client must be offered (channel binding included).

Clients connect from 127.0.0.2, so Prosody's session IP says whether it believed the header.
A recording relay between bbproxy and Prosody shows every byte bbproxy sent Prosody before TLS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from bbproxy import backend_starttls, proxy_protocol

from .support import (
    DOMAIN,
    LOOPBACK,
    PROSODY_CONFIG,
    STARTTLS,
    Certs,
    Prosody,
    ProxyFactory,
    ProxyProcess,
    client_context,
    free_port,
    port_accepts,
    read_proceed,
    recv_until,
    require_tool,
    run_login_check,
    running_prosody,
    starttls_over,
    stream_header,
)
from .test_passthrough import leaf_der, mechanisms, scram_sha1_plus
from .test_prosody_proxy_protocol import CLIENT_SOURCE, ProxyProsody, connect_from, login, with_module

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning"),
]


@dataclasses.dataclass(frozen=True)
class SpliceProsody:
    pp: ProxyProsody  # .prosody.port: plaintext backend; .proxy_port: PROXY header, marked secure
    starttls_port: int  # PROXY header, then Prosody's STARTTLS
    direct_tls_port: int  # Prosody's own direct TLS, for comparison


@pytest.fixture(scope="module")
def splice_prosody(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[SpliceProsody]:
    prosodyctl = require_tool("prosodyctl", "apt-get install prosody")
    directory = tmp_path_factory.mktemp("prosody-splice")
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(free_port())
    port, proxy_port, starttls_port, tls_port = sorted(ports)
    config = with_module(PROSODY_CONFIG.format(dir=directory, port=port, domain=DOMAIN), proxy_port)
    for old, new in (
        ('"bbproxy_proxy";', '"bbproxy_proxy"; "bbproxy_backend"; "tls";'),
        ("c2s_direct_tls_ports = {}", f"c2s_direct_tls_ports = {{ {tls_port} }}"),
        # As the role writes it: encryption required; the backend port is secure by the module.
        ("c2s_require_encryption = false", "c2s_require_encryption = true"),
        ("allow_unencrypted_plain_auth = true", "allow_unencrypted_plain_auth = false"),
        (
            '\nVirtualHost "',
            f"\nbbproxy_backend_ports = {{ {port} }}"
            f"\nbbproxy_proxy_starttls_ports = {{ {starttls_port} }}"
            f'\nbbproxy_proxy_starttls_interfaces = {{ "{LOOPBACK}" }}'
            f'\nssl = {{ certificate = "{certs.ecdsa.cert}"; key = "{certs.ecdsa.key}" }}'
            '\n\nVirtualHost "',
        ),
        ('    modules_disabled = { "tls" }\n', ""),  # mod_tls does the STARTTLS
    ):
        assert config.count(old) == 1, f"Prosody config changed: {old!r} not found once"
        config = config.replace(old, new)
    log_path = directory / "prosody.log"
    activated = f"Activated service 'bbproxy_proxy_starttls' on [{LOOPBACK}]:{starttls_port}"

    def ready() -> bool:
        return (
            port_accepts(port)
            and port_accepts(tls_port)
            and log_path.exists()
            and activated in log_path.read_text(errors="replace")
        )

    with running_prosody(directory, config, ("alice", "bob"), ready, "activate the STARTTLS port") as (
        proc,
        passwords,
        log,
        config_path,
    ):
        prosody = Prosody(LOOPBACK, port, DOMAIN, passwords, log, proc)
        yield SpliceProsody(
            ProxyProsody(prosody, proxy_port, config_path, prosodyctl), starttls_port, tls_port
        )
        assert proc.poll() is None, "prosody died during the tests"
        assert "Traceback" not in log.read_text(errors="replace")


@contextlib.contextmanager
def recording_relay(target: int) -> Iterator[tuple[int, bytearray]]:
    """A loopback relay to ``target`` that keeps what its first connection sent (bounded: 64 KiB)."""
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(20)
    sent = bytearray()

    def pump(src: socket.socket, dst: socket.socket, keep: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if keep and len(sent) < 65536:
                    sent.extend(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            upstream = socket.create_connection((LOOPBACK, target), timeout=20)
            back = threading.Thread(target=pump, args=(upstream, conn, False), daemon=True)
            back.start()
            pump(conn, upstream, True)
            back.join(20)
            conn.close()
            upstream.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], sent
    finally:
        listener.close()
        thread.join(25)


def splice_proxy(
    proxy_factory: ProxyFactory, sp: SpliceProsody, version: str = "v2", target: int = 0
) -> ProxyProcess:
    """bbproxy as the role configures it: legacy-only, spliced clients by STARTTLS with a header."""
    proxy = proxy_factory(
        backend=f"{LOOPBACK}:{sp.pp.proxy_port}",
        direct_tls=True,
        config={
            "send_proxy_protocol": version,
            "tls": {
                "routing": "legacy-only",
                "backend": f"{LOOPBACK}:{target or sp.starttls_port}",
                "splice": "starttls",
            },
        },
    )
    return proxy


def starttls_from(port: int, version: str, certs: Certs) -> ssl.SSLSocket:
    return starttls_over(connect_from(port), version, certs.cafile)


def features_after_tls(tls: ssl.SSLSocket) -> bytes:
    tls.sendall(stream_header())
    features = recv_until(tls, b"</stream:features>", 10)
    assert b"</stream:features>" in features, features
    return features


def prosody_direct_tls_mechanisms(sp: SpliceProsody, version: str, certs: Certs) -> list[str]:
    """What Prosody offers a client that connects to its own direct-TLS port."""
    sock = connect_from(sp.direct_tls_port)
    with client_context(version, certs.cafile).wrap_socket(sock, server_hostname=DOMAIN) as tls:
        return mechanisms(features_after_tls(tls))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_spliced_tls13_client_logs_in_with_its_own_address_and_prosodys_tls(
    splice_prosody: SpliceProsody, proxy_factory: ProxyFactory, certs: Certs, version: str
) -> None:
    port = splice_proxy(proxy_factory, splice_prosody, version).port
    with starttls_from(port, "1.3", certs) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.getpeercert(binary_form=True) == leaf_der(certs.ecdsa.cert), "not Prosody's certificate"
        features = features_after_tls(tls)
        assert mechanisms(features) == prosody_direct_tls_mechanisms(splice_prosody, "1.3", certs)
        full_jid = login(tls, features, "alice", splice_prosody.pp.prosody.passwords["alice"])
        client_port = tls.getsockname()[1]
        session_id, ip = splice_prosody.pp.session_address(full_jid)
        assert ip == CLIENT_SOURCE
        what = f"PROXY header, STARTTLS to follow from {LOOPBACK}"
        line = f"Client address {CLIENT_SOURCE} port {client_port} ({what})"
        splice_prosody.pp.wait_for_log(f"{session_id}\tinfo\t{line}")


def test_a_spliced_tls12_client_gets_a_channel_bound_login(
    splice_prosody: SpliceProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    """tls-unique (Prosody 0.12's binding, TLS 1.2): the client's TLS session is Prosody's."""
    port = splice_proxy(proxy_factory, splice_prosody).port
    offered = prosody_direct_tls_mechanisms(splice_prosody, "1.2", certs)
    assert "SCRAM-SHA-1-PLUS" in offered, offered
    with starttls_from(port, "1.2", certs) as tls:
        assert mechanisms(features_after_tls(tls)) == offered
        cb_data = tls.get_channel_binding("tls-unique")
        assert cb_data is not None
        result = scram_sha1_plus(tls, "alice", splice_prosody.pp.prosody.passwords["alice"], cb_data)
        assert b"<success" in result, result


def test_a_direct_tls_client_is_spliced_with_its_address(
    splice_prosody: SpliceProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    """XEP-0368: the client's first stream is after TLS, which is what Prosody expects after STARTTLS."""
    proxy = splice_proxy(proxy_factory, splice_prosody)
    assert proxy.direct_tls_port is not None
    sock = connect_from(proxy.direct_tls_port)
    with client_context("1.3", certs.cafile).wrap_socket(sock, server_hostname=DOMAIN) as tls:
        assert tls.getpeercert(binary_form=True) == leaf_der(certs.ecdsa.cert)
        features = features_after_tls(tls)
        full_jid = login(tls, features, "bob", splice_prosody.pp.prosody.passwords["bob"])
        assert splice_prosody.pp.session_address(full_jid)[1] == CLIENT_SOURCE
    # And slixmpp logs in through the same proxy, both ways in.
    for direct in (False, True):
        result = run_login_check(
            port=proxy.direct_tls_port if direct else proxy.port,
            prosody=splice_prosody.pp.prosody,
            cafile=certs.cafile,
            tls="1.3",
            direct_tls=direct,
        )
        assert result.returncode == 0, result.output


def test_prosody_gets_our_header_and_stream_and_nothing_of_the_clients_before_tls(
    splice_prosody: SpliceProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    with recording_relay(splice_prosody.starttls_port) as (relay_port, sent):
        port = splice_proxy(proxy_factory, splice_prosody, "v1", target=relay_port).port
        sock = connect_from(port)
        marker = "pre-tls-marker"
        sock.sendall(stream_header(extra=f" from='{marker}@{DOMAIN}'"))
        recv_until(sock, b"</stream:features>", 5)
        sock.sendall(STARTTLS + b"\n")  # whitespace after <starttls/> is still pre-TLS
        read_proceed(sock)
        client_port = sock.getsockname()[1]
        with client_context("1.3", certs.cafile).wrap_socket(sock, server_hostname=DOMAIN) as tls:
            features_after_tls(tls)
    header = proxy_protocol.encode_v1((CLIENT_SOURCE, client_port), (LOOPBACK, port))
    before_tls = header + backend_starttls.opening(DOMAIN) + backend_starttls.STARTTLS
    assert bytes(sent[: len(before_tls)]) == before_tls
    assert sent[len(before_tls)] == 0x16, "the ClientHello's record must follow <starttls/> at once"
    assert marker.encode() not in sent


def test_without_starttls_from_prosody_the_client_falls_back_to_our_tls(
    splice_prosody: SpliceProsody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    """The port answers but not with STARTTLS (here: Prosody's plain port, which reads no PROXY
    header): never worse than terminate-all, the client gets our TLS and logs in, with its address."""
    proxy = splice_proxy(proxy_factory, splice_prosody, target=splice_prosody.pp.prosody.port)
    with starttls_from(proxy.port, "1.3", certs) as tls:
        assert tls.getpeercert(binary_form=True) == leaf_der(certs.rsa.cert), "not the proxy's certificate"
        features = features_after_tls(tls)
        full_jid = login(tls, features, "alice", splice_prosody.pp.prosody.passwords["alice"])
        assert splice_prosody.pp.session_address(full_jid)[1] == CLIENT_SOURCE
    assert "terminating this client's TLS here" in proxy.log_text()
