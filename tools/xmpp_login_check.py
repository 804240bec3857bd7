#!/usr/bin/env python3
"""Log two XMPP users in over TLS and check that a message gets from one to the other.

Used by the integration tests, Molecule's verify step and operators:

    xmpp_login_check.py --host 127.0.0.1 --port 5222 --domain example.test \
        --tls 1.0 --user alice --password A --peer bob --peer-password B \
        --cafile ca.pem

Both users connect to HOST:PORT (never DNS: the address is given to slixmpp directly),
negotiate TLS with STARTTLS (or direct TLS, XEP-0368, with --direct-tls), authenticate with
SASL and bind a resource. The user sends the peer a message with a random token, and the
check passes once the peer receives it. One line per user reports the negotiated TLS
version and cipher; exit status 0 means success, 1 means failure with one line saying why.
Passwords never appear in the output.

The TLS version is forced on the client side with minimum = maximum = the requested
version. TLS 1.0/1.1 also need the cipher string at @SECLEVEL=0 on OpenSSL 3; that setting
is scoped to this client's SSLContext.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import secrets
import ssl
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
# Python deprecates the TLSVersion members below 1.2; referencing them is the whole point here.
_DEPRECATED_TLS_MESSAGE = r"ssl\.TLSVersion\.TLSv1(_1)? is deprecated"


class CheckFailed(Exception):
    """The check failed; the message is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class UserResult:
    jid: str
    tls_version: str
    cipher: str
    alpn: str | None
    sasl_mechanism: str | None

    def line(self) -> str:
        alpn = f" alpn={self.alpn}" if self.alpn else ""
        mech = f" sasl={self.sasl_mechanism}" if self.sasl_mechanism else ""
        return f"OK {self.jid} tls={self.tls_version} cipher={self.cipher}{alpn}{mech}"


@dataclasses.dataclass(frozen=True)
class Account:
    label: str  # "user" / "peer": what the failure message calls this side
    localpart: str
    password: str
    tls: str


def tls_version(name: str) -> ssl.TLSVersion:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED_TLS_MESSAGE, category=DeprecationWarning)
        return {
            "1.0": ssl.TLSVersion.TLSv1,
            "1.1": ssl.TLSVersion.TLSv1_1,
            "1.2": ssl.TLSVersion.TLSv1_2,
            "1.3": ssl.TLSVersion.TLSv1_3,
        }[name]


