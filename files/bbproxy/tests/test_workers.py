"""--workers N with the real process: both workers accept, reload, respawn, drain, readiness."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import trustme

from .helpers import DEADLINE
from .kit import free_port, stream_header


def starttls_features(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(stream_header("a.test", prolog=False))
        data = b""
        while b"</stream:features>" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        return data


class LogReader:
    """Collects the proxy's stderr in a thread so waits can look at it with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    def close(self, proc: subprocess.Popen[str]) -> None:
        self._thread.join(DEADLINE)
        assert proc.stderr is not None
        proc.stderr.close()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1) -> None:
        end = time.monotonic() + DEADLINE
        while len(re.findall(pattern, self.text())) < count:
            assert time.monotonic() < end, f"no {count}x {pattern!r} in:\n{self.text()}"
            time.sleep(0.02)


def test_two_workers_share_the_port_reload_respawn_and_drain(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("a.test")
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    port = free_port()
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(DEADLINE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bbproxy", "--listen", f"127.0.0.1:{port}", "--backend", "127.0.0.1:1",
         "--cert", str(cert), "--key", str(key), "--domain", "a.test", "--workers", "2"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
    )  # fmt: skip
    log = LogReader(proc)
    try:
        assert notify.recv(64) == b"READY=1"  # only after both workers are listening
        log.wait_for(r"worker=\d bbproxy ready", 2)

        # The kernel spreads connections over both workers (SO_REUSEPORT hashes the source port).
        for _ in range(40):
            assert b"<starttls" in starttls_features(port)
        log.wait_for(r"conn=\d+ ", 40)
        served_by = set(re.findall(r"INFO (worker=\d) conn=", log.text()))
        assert served_by == {"worker=0", "worker=1"}, log.text()

        proc.send_signal(signal.SIGHUP)
        assert notify.recv(64) == b"RELOADING=1"
        assert notify.recv(64) == b"READY=1"
        log.wait_for(r"worker=\d certificates reloaded", 2)

        # A worker that dies is replaced, and the port keeps being served.
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        log.wait_for(r"exited unexpectedly \(signal SIGKILL\); starting a new one")
        log.wait_for(r"worker=\d bbproxy ready", 3)
        for _ in range(10):
            assert b"<starttls" in starttls_features(port)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        assert notify.recv(64) == b"STOPPING=1"
        log.wait_for(r"worker=\d stopped", 2)
        assert "Traceback" not in log.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close(proc)
        notify.close()
