"""Helper servers for the benchmark, each run as its own process by run.py.

``echo``      the fake backend: a plain TCP echo (what bbproxy relays to instead of Prosody).
``tls-echo``  the handshake/idle baseline: a plain Python ``ssl`` server (asyncio, direct TLS,
              no XMPP, no relay) with the same TLS policy as bbproxy, echoing what it gets.

Both print one line ``ready <port> <loop>`` on stdout once listening, then serve until SIGTERM.
Only stdlib; uvloop is used for ``echo`` when installed (it must not be the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import ssl
import sys
import warnings
from typing import cast

# The same policy bbproxy applies (docs/configuration.md, issue #3): TLS 1.0-1.3, ECDHE with
# AES-CBC-SHA below TLS 1.2 at @SECLEVEL=0, modern AEAD suites for TLS 1.2, defaults for 1.3.
MODERN = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
LEGACY = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers(f"{MODERN}:{LEGACY}:@SECLEVEL=0")
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, key)
    return ctx


class Echo(asyncio.Protocol):
    """Write back what arrives; stop reading while our own write buffer is full."""

    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def serve(args: argparse.Namespace, loop_name: str) -> None:
    loop = asyncio.get_running_loop()
    ctx = server_context(args.cert, args.key) if args.mode == "tls-echo" else None
    server = await loop.create_server(
        Echo,
        args.host,
        args.port,
        backlog=4096,
        reuse_address=True,
        ssl=ctx,
        ssl_handshake_timeout=30.0 if ctx else None,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port} {loop_name}", flush=True)
    await stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["echo", "tls-echo"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "auto"], default="auto")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1"):
        parser.error("loopback only")
    if args.mode == "tls-echo" and not (args.cert and args.key):
        parser.error("tls-echo needs --cert and --key")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop_name, loop_factory = "asyncio", asyncio.new_event_loop
    if args.loop in ("uvloop", "auto"):
        try:
            import uvloop

            loop_name, loop_factory = "uvloop", uvloop.new_event_loop
        except ImportError:
            if args.loop == "uvloop":
                parser.error("uvloop is not installed")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args, loop_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
