"""One flood process of the torture run (core.py starts several): one epoll loop.

Usage, in files/bbproxy: ``python -m tests.torture.flood '<json config>'``; prints one JSON
summary line on stdout.

Config keys
  port         the proxy's STARTTLS port on 127.0.0.1
  mode         ``idle``   connect and never send a byte (slowloris)
               ``drip``   send the stream header, then whitespace, one byte per ``drip_interval``
               ``stall``  stream header + <starttls/>, wait for <proceed/>, then send part of a
                          ClientHello (``hello_hex``, cut at a random point) and never finish it;
                          every second connection sends all of it and stalls after the
                          server's answer (the proxy has done its key exchange work by then)
  concurrent   connections kept open at once; a connection the proxy closes is replaced
  budget       total connects this process may make (bound on count)
  duration     seconds to keep the level up (bound on time); then every socket is closed
  rate         new connects per second at most
  source       source address to bind (e.g. 127.0.0.2), default 127.0.0.1
  drip_interval, hello_hex, domain, seed

Summary: connects made, peak open, outcomes (how each connection ended: the RFC 6120 stream
error the proxy sent, ``closed`` for a close without one, ``open-at-end`` when we closed it),
and the longest a connection lived before the proxy closed it (timeouts honoured?).
"""

from __future__ import annotations

import contextlib
import errno
import json
import random
import resource
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

from ..kit import DOMAIN, STARTTLS, STREAM_ERROR_RE, stream_header

KEEP_BYTES = 512  # what we keep of each connection's answer: enough for the stream error


class Conn:
    __slots__ = ("answer", "cut", "dripped", "opened", "sock", "stage", "to_send")

    def __init__(self, sock: socket.socket, opened: float) -> None:
        self.sock = sock
        self.opened = opened
        self.answer = bytearray()
        self.stage = "connecting"
        self.to_send = b""
        self.dripped = 0
        self.cut = 0


class Flood:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.mode: str = cfg["mode"]
        self.addr = ("127.0.0.1", int(cfg["port"]))
        self.source: str = cfg.get("source", "127.0.0.1")
        self.rng = random.Random(cfg.get("seed", 1))
        self.header = stream_header(cfg.get("domain", DOMAIN))
        self.hello = bytes.fromhex(cfg.get("hello_hex", ""))
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.outcomes: Counter[str] = Counter()
        self.connects = 0
        self.peak_open = 0
        self.max_lifetime_closed = 0.0
        self.stall_full = 0
        self.stopping = False  # SIGTERM: stop early, still report

    # -- bookkeeping ---------------------------------------------------------------------

    def open_one(self, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.bind((self.source, 0))
        self.connects += 1
        code = sock.connect_ex(self.addr)
        if code not in (0, errno.EINPROGRESS):
            self.outcomes[f"connect-failed:{errno.errorcode.get(code, code)}"] += 1
            sock.close()
            return
        conn = Conn(sock, now)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_WRITE, conn)
        self.peak_open = max(self.peak_open, len(self.conns))

    def finish(self, conn: Conn, outcome: str, now: float) -> None:
        if outcome != "open-at-end":
            self.max_lifetime_closed = max(self.max_lifetime_closed, now - conn.opened)
        match = STREAM_ERROR_RE.search(conn.answer)
        if match and outcome == "closed":
            outcome = match.group(1).decode()
        self.outcomes[outcome] += 1
        fd = conn.sock.fileno()
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        self.conns.pop(fd, None)
        conn.sock.close()

    # -- per-connection steps --------------------------------------------------------------

    def on_connected(self, conn: Conn, now: float) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.finish(conn, f"connect-failed:{errno.errorcode.get(err, err)}", now)
            return
        conn.stage = "open"
        if self.mode == "stall":
            conn.to_send = self.header + STARTTLS
            self.flush(conn, now)
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def flush(self, conn: Conn, now: float) -> None:
        try:
            sent = conn.sock.send(conn.to_send)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.finish(conn, "closed", now)
            return
        conn.to_send = conn.to_send[sent:]

    def on_readable(self, conn: Conn, now: float) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.finish(conn, "closed", now)
            return
        if len(conn.answer) < KEEP_BYTES:
            conn.answer += data[: KEEP_BYTES - len(conn.answer)]
        if self.mode == "stall" and conn.stage == "open" and b"<proceed" in conn.answer:
            conn.stage = "tls"
            self.stall_full += 1
            if self.stall_full % 2:
                conn.to_send = self.hello  # all of it: the proxy answers, then we stall
            else:
                conn.to_send = self.hello[: self.rng.randrange(1, len(self.hello))]
            self.flush(conn, now)

    def drip(self, now: float) -> None:
        payload = self.header
        for conn in list(self.conns.values()):
            if conn.stage != "open":
                continue
            byte = payload[conn.dripped : conn.dripped + 1] if conn.dripped < len(payload) else b" "
            conn.dripped += 1
            try:
                conn.sock.send(byte)
            except BlockingIOError:
                pass
            except OSError:
                self.finish(conn, "closed", now)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        concurrent, budget = int(cfg["concurrent"]), int(cfg["budget"])
        rate, duration = float(cfg.get("rate", 1000)), float(cfg["duration"])
        drip_interval = float(cfg.get("drip_interval", 0.5))
        start = time.monotonic()
        end = start + duration
        next_drip = start + drip_interval
        opened_allowance = 0.0
        last = start
        while True:
            now = time.monotonic()
            if now >= end or self.stopping:
                break
            opened_allowance = min(opened_allowance + (now - last) * rate, max(rate / 10, 1))
            last = now
            while opened_allowance >= 1 and len(self.conns) < concurrent and self.connects < budget:
                self.open_one(now)
                opened_allowance -= 1
            if self.connects >= budget and not self.conns:
                break
            for key, mask in self.sel.select(timeout=0.02):
                conn = key.data
                if conn.sock.fileno() not in self.conns:
                    continue
                if conn.stage == "connecting" and mask & selectors.EVENT_WRITE:
                    self.on_connected(conn, now)
                elif mask & selectors.EVENT_READ:
                    self.on_readable(conn, now)
            if self.mode == "drip" and now >= next_drip:
                self.drip(now)
                next_drip = now + drip_interval
        now = time.monotonic()
        still_open = len(self.conns)
        for conn in list(self.conns.values()):
            self.finish(conn, "open-at-end", now)
        return {
            "mode": self.mode,
            "source": self.source,
            "connects": self.connects,
            "peak_open": self.peak_open,
            "open_at_end": still_open,
            "outcomes": dict(self.outcomes),
            "max_lifetime_closed_s": round(self.max_lifetime_closed, 2),
            "elapsed_s": round(now - start, 2),
        }


def main() -> int:
    cfg = json.loads(sys.argv[1])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    flood = Flood(cfg)
    signal.signal(signal.SIGTERM, lambda *_: setattr(flood, "stopping", True))
    summary = flood.run()
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
