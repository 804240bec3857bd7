#!/usr/bin/env python3
"""Send one XMPP message from a user of one server to a user of another, through each one's proxy.

    federation_client.py --sender alice@a.test --sender-port 41001 --sender-cafile a.pem \
        --receiver bob@b.test --receiver-port 41002 --receiver-cafile b.pem --tls 1.0

Both users connect to 127.0.0.1 (each server's published STARTTLS port), negotiate exactly the
given TLS version, authenticate and bind. The receiver sends presence first (so it is online),
then the sender sends a chat message with a random token. Prints one JSON object:
    {"outcome": "delivered" | "error" | "timeout", "condition": ..., "sender_tls": ..., ...}
"error" means the sender's server bounced the message (e.g. the s2s link could not be set up),
with the stanza error condition. Exit status 0 whenever the outcome was determined; 1 when a
client could not log in (with "FAIL reason" on stdout). Passwords come from the environment
(SENDER_PASSWORD, RECEIVER_PASSWORD), never the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import ssl
import sys
import warnings
from typing import Any

import slixmpp

TLS_VERSIONS = {"1.0": "TLSv1", "1.2": "TLSv1_2", "1.3": "TLSv1_3"}


def context(version: str, cafile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pinned = getattr(ssl.TLSVersion, TLS_VERSIONS[version])
        ctx.minimum_version = ctx.maximum_version = pinned
    if version == "1.0":
        # OpenSSL 3 needs security level 0 for TLS 1.0's SHA-1 handshake signatures.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_verify_locations(cafile=cafile)
    return ctx


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, ctx: ssl.SSLContext) -> None:
        super().__init__(f"{jid}/federation-{secrets.token_hex(3)}", password, ssl_context=ctx)
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.whitespace_keepalive = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("message", self.inbox.put_nowait)
        self.add_event_handler("message_error", self.inbox.put_nowait)
        for event in ("failed_all_auth", "connection_failed", "stream_error", "disconnected"):
            self.add_event_handler(event, lambda e, event=event: self._failed(f"{event}: {e}"))

    def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(None)

    def _failed(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"{self.boundjid.bare}: {reason}"))

    def tls_version(self) -> str | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        return ssl_object.version() if ssl_object else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sender = Client(args.sender, os.environ["SENDER_PASSWORD"], context(args.tls, args.sender_cafile))
    receiver = Client(args.receiver, os.environ["RECEIVER_PASSWORD"], context(args.tls, args.receiver_cafile))
    try:
        sender.connect("127.0.0.1", args.sender_port)
        receiver.connect("127.0.0.1", args.receiver_port)
        await asyncio.wait_for(asyncio.gather(sender.ready, receiver.ready), args.timeout)
        result: dict[str, Any] = {"sender_tls": sender.tls_version(), "receiver_tls": receiver.tls_version()}
        token = f"federation-{secrets.token_hex(8)}"
        sender.send_message(mto=args.receiver, mbody=token, mtype="chat")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        while (remaining := deadline - loop.time()) > 0:
            inboxes = {asyncio.ensure_future(c.inbox.get()): c for c in (sender, receiver)}
            done, pending = await asyncio.wait(inboxes, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for fut in pending:
                fut.cancel()
            for fut in done:
                msg, client = fut.result(), inboxes[fut]
                if client is receiver and msg["body"] == token:
                    return {**result, "outcome": "delivered", "from": str(msg["from"].bare)}
                if client is sender and msg["type"] == "error":
                    error = msg["error"]
                    return {**result, "outcome": "error", "condition": error["condition"], "text": error["text"]}
        return {**result, "outcome": "timeout"}
    finally:
        for client in (sender, receiver):
            if client.transport is not None:
                client.transport.abort()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sender", required=True, help="bare JID of the sending user")
    parser.add_argument("--sender-port", type=int, required=True)
    parser.add_argument("--sender-cafile", required=True)
    parser.add_argument("--receiver", required=True, help="bare JID of the receiving user")
    parser.add_argument("--receiver-port", type=int, required=True)
    parser.add_argument("--receiver-cafile", required=True)
    parser.add_argument("--tls", choices=sorted(TLS_VERSIONS), default="1.0")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the logins, again for the message")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    try:
        result = asyncio.run(run(args))
    except (RuntimeError, TimeoutError) as exc:
        print(f"FAIL {exc or 'timed out logging in'}", flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
