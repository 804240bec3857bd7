#!/usr/bin/env python3
"""tlsfuzzer against the proxy's direct-TLS listener and against ``openssl s_server`` (issue 16).

Both servers run on 127.0.0.1 with the same OpenSSL, certificate, key and cipher strings
(files/bbproxy/tests/integration/support.py: ``s_server_argv``); the proxy relays to an echo
backend, so tlsfuzzer's "GET /" gets application data back as from ``s_server -www``. Each
script runs against both at once, bounded by ``--timeout``. The table says, per script, how many
cases passed on each; a script counts as a difference when a case fails through the proxy that
passes on s_server. The exit status is 1 if there is any difference, 2 if the run could not start.

tlsfuzzer is not on PyPI: pass a checkout (``--tlsfuzzer-dir`` or TLSFUZZER_DIR) and a Python that
has ``tlslite-ng`` and ``ecdsa`` (``--python`` or TLSFUZZER_PYTHON); docs/testing.md says how.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _path  # noqa: F401  (files/bbproxy on sys.path)
from tests.integration import support
from tests.kit import make_certs

# Scripts and their flags. "-d": (EC)DHE key exchange, which is all the proxy offers (no plain
# RSA). The first group passes in full on s_server; the second has cases that fail on s_server
# too (renegotiation, tickets, ALPN or SNI answers s_server does not give), compared case by case.
SCRIPTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("test-ccs.py", ("-d",)),
    ("test-interleaved-CKE-with-CCS.py", ()),
    ("test-record-layer-fragmentation.py", ("-d",)),
    ("test-invalid-client-hello-w-record-overflow.py", ("-d",)),
    ("test-large-hello.py", ("-d",)),
    ("test-invalid-content-type.py", ("-d",)),
    ("test-zero-length-data.py", ("-d",)),
    ("test-version-numbers.py", ("-d",)),
    ("test-downgrade-protection.py", ("-d",)),
    ("test-sessionID-resumption.py", ("-d",)),
    ("test-ssl-death-alert.py", ("-d",)),
    ("test-encrypt-then-mac.py", ("-d",)),
    ("test-conversation.py", ("-d",)),
    ("test-connection-abort.py", ("-d",)),
    ("test-no-heartbeat.py", ("-d",)),
    ("test-message-skipping.py", ("-d",)),
    ("test-aes-gcm-nonces.py", ("-d",)),
    ("test-hello-request-by-client.py", ("-d",)),
    ("test-large-number-of-extensions.py", ("-d",)),
    ("test-early-application-data.py", ("-d",)),
    ("test-tls13-conversation.py", ()),
    ("test-tls13-ccs.py", ()),
    ("test-tls13-version-negotiation.py", ("-d",)),
    ("test-tls13-hrr.py", ()),
    ("test-tls13-empty-alert.py", ()),
    ("test-tls13-unencrypted-alert.py", ()),
    ("test-tls13-zero-length-data.py", ()),
    ("test-tls13-connection-abort.py", ()),
    ("test-tls13-record-padding.py", ()),
    ("test-tls13-keyupdate.py", ()),
    ("test-tls13-nociphers.py", ()),
    ("test-tls13-invalid-ciphers.py", ()),
    # Partly failing on s_server as well:
    ("test-extended-master-secret-extension.py", ("-d",)),
    ("test-session-ticket-resumption.py", ("-d",)),
    ("test-tls13-session-resumption.py", ("-d",)),
    ("test-tls13-count-tickets.py", ()),
    ("test-truncating-of-client-hello.py", ("-d",)),
    ("test-invalid-client-hello.py", ()),
    ("test-client-hello-max-size.py", ("-d",)),
    ("test-sslv2hello-protocol.py", ("-d",)),
    ("test-fallback-scsv.py", ("-d",)),
    ("test-renegotiation-disabled.py", ("-d",)),
    ("test-invalid-session-id.py", ()),
    ("test-invalid-server-name-extension.py", ("-d",)),
    ("test-tls13-legacy-version.py", ()),
    ("test-tls13-multiple-ccs-messages.py", ()),
)

# Cases whose difference is not the proxy's TLS (checked by hand; docs/interop-tlsfuzzer.md).
EXPLAINED: dict[str, dict[str, str]] = {
    "test-invalid-server-name-extension.py": {
        # The script's AlertGenerator(close_notify) sends an alert of level 0: OpenSSL answers it
        # with illegal_parameter. s_server -www closes after its page, before that alert is read.
        "Sanity check, SNI": "the script's alert has level 0; s_server closes before reading it",
        "sanity": "the script's alert has level 0; s_server closes before reading it",
    },
}
COUNT_RE = re.compile(r"^(TOTAL|PASS|FAIL|SKIP|XFAIL|XPASS): (\d+)$", re.MULTILINE)
FAILED_CASE_RE = re.compile(r"^\t'(.*)'$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Result:
    status: str  # "pass", "fail", "timeout", "error"
    counts: dict[str, int]
    failed: frozenset[str]
    seconds: float

    def cell(self) -> str:
        if self.status in ("timeout", "error"):
            return self.status
        return f"{self.status} {self.counts.get('PASS', 0)}/{self.counts.get('TOTAL', 0)}"


class HttpLikeBackend:
    """The proxy's backend: like ``s_server -www`` one answer, in one write, per request (a blank
    line ends one), and the connection stays open until the proxy closes it. An echo would answer
    a request sent in pieces in pieces, which tlsfuzzer (expecting one record) counts as a failure.
    """

    ANSWER = b"HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\nbbproxy tlsfuzzer backend\r\n"

    def __init__(self) -> None:
        self.listener = socket.create_server((support.LOOPBACK, 0))
        self.address = f"{support.LOOPBACK}:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        with conn, contextlib.suppress(OSError):
            conn.settimeout(300)  # bounded: no script keeps a connection this long
            while data := conn.recv(65536):
                pending = (pending + data)[-65536:]
                while (end := re.search(rb"\r?\n\r?\n", pending)) is not None:
                    pending = pending[end.end() :]
                    conn.sendall(self.ANSWER)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@dataclasses.dataclass(frozen=True)
class Row:
    script: str
    s_server: Result
    bbproxy: Result
    unexplained: list[str]
    explained: list[str]

    def line(self) -> str:
        marks = [f"<-- {'; '.join(self.unexplained)}"] if self.unexplained else []
        marks += [f"(explained: {'; '.join(self.explained)})"] if self.explained else []
        return f"{self.script:<52} {self.s_server.cell():<14} {self.bbproxy.cell():<14} {' '.join(marks)}"


def run_script(
    python: str, tlsfuzzer: Path, script: str, args: tuple[str, ...], port: int, timeout: float
) -> Result:
    argv = [python, str(tlsfuzzer / "scripts" / script), "-h", support.LOOPBACK, "-p", str(port), *args]
    env = dict(os.environ, PYTHONPATH=str(tlsfuzzer))
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=tlsfuzzer, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return Result("timeout", {}, frozenset(), time.monotonic() - start)
    output = done.stdout + done.stderr
    counts = {name: int(value) for name, value in COUNT_RE.findall(output)}
    failed = (
        frozenset(FAILED_CASE_RE.findall(output.split("FAILED:", 1)[1]))
        if "FAILED:" in output
        else frozenset()
    )
    if "TOTAL" not in counts:
        status = "error"
    else:
        status = "pass" if done.returncode == 0 and counts.get("FAIL", 0) == 0 else "fail"
    return Result(status, counts, failed, time.monotonic() - start)


def differs(script: str, reference: Result, proxy: Result) -> tuple[list[str], list[str]]:
    """Cases that fail through the proxy and not on s_server: (unexplained, explained)."""
    if proxy.status in ("timeout", "error") and reference.status not in ("timeout", "error"):
        return [proxy.status], []
    if reference.status == "pass" and proxy.status != "pass" and not proxy.failed:
        return [proxy.status], []
    known = EXPLAINED.get(script, {})
    extra = sorted(proxy.failed - reference.failed)
    return [c for c in extra if c not in known], [c for c in extra if c in known]


def check_setup(python: str, tlsfuzzer: Path) -> str | None:
    if not (tlsfuzzer / "scripts" / "test-conversation.py").is_file():
        return (
            f"no tlsfuzzer checkout at {tlsfuzzer} (tlsfuzzer is not on PyPI): "
            "git clone https://github.com/tlsfuzzer/tlsfuzzer and pass TLSFUZZER_DIR=<that directory>"
        )
    probe = subprocess.run(
        [python, "-c", "import tlslite, ecdsa; print(tlslite.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        return (
            f"{python} cannot import tlslite-ng and ecdsa: python3 -m venv VENV && "
            "VENV/bin/pip install tlslite-ng==0.9.0b2 ecdsa, then TLSFUZZER_PYTHON=VENV/bin/python"
        )
    return None


def versions(python: str, tlsfuzzer: Path) -> str:
    def out(argv: list[str], cwd: Path | None = None) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=cwd)
            return done.stdout.strip()
        return "?"

    tlslite = out([python, "-c", "import tlslite; print(tlslite.__version__)"])
    commit = out(["git", "-C", str(tlsfuzzer), "rev-parse", "--short", "HEAD"]) or "not a git checkout"
    proxy = out([sys.executable, "-c", "import ssl; print(ssl.OPENSSL_VERSION)"])
    return (
        f"{out(['openssl', 'version'])} (s_server); proxy's Python {sys.version.split()[0]} with {proxy}; "
        f"tlslite-ng {tlslite}; tlsfuzzer {commit}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tlsfuzzer-dir", type=Path, default=os.environ.get("TLSFUZZER_DIR"))
    parser.add_argument("--python", default=os.environ.get("TLSFUZZER_PYTHON") or sys.executable)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per script and server (120)")
    parser.add_argument("--only", action="append", metavar="SCRIPT", help="run only this script (repeatable)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.tlsfuzzer_dir is None:
        print("tlsfuzzer: set TLSFUZZER_DIR (or --tlsfuzzer-dir); see docs/testing.md", file=sys.stderr)
        return 2
    tlsfuzzer = args.tlsfuzzer_dir.resolve()
    problem = check_setup(args.python, tlsfuzzer)
    if problem is not None:
        print(f"tlsfuzzer: {problem}", file=sys.stderr)
        return 2
    scripts = [s for s in SCRIPTS if not args.only or s[0] in args.only]

    with tempfile.TemporaryDirectory(prefix="bbproxy-tlsfuzzer-") as tmp:
        workdir = Path(tmp)
        certs = make_certs(workdir)
        backend = HttpLikeBackend()
        starter = support.ProxyStarter(workdir, certs)
        rows: list[Row] = []
        try:
            proxy = starter(backend=backend.address, direct_tls=True)
            with (
                support.running_s_server(certs.rsa, workdir) as reference_port,
                ThreadPoolExecutor(2) as pool,
            ):
                for script, flags in scripts:
                    jobs = [
                        pool.submit(run_script, args.python, tlsfuzzer, script, flags, port, args.timeout)
                        for port in (reference_port, proxy.direct_tls_port)
                    ]
                    on_s_server, through_proxy = (job.result() for job in jobs)
                    row = Row(
                        script, on_s_server, through_proxy, *differs(script, on_s_server, through_proxy)
                    )
                    rows.append(row)
                    print(row.line(), flush=True)
        finally:
            starter.stop_all()
            backend.close()

    worse = [row for row in rows if row.unexplained]
    pass_fail = sum(1 for row in rows if row.s_server.status == "pass" and row.bbproxy.status != "pass")
    both = sum(1 for row in rows if row.s_server.status == "pass" and row.bbproxy.status == "pass")
    summary = (
        f"{len(rows)} scripts: {both} pass on both; {pass_fail} pass on s_server and fail through bbproxy; "
        f"{len(worse)} with a case that fails only through bbproxy (explained ones aside)"
    )
    print(summary)
    if args.markdown is not None:
        command = shlex.join(["python", "bench/tlsfuzzer.py", *(sys.argv[1:] if argv is None else argv)])
        write_markdown(args.markdown, rows, summary, versions(args.python, tlsfuzzer), command)
    return 1 if worse or pass_fail else 0


def write_markdown(path: Path, rows: list[Row], summary: str, about: str, command: str) -> None:
    lines = [
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC: `{command}`",
        "",
        f"Versions: {about}.",
        "",
        "| script | s_server | bbproxy | cases failing only through bbproxy |",
        "|---|---|---|---|",
    ]
    for row in rows:
        notes = row.unexplained + [f"{c} (explained: {EXPLAINED[row.script][c]})" for c in row.explained]
        lines.append(
            f"| {row.script} | {row.s_server.cell()} | {row.bbproxy.cell()} | {'; '.join(notes) or '-'} |"
        )
    lines += ["", summary, ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