# Its own context, not files/bbproxy/tests/kit.py's: a standalone script (stdlib + slixmpp), run by
# hand against any server and by molecule's testinfra from the host, with no files/bbproxy to import.
def client_context(version: str, *, cafile: str | None, insecure: bool, direct_tls: bool) -> ssl.SSLContext:
    """An SSLContext that can only negotiate exactly ``version``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pinned = tls_version(version)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED_TLS_MESSAGE, category=DeprecationWarning)
        ctx.minimum_version = pinned
        ctx.maximum_version = pinned
    if version in ("1.0", "1.1"):
        # OpenSSL 3 refuses SHA-1 handshake signatures (all TLS < 1.2 has) above level 0.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if cafile:
            ctx.load_verify_locations(cafile=cafile)
        else:
            ctx.load_default_certs()
    if direct_tls:
        ctx.set_alpn_protocols(["xmpp-client"])
    return ctx


class _Client:
    """One slixmpp client plus what we learn about its session."""

    def __init__(self, account: Account, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        # Imported here so that `--help` and argument errors work without slixmpp.
        import slixmpp

        self.account = account
        self.loop = loop
        self.failure: str | None = None
        self.started: asyncio.Future[None] = loop.create_future()
        self.received: dict[str, asyncio.Future[None]] = {}
        self.xmpp = slixmpp.ClientXMPP(
            f"{account.localpart}@{args.domain}/check-{secrets.token_hex(3)}",
            account.password,
            sasl_mech=args.sasl_mech,
            ssl_context=client_context(
                account.tls, cafile=args.cafile, insecure=args.insecure, direct_tls=args.direct_tls
            ),
        )
        xmpp = self.xmpp
        xmpp.enable_direct_tls = args.direct_tls
        xmpp.enable_starttls = not args.direct_tls
        xmpp.enable_plaintext = False
        xmpp.whitespace_keepalive = False
        self.stage = "connecting"
        for event, stage in (
            ("connected", "TCP connected, TLS not established"),
            ("tls_success", "TLS established, not authenticated"),
            ("auth_success", "authenticated, resource not bound"),
            ("session_bind", "resource bound, session not started"),
        ):
            xmpp.add_event_handler(event, lambda _e, stage=stage: setattr(self, "stage", stage))
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("message", self._on_message)
        xmpp.add_event_handler("failed_auth", lambda _stanza: self._auth_failed("SASL authentication failed"))
        xmpp.add_event_handler("failed_all_auth", lambda _e: self._auth_failed("SASL authentication failed"))
        xmpp.add_event_handler("no_auth", lambda _e: self._auth_failed("no usable SASL mechanism offered"))
        xmpp.add_event_handler("stream_error", self._on_stream_error)
        xmpp.add_event_handler("connection_failed", lambda e: self._fail(f"connection failed: {e}"))
        xmpp.add_event_handler("ssl_invalid_chain", lambda e: self._fail(f"TLS handshake failed: {e}"))
        xmpp.add_event_handler("disconnected", self._on_disconnected)

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        if not self.started.done():
            self.started.set_exception(
                CheckFailed(f"{self.account.label} {self.account.localpart}: {reason}")
            )
        for fut in self.received.values():
            if not fut.done():
                fut.set_exception(CheckFailed(f"{self.account.label} {self.account.localpart}: {reason}"))

    def _auth_failed(self, reason: str) -> None:
        if self.tls_info() is None:
            # slixmpp goes on to SASL when STARTTLS is not offered, then refuses every
            # mechanism on the plaintext stream: say what really went wrong.
            reason = "the server offered no STARTTLS; refusing to authenticate without TLS"
        self._fail(reason)

    def _on_stream_error(self, error: Any) -> None:
        condition = error["condition"] if error is not None else "?"
        self._fail(f"stream error <{condition}/>")

    def _on_disconnected(self, reason: Any) -> None:
        # Only a failure if it happens before we are done with this client. slixmpp reports
        # the end of the stream before it has dispatched a <stream:error/> that came with it,
        # so give that event a moment to arrive first: it is the better reason.
        if self.failure is None:
            if isinstance(reason, ssl.SSLError):
                message = f"TLS handshake failed: {reason}"
            else:
                message = f"connection closed ({reason or 'no reason given'})"
            self.loop.call_later(0.2, self._fail, message)

    def _on_session_start(self, _event: Any) -> None:
        if self.started.done():
            return
        if self.tls_info() is None:
            self._fail("session started without TLS")
            return
        self.xmpp.send_presence()
        self.started.set_result(None)

    def _on_message(self, msg: Any) -> None:
        fut = self.received.get(str(msg["body"]))
        if fut is not None and not fut.done():
            fut.set_result(None)

    def tls_info(self) -> tuple[str, str, str | None] | None:
        transport = self.xmpp.transport
        if transport is None:
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        return ssl_object.version() or "?", cipher[0] if cipher else "?", ssl_object.selected_alpn_protocol()

    def result(self) -> UserResult:
        info = self.tls_info()
        if info is None:
            raise CheckFailed(f"{self.account.label} {self.account.localpart}: no TLS on the stream")
        mechanisms = (
            self.xmpp.plugin.get("feature_mechanisms", None) if hasattr(self.xmpp, "plugin") else None
        )
        mech = getattr(getattr(mechanisms, "mech", None), "name", None)
        return UserResult(str(self.xmpp.boundjid.full), info[0], info[1], info[2], mech)

    def abort(self) -> None:
        self.failure = self.failure or "finished"
        transport = self.xmpp.transport
        if transport is not None:
            transport.abort()
        self.xmpp.cancel_connection_attempt()


async def _wait(fut: asyncio.Future[Any], deadline: float, what: str) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise CheckFailed(f"timed out {what}")
    try:
        await asyncio.wait_for(asyncio.shield(fut), remaining)
    except TimeoutError:
        raise CheckFailed(f"timed out {what}") from None


async def run_check_async(args: argparse.Namespace) -> list[UserResult]:
    loop = asyncio.get_running_loop()
    # Leave room for interpreter exit so that the process ends within --timeout.
    deadline = time.monotonic() + max(args.timeout - 0.5, args.timeout / 2)
    accounts = [
        Account("user", args.user, args.password, args.tls),
        Account("peer", args.peer, args.peer_password, args.peer_tls or args.tls),
    ]
    clients = [_Client(a, args, loop) for a in accounts]
    try:
        for client in clients:
            client.xmpp.connect(args.host, args.port)
        # Both log in at once; the first failure ends the wait.
        pending = {client.started for client in clients}
        while pending:
            remaining = deadline - time.monotonic()
            done, pending = await asyncio.wait(
                pending, timeout=max(remaining, 0), return_when=asyncio.FIRST_EXCEPTION
            )
            for fut in done:
                fut.result()  # raises CheckFailed with the client's reason
            if pending and not done:
                slow = [c for c in clients if not c.started.done()]
                steps = "; ".join(f"{c.account.label} {c.account.localpart}: {c.stage}" for c in slow)
                raise CheckFailed(f"timed out waiting to log in ({steps})")
        sender, receiver = clients
        token = f"bbproxy-check-{secrets.token_hex(8)}"
        receiver.received[token] = loop.create_future()
        sender.xmpp.send_message(mto=receiver.xmpp.boundjid, mbody=token, mtype="chat")
        await _wait(receiver.received[token], deadline, "waiting for the message to reach the peer")
        return [c.result() for c in clients]
    finally:
        for client in clients:
            client.abort()
        # Let the aborted transports run their connection_lost callbacks.
        await asyncio.sleep(0)


def run_check(args: argparse.Namespace) -> list[UserResult]:
    """Run the check in a fresh event loop; raises CheckFailed with the reason."""
    return asyncio.run(run_check_async(args))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to connect to (no DNS lookup of the domain)"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", required=True, help="XMPP domain (stream 'to', SNI, certificate name)")
    parser.add_argument(
        "--tls", choices=TLS_VERSIONS, default="1.3", help="TLS version the user must negotiate"
    )
    parser.add_argument("--peer-tls", choices=TLS_VERSIONS, help="TLS version for the peer (default: --tls)")
    parser.add_argument("--user", required=True, help="localpart of the sending user")
    parser.add_argument("--password", help="the user's password (or env XMPP_CHECK_PASSWORD)")
    parser.add_argument("--peer", required=True, help="localpart of the receiving user")
    parser.add_argument("--peer-password", help="the peer's password (or env XMPP_CHECK_PEER_PASSWORD)")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cafile", help="CA bundle that must verify the server certificate")
    trust.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    parser.add_argument(
        "--direct-tls", action="store_true", help="TLS from the first byte (XEP-0368), ALPN xmpp-client"
    )
    parser.add_argument(
        "--sasl-mech", default=None, help="force one SASL mechanism, e.g. PLAIN (default: best offered)"
    )
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds; the check always ends within this"
    )
    args = parser.parse_args(argv)
    args.password = args.password if args.password is not None else os.environ.get("XMPP_CHECK_PASSWORD")
    args.peer_password = (
        args.peer_password if args.peer_password is not None else os.environ.get("XMPP_CHECK_PEER_PASSWORD")
    )
    if not args.password or not args.peer_password:
        parser.error("passwords: --password/--peer-password or XMPP_CHECK_PASSWORD/XMPP_CHECK_PEER_PASSWORD")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # slixmpp logs through `logging`; at DEBUG it would log SASL payloads. Keep only errors,
    # and those go to stderr without stanza contents.
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    # The event loop enforces the deadline; this is the backstop if the loop itself hangs.
    watchdog = threading.Timer(max(args.timeout - 0.2, args.timeout * 0.9), _hard_timeout)
    watchdog.daemon = True
    watchdog.start()
    try:
        results = run_check(args)
    except CheckFailed as exc:
        print(f"FAIL {exc}", flush=True)
        return 1
    except ImportError as exc:
        print(f"FAIL slixmpp is not installed ({exc}): pip install slixmpp", flush=True)
        return 1
    finally:
        watchdog.cancel()
    for result in results:
        print(result.line())
    print("OK message delivered", flush=True)
    return 0


def _hard_timeout() -> None:
    print("FAIL hard timeout: the event loop did not finish in time", flush=True)
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
