"""The ``/metrics`` endpoint: a small HTTP/1.x server on the proxy's own event loop.

``GET``/``HEAD /metrics``, 404 elsewhere, one request per connection, the request head bounded
to :data:`MAX_REQUEST_BYTES` and :data:`REQUEST_TIMEOUT`, at most :data:`MAX_SCRAPERS`
connections at once (the role keeps local users other than the scrapers from taking those
slots with a uid filter: docs/security.md). What it serves is in docs/metrics.md.

Not prometheus-client's ``start_http_server``: it runs a WSGI server thread plus one per request, no cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("bbproxy.metrics")

# The scrape endpoint's bounds: a request head fits in 8 KiB and arrives in 10 s.
MAX_REQUEST_BYTES: Final = 8192
REQUEST_TIMEOUT: Final = 10.0
MAX_SCRAPERS: Final = 8  # concurrent scrape connections; more are closed at once
_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest() writes


class Exposed(Protocol):
    """What the endpoint serves: a registry of its own (``metrics.Metrics``)."""

    @property
    def registry(self) -> CollectorRegistry: ...


def render(metrics: Exposed) -> bytes:
    """The text exposition of ``metrics`` (what ``GET /metrics`` answers)."""
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry)


async def serve(metrics: Exposed, host: str, port: int) -> asyncio.Server:
    """Listen for scrapes on ``host:port`` (port 0 picks one); close the server to stop.

    It runs on the proxy's own loop (asyncio or uvloop), so no thread is needed.
    """
    state = _ScrapeState()
    return await asyncio.start_server(
        partial(_answer, metrics, state), host, port, limit=MAX_REQUEST_BYTES, reuse_address=True
    )


class _ScrapeState:
    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


async def _answer(
    metrics: Exposed, state: _ScrapeState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if state.active >= MAX_SCRAPERS:
        writer.close()
        return
    state.active += 1
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                response = _response(431, b"request header too large\n")
            else:
                response = _route(metrics, head)
            writer.write(response)
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass  # the scraper went away or was too slow: nothing to answer
    finally:
        state.active -= 1
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.wait_closed()


def _route(metrics: Exposed, head: bytes) -> bytes:
    request_line = head.split(b"\r\n", 1)[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"bad request\n")
    method, target = parts[0], parts[1]
    if target.split(b"?", 1)[0] != b"/metrics":
        return _response(404, b"not found; metrics are at /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n")
    try:
        body = render(metrics)
    except Exception as exc:  # a failing live source must not take the endpoint down
        log.error("metrics scrape failed: %s: %s", exc.__class__.__name__, exc)
        return _response(500, b"metrics collection failed\n")
    return _response(200, body, content_type=_CONTENT_TYPE, head_only=method == b"HEAD")


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def _response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode("ascii")
    return header + extra + b"\r\n" + (b"" if head_only else body)
