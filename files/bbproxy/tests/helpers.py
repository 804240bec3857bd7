"""Helpers shared by the in-process and real-process tests (not a test module)."""

from __future__ import annotations

import asyncio
import math
import random
import ssl
from collections.abc import Awaitable, Callable

import pytest

DEADLINE = 20.0  # seconds any single wait may take before the test fails


def run(loop_name: str, coro_fn: Callable[[], Awaitable[None]]) -> None:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(coro_fn(), 60))


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll a condition on the loop (no fixed sleep), failing after DEADLINE."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not predicate():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


# -- ClientHello surgery: the hellos attackers and odd stacks send, made from real ones -------


def handshake_message(records: bytes) -> bytes:
    """The handshake message carried by one or more TLS handshake records."""
    message, pos = b"", 0
    while pos < len(records):
        length = int.from_bytes(records[pos + 3 : pos + 5], "big")
        message += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return message


def as_records(message: bytes, size: int = 16384, version: bytes = b"\x03\x01") -> bytes:
    """``message`` re-framed as handshake records of at most ``size`` bytes each."""
    return b"".join(
        b"\x16" + version + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (message[i : i + size] for i in range(0, len(message), size))
    )


def with_extension(hello_records: bytes, ext_type: int, data: bytes) -> bytes:
    """A real ClientHello with one more extension appended (lengths fixed up), in one record."""
    message = handshake_message(hello_records)
    body = message[4:]
    pos = 2 + 32  # legacy_version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
    pos += 1 + body[pos]  # compression methods
    extensions = body[pos + 2 :] if pos < len(body) else b""
    extensions += ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    body = body[:pos] + len(extensions).to_bytes(2, "big") + extensions
    return as_records(b"\x01" + len(body).to_bytes(3, "big") + body)


def supported_versions(*versions: int) -> bytes:
    """The data of a ClientHello's supported_versions extension (RFC 8446 §4.2.1)."""
    listed = b"".join(v.to_bytes(2, "big") for v in versions)
    return bytes([len(listed)]) + listed


def _cipher_list_span(body: bytes) -> tuple[int, int]:
    """(start, end) of the cipher suite list inside a ClientHello body (after the 4-byte header)."""
    pos = 2 + 32  # legacy_version, random
    pos += 1 + body[pos]  # session id
    length = int.from_bytes(body[pos : pos + 2], "big")
    return pos + 2, pos + 2 + length


def with_cipher_order(hello_records: bytes, order: list[int]) -> bytes:
    """A real ClientHello with its cipher suites reordered (``order``: indexes into its list, each
    at most once; leaving some out drops those suites).

    Another order is another JA3; another set of suites is also another JA4: what a client
    making up fresh fingerprints sends.
    """
    message = handshake_message(hello_records)
    body = message[4:]
    start, end = _cipher_list_span(body)
    suites = [body[i : i + 2] for i in range(start, end, 2)]
    assert len(set(order)) == len(order) and set(order) <= set(range(len(suites))), "indexes, once each"
    chosen = b"".join(suites[i] for i in order)
    body = body[: start - 2] + len(chosen).to_bytes(2, "big") + chosen + body[end:]
    return as_records(message[:1] + len(body).to_bytes(3, "big") + body, version=hello_records[1:3])


def ja3_churn(hello_records: bytes, count: int, seed: int = 0) -> list[bytes]:
    """``count`` variants of a real ClientHello, each with a shuffled proper subset of its suites:
    ``count`` distinct JA3 hashes and, since the sets differ too, JA4s that no table names."""
    body = handshake_message(hello_records)[4:]
    start, end = _cipher_list_span(body)
    suites = (end - start) // 2
    assert math.factorial(suites - 1) > count * 4, f"{suites} suites cannot make {count} orders"
    rng = random.Random(seed)
    orders: set[tuple[int, ...]] = set()
    hellos = []
    while len(hellos) < count:
        order = rng.sample(range(suites), suites - 1 - rng.randrange(suites // 2))  # never all of them
        if tuple(order) not in orders:
            orders.add(tuple(order))
            hellos.append(with_cipher_order(hello_records, order))
    return hellos


def hello_of(ctx: ssl.SSLContext, server_hostname: str = "example.test") -> bytes:
    """The ClientHello ``ctx`` sends, as records (its JA3 depends only on the context)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("a client handshake finished without a server")
