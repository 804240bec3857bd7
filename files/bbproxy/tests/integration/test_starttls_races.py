"""The STARTTLS hand-off race: a ClientHello that arrives the instant <proceed/> is out.

A server that writes <proceed/> and yields to the event loop before the socket belongs to
the TLS layer can read the ClientHello as plaintext; the handshake then hangs (CPython
gh-142352 for StreamWriter.start_tls; measured here with uvloop and s_client as 14-16 of 20
attempts). Fast clients provoke it: a raw socket wrapped the moment <proceed/> is read, and
openssl s_client. Both event loops, TLS 1.0 and 1.3.
"""

from __future__ import annotations

import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .support import (
    DOMAIN,
    STARTTLS,
    Certs,
    ProxyFactory,
    client_context,
    connect,
    read_proceed,
    run_s_client,
    stream_header,
    xmpp_over_tls,
)

pytestmark = pytest.mark.integration

ATTEMPTS = 20
PARALLEL = 16
HANDSHAKE_BOUND = 5.0  # seconds; a lost ClientHello shows up as a handshake that never ends


def fast_client(port: int, ctx: ssl.SSLContext, expected: str) -> str | None:
    """One STARTTLS client as fast as possible; returns None on success, else what went wrong."""
    with connect(port, timeout=HANDSHAKE_BOUND) as sock:
        # Header and <starttls/> in one packet, then read exactly up to <proceed/> and hand
        # the socket to TLS at once: the ClientHello follows within microseconds.
        sock.sendall(stream_header() + STARTTLS)
        read_proceed(sock, timeout=HANDSHAKE_BOUND)
        sock.settimeout(HANDSHAKE_BOUND)
        started = time.monotonic()
        try:
            with ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls:
                version_seen = tls.version()
                features = xmpp_over_tls(tls, timeout=HANDSHAKE_BOUND)
        except OSError as exc:  # ssl.SSLError and timeouts are OSErrors
            return f"{exc!r} after {time.monotonic() - started:.2f}s"
    if version_seen != expected or b"<mechanisms" not in features:
        return f"{version_seen} {features[:200]!r}"
    return None


@pytest.mark.parametrize("version", ["1.0", "1.3"])
def test_client_hello_sent_the_instant_proceed_arrives(
    shared_proxies: ProxyFactory, certs: Certs, event_loop_name: str, version: str
) -> None:
    proxy = shared_proxies(cert="ecdsa", loop=event_loop_name)
    ctx = client_context(version, certs.cafile)
    expected = {"1.0": "TLSv1", "1.3": "TLSv1.3"}[version]
    failures = []
    for attempt in range(ATTEMPTS):
        error = fast_client(proxy.port, ctx, expected)
        if error:
            failures.append(f"sequential {attempt}: {error}")
            if len(failures) >= 3:  # each failure costs HANDSHAKE_BOUND; three make the point
                break
    if not failures:
        # Then in parallel: a proxy busy with other handshakes has a wider window between
        # writing <proceed/> and handing the socket to TLS, where a ClientHello could get lost.
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            futures = [pool.submit(fast_client, proxy.port, ctx, expected) for _ in range(PARALLEL * 4)]
            failures += [f"parallel {n}: {err}" for n, f in enumerate(futures) if (err := f.result())]
    assert not failures, "\n".join(failures) + "\n" + proxy.log_text()[-3000:]


def direct_tls_client(port: int, ctx: ssl.SSLContext, expected: str) -> str | None:
    """Connect and send the ClientHello at once: it may arrive before the proxy's accept returns."""
    with connect(port, timeout=HANDSHAKE_BOUND) as sock:
        started = time.monotonic()
        try:
            with ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls:
                version_seen, alpn = tls.version(), tls.selected_alpn_protocol()
                features = xmpp_over_tls(tls, timeout=HANDSHAKE_BOUND)
        except OSError as exc:
            return f"{exc!r} after {time.monotonic() - started:.2f}s"
    if version_seen != expected or alpn != "xmpp-client" or b"<mechanisms" not in features:
        return f"{version_seen} alpn={alpn} {features[:200]!r}"
    return None


@pytest.mark.parametrize("version", ["1.0", "1.3"])
def test_direct_tls_client_hello_right_after_connect(
    shared_proxies: ProxyFactory, certs: Certs, event_loop_name: str, version: str
) -> None:
    """XEP-0368: the ClientHello is the first thing on the wire (uvloop starts reading on accept)."""
    proxy = shared_proxies(cert="ecdsa", loop=event_loop_name, direct_tls=True)
    port = proxy.direct_tls_port
    assert port is not None
    ctx = client_context(version, certs.cafile, alpn=["xmpp-client"])
    expected = {"1.0": "TLSv1", "1.3": "TLSv1.3"}[version]
    failures = []
    for attempt in range(ATTEMPTS):
        error = direct_tls_client(port, ctx, expected)
        if error:
            failures.append(f"sequential {attempt}: {error}")
            if len(failures) >= 3:
                break
    if not failures:
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            futures = [pool.submit(direct_tls_client, port, ctx, expected) for _ in range(PARALLEL * 4)]
            failures += [f"parallel {n}: {err}" for n, f in enumerate(futures) if (err := f.result())]
    assert not failures, "\n".join(failures) + "\n" + proxy.log_text()[-3000:]


def test_openssl_s_client_in_a_loop(shared_proxies: ProxyFactory, certs: Certs, event_loop_name: str) -> None:
    proxy = shared_proxies(cert="rsa", loop=event_loop_name)
    failures = []
    for attempt in range(ATTEMPTS // 2):
        flag = "-tls1" if attempt % 2 == 0 else "-tls1_3"
        result = run_s_client(proxy.port, version_flag=flag, cafile=certs.cafile, timeout=HANDSHAKE_BOUND * 2)
        if result.returncode != 0 or result.protocol not in ("TLSv1", "TLSv1.3"):
            failures.append(f"attempt {attempt} {flag}: rc={result.returncode}\n{result.output[-1500:]}")
    assert not failures, "\n".join(failures)
