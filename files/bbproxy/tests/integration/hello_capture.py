"""Capture the ClientHello a real client sends, over STARTTLS or direct TLS (issue 20).

A loopback listener that plays the server just long enough: on a STARTTLS port it answers the
client's stream header with features requiring STARTTLS and ``<proceed/>`` (the proxy's own
sans-IO negotiation), then reads the ClientHello with the proxy's parser; on a direct-TLS port it
reads the hello at once. It then sends a ``handshake_failure`` alert and closes, so the client
gives up at once, and keeps the raw bytes of the hello. No backend, no login: what a client
sends first is all a fingerprint is made of.

Used by test_client_fingerprints.py, which runs the interop matrix's clients against it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bbproxy.clienthello import ClientHello, ClientHelloError, ClientHelloParser
from bbproxy.negotiation import Action, Negotiation

# TLS alert record: fatal handshake_failure, in the record version every client accepts.
HANDSHAKE_FAILURE = bytes.fromhex("15030100020228")
READ_TIMEOUT = 10.0  # seconds a client has to send its hello
MAX_PRE_TLS = 64 * 1024


@dataclass
class Captured:
    hello: ClientHello
    raw: bytes  # the hello's TLS records as the client sent them


@dataclass
class HelloCapture:
    """Two listening ports on 127.0.0.1; every hello that arrives is appended to ``hellos``."""

    domain: str
    host: str = "127.0.0.1"
    hellos: list[Captured] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listeners = {starttls: self._listen() for starttls in (True, False)}
        self._threads = [
            threading.Thread(target=self._accept, args=(sock, starttls), daemon=True)
            for starttls, sock in self._listeners.items()
        ]
        for thread in self._threads:
            thread.start()

    def port(self, *, starttls: bool) -> int:
        return int(self._listeners[starttls].getsockname()[1])

    def _listen(self) -> socket.socket:
        sock = socket.create_server((self.host, 0))
        sock.settimeout(0.2)
        return sock

    def take(self) -> list[Captured]:
        """The hellos captured since the last call."""
        with self._lock:
            taken, self.hellos = self.hellos, []
            return taken

    def wait(self, done: Callable[[list[Captured]], bool], timeout: float) -> list[Captured]:
        """Poll until ``done(hellos so far)`` or ``timeout``; the hellos are left in place."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if done(self.hellos):
                    break
            time.sleep(0.05)
        with self._lock:
            return list(self.hellos)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        for sock in self._listeners.values():
            sock.close()

    def _accept(self, listener: socket.socket, starttls: bool) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, starttls), daemon=True).start()

    def _serve(self, conn: socket.socket, starttls: bool) -> None:
        with conn:
            conn.settimeout(READ_TIMEOUT)
            try:
                captured = self._read_hello(conn, starttls)
            except (OSError, ClientHelloError, ValueError) as exc:
                with self._lock:
                    self.errors.append(f"{'starttls' if starttls else 'direct'}: {exc!r}")
                return
            if captured is None:
                return
            with self._lock:
                self.hellos.append(captured)
            with contextlib.suppress(OSError):
                conn.sendall(HANDSHAKE_FAILURE)

    def _read_hello(self, conn: socket.socket, starttls: bool) -> Captured | None:
        if starttls:
            negotiation = Negotiation({self.domain}, MAX_PRE_TLS)
            while True:
                data = conn.recv(4096)
                if not data:
                    return None
                outcome = negotiation.receive_data(data)
                conn.sendall(outcome.send)
                if outcome.action is Action.CLOSE:
                    raise ValueError(f"pre-TLS stream refused: {outcome.reason}")
                if outcome.action is Action.STARTTLS:
                    break
        parser = ClientHelloParser(skip_whitespace=starttls)
        raw = bytearray()
        while True:
            data = conn.recv(16384)
            if not data:
                return None
            raw += data
            hello = parser.feed(data)
            if hello is not None:
                return Captured(hello, bytes(raw).lstrip(b" \t\r\n"))
