"""TLS session resumption through the proxy into a real Prosody (issue 19): what keeps working.

Tickets are off by design (docs/security.md, "Tickets and forward secrecy"), so a TLS 1.0-1.2
client resumes by session ID from the server-side cache of the process that made the session:

* ``openssl s_client`` (nobody here wrote it) saves its session with ``-sess_out``, offers it
  again with ``-sess_in`` and prints ``Reused`` at TLS 1.0 and 1.2; it asks for a ticket (its
  default) and gets none. The Python ``ssl`` client's resumption, with an echo backend and next
  to ``openssl s_server``, is in test_tls_like_s_server.py.
* With ``--workers 2`` each worker has its own cache (the contexts are built before the fork,
  with an empty cache, and nothing shares it afterwards), and SO_REUSEPORT hands each new
  connection to a worker by a hash of its addresses. A reconnecting client resumes exactly when
  it lands on the worker that made its session, about half the time: measured here per
  connection from the worker named in the proxy's close line for that client port.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from pathlib import Path

import pytest

from .support import (
    DOMAIN,
    STARTTLS,
    Certs,
    Prosody,
    ProxyFactory,
    ProxyProcess,
    client_context,
    connect,
    open_stream,
    read_proceed,
    run_s_client,
    wait_until,
    xmpp_over_tls,
)

pytestmark = pytest.mark.integration

S_CLIENT_FLAGS = {"1.0": "-tls1", "1.2": "-tls1_2"}
PROTOCOL_NAMES = {"1.0": "TLSv1", "1.2": "TLSv1.2"}
RECONNECTS = 30  # bounded: 30 STARTTLS logins-to-features against two workers
TIMEOUT = 10.0


@pytest.mark.parametrize("version", ["1.0", "1.2"])
def test_s_client_resumes_by_session_id_and_gets_no_ticket(
    proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs, tmp_path: Path, version: str
) -> None:
    proxy = proxy_factory(backend=f"{prosody.host}:{prosody.port}")
    saved = tmp_path / f"session-{version}.pem"
    first = run_s_client(
        proxy.port, version_flag=S_CLIENT_FLAGS[version], cafile=certs.cafile, extra=["-sess_out", str(saved)]
    )
    assert first.returncode == 0, first.output
    assert first.protocol == PROTOCOL_NAMES[version], first.output
    assert re.search(r"^New, ", first.output, re.MULTILINE), first.output
    # s_client asks for a ticket by default; the server issues none (OP_NO_TICKET) ...
    assert "TLS session ticket" not in first.output, first.output
    # ... and the session it saved carries a session ID to resume by, and no ticket.
    session_id = re.search(r"^\s*Session-ID: ([0-9A-F]+)$", first.output, re.MULTILINE)
    assert session_id is not None and len(session_id.group(1)) == 64, first.output
    assert saved.stat().st_size > 0

    second = run_s_client(
        proxy.port, version_flag=S_CLIENT_FLAGS[version], cafile=certs.cafile, extra=["-sess_in", str(saved)]
    )
    assert second.returncode == 0, second.output
    # "Reused, <the cipher's version>, Cipher is ...": the abbreviated handshake, same session.
    assert re.search(r"^Reused, ", second.output, re.MULTILINE), second.output
    assert second.protocol == PROTOCOL_NAMES[version], second.output
    assert f"Session-ID: {session_id.group(1)}" in second.output, second.output
    assert "TLS session ticket" not in second.output, second.output


def starttls_session(
    proxy: ProxyProcess, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int, ssl.SSLSession, bool]:
    """STARTTLS, the TLS handshake (offering ``session``), the post-TLS stream up to Prosody's
    features, then a clean close (close_notify both ways). Returns the client's local port, the
    session and whether it was resumed."""
    sock = connect(proxy.port, TIMEOUT)
    port = int(sock.getsockname()[1])
    try:
        open_stream(sock)
        sock.sendall(STARTTLS)
        read_proceed(sock)
        tls = ctx.wrap_socket(sock, server_hostname=DOMAIN, session=session)
    except BaseException:
        sock.close()
        raise
    with tls:
        features = xmpp_over_tls(tls, TIMEOUT)
        assert b"mechanisms" in features, f"no SASL features from Prosody: {features!r}"
        reused, new_session = tls.session_reused, tls.session
        tls.sendall(b"</stream:stream>")
        tls.settimeout(TIMEOUT)
        # Prosody's closing tag may still be in flight; the proxy sends its close_notify anyway.
        with contextlib.suppress(ssl.SSLError, OSError):
            tls.unwrap()
    assert new_session is not None
    return port, new_session, reused


def worker_of(proxy: ProxyProcess, port: int) -> str:
    """The worker whose close line names this client port (waits for the line)."""
    pattern = re.compile(rf"worker=(\d+) conn=\d+ peer=127\.0\.0\.1:{port} ")
    wait_until(lambda: pattern.search(proxy.log_text()) is not None, TIMEOUT, f"close line of port {port}")
    match = pattern.search(proxy.log_text())
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize("version", ["1.0", "1.2"])
def test_with_two_workers_a_session_resumes_only_on_the_worker_that_made_it(
    proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs, version: str
) -> None:
    proxy = proxy_factory(backend=f"{prosody.host}:{prosody.port}", extra_args=["--workers", "2"])
    wait_until(lambda: "2 workers ready" in proxy.log_text(), TIMEOUT, "2 workers ready")
    ctx = client_context(version, certs.cafile)
    first_port, session, reused = starttls_session(proxy, ctx, None)
    assert not reused and session.id
    home = worker_of(proxy, first_port)

    outcomes = []  # (worker, resumed) per reconnect, each offering the first session
    for _ in range(RECONNECTS):
        port, _, reused = starttls_session(proxy, ctx, session)
        outcomes.append((worker_of(proxy, port), reused))
    resumed = sum(reused for _, reused in outcomes)
    elsewhere = [reused for worker, reused in outcomes if worker != home]
    print(f"TLS {version}, 2 workers: {resumed}/{RECONNECTS} reconnects resumed; home worker {home}")
    # On the worker that made the session every reconnect resumes; on the other none does.
    assert all(reused == (worker == home) for worker, reused in outcomes), outcomes
    # Both workers took reconnects (SO_REUSEPORT spreads them; all 30 on one: p = 2^-29).
    assert elsewhere and len(elsewhere) < RECONNECTS, outcomes
