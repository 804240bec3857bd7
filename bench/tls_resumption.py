#!/usr/bin/env python3
"""What resumption saves a reconnecting client's server: full vs resumed handshake CPU (issue 15).

    python bench/tls_resumption.py              # 300 handshakes per row, RSA 2048 and ECDSA P-256
    python bench/tls_resumption.py -n 1000

Both sides are bbproxy's own contexts (``bbproxy.tls.build_context``) and a Python client, in one
process over MemoryBIOs: no sockets, no event loop, so the figure is OpenSSL's handshake work and
nothing else. Only the server side's calls are timed (``time.process_time`` around each server
step; the client's work is left out). Per version and key type it prints the server CPU of a full
handshake, of a resumption by session ID (tickets off: what bbproxy does) and of a resumption by
ticket (the same context with tickets back on, for comparison), and the ratios against the full
handshake of the same run; the last column counts session-ID resumptions after connections that
ended without close_notify (OpenSSL then drops the session). Bounded: ``-n`` handshakes per row,
at most 5000.
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import sys
import tempfile
import time
from pathlib import Path

import _path  # noqa: F401  (files/bbproxy on sys.path)
from bbproxy.tls import CertPair, Policy, build_context, cipher_string, has_legacy_policy
from tests.kit import DOMAIN, client_context, make_certs

MAX_HANDSHAKES = 5000


def client(version: str, cafile: Path) -> ssl.SSLContext:
    """A client of one TLS version; at 1.0/1.1 it offers the legacy policy's suites."""
    ciphers = cipher_string(Policy.LEGACY) if has_legacy_policy(version) else None
    return client_context(version, cafile, ciphers=ciphers)


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, session: ssl.SSLSession | None, clean: bool
) -> tuple[float, ssl.SSLSession | None, bool]:
    """One handshake (and the TLS 1.3 tickets after it), then a close_notify from the server if
    ``clean``; the server's CPU seconds for the handshake, the client's session, whether it was
    resumed. OpenSSL drops a session from its cache when the connection ends without one."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=DOMAIN, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    spent = 0.0
    done = {"client": False, "server": False}
    for _ in range(8):  # a full handshake needs at most 4 flights
        for name, side in (("client", client), ("server", server)):
            if done[name]:
                continue
            start = time.process_time()
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            finally:
                if side is server:
                    spent += time.process_time() - start
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    else:
        raise RuntimeError("the handshake did not finish")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.read(1)  # takes in TLS 1.3's NewSessionTicket, so the session can resume
    if clean:
        with contextlib.suppress(ssl.SSLWantReadError):
            server.unwrap()
    return spent, client.session, client.session_reused


def measure(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, count: int, clean: bool = True
) -> tuple[float, float, int]:
    """Mean server CPU (ms) of ``count`` full and ``count`` resumed handshakes; how many resumed."""
    full = resumed = 0.0
    hits = 0
    for _ in range(count):
        spent, session, _ = handshake(server_ctx, client_ctx, None, clean)
        full += spent
        spent, _, reused = handshake(server_ctx, client_ctx, session, clean)
        resumed += spent
        hits += reused
    return 1000 * full / count, 1000 * resumed / count, hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="handshakes per row (default 300)")
    args = parser.parse_args(argv)
    count = max(1, min(args.n, MAX_HANDSHAKES))
    print(f"OpenSSL: {ssl.OPENSSL_VERSION}; {count} full + {count} resumed handshakes per row")
    print(
        "| key | TLS | context | full ms | session ID ms (ratio, hits) | ticket ms (ratio, hits) "
        "| session ID hits, no close_notify |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp))
        for key_name, kit_pair in (("RSA", certs.rsa), ("ECDSA", certs.ecdsa)):
            pair = CertPair(kit_pair.cert, kit_pair.key)
            for version in ("1.0", "1.2", "1.3"):
                policy = Policy.LEGACY if has_legacy_policy(version) else Policy.MODERN
                no_tickets = build_context(pair, policy, "1.0")  # as bbproxy serves it
                tickets = build_context(pair, policy, "1.0")
                tickets.options &= ~ssl.OP_NO_TICKET
                ticket_client = client(version, certs.cafile)
                id_client = client(version, certs.cafile)
                id_client.options |= ssl.OP_NO_TICKET
                full, by_id, id_hits = measure(no_tickets, id_client, count)
                _, by_ticket, ticket_hits = measure(tickets, ticket_client, count)
                _, _, dropped_hits = measure(no_tickets, id_client, min(count, 50), clean=False)
                print(
                    f"| {key_name} | {version} | {policy.value} | {full:.3f} "
                    f"| {by_id:.3f} ({by_id / full:.2f}, {id_hits}/{count}) "
                    f"| {by_ticket:.3f} ({by_ticket / full:.2f}, {ticket_hits}/{count}) "
                    f"| {dropped_hits}/{min(count, 50)} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
