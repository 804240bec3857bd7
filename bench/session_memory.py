#!/usr/bin/env python3
"""What one idle relayed TLS 1.0 session holds in bbproxy (issue 19): RSS against Python's heap.

    python bench/session_memory.py                    # 1 000 idle sessions, the 15 biggest lines
    python bench/session_memory.py --sessions 2000 --top 25 --python /tmp/other-checkout-python

Starts the echo backend and bbproxy (``--loop``, default uvloop) as the benchmark does, but
bbproxy runs under ``tracemalloc`` (this file's ``server`` mode: bbproxy's own ``main()`` with a
SIGUSR2 handler that dumps a snapshot). Then ``--sessions`` clients (bench/loadgen.py ``hold``:
STARTTLS, TLS 1.0 ECDSA, one 200 B stanza echoed through the backend) stay connected while it
takes a snapshot and RSS before and with them held. Per session it prints:

* the RSS growth (``/proc/PID/status``) less tracemalloc's own bookkeeping growth;
* what Python's allocator holds (the snapshot difference), by source line, biggest first;
* the rest = memory allocated outside Python's allocator: OpenSSL (the SSL object, its cipher
  and MAC contexts, its buffers, the session), uvloop/libuv handles, glibc's overhead.

tracemalloc slows bbproxy down; the figures are memory, not CPU. Loopback only, bounded (one
hold of ``--sessions`` at most 5 000, every wait with a timeout), every process stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import stat
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

from common import Cert, make_certs
from peers import BBProxy, Env, running, start_echo
from procstat import (
    Processes,
    ignore_signals,
    interrupt_on_signals,
    raise_nofile,
    rss_kib,
    run_script,
    settle,
)
from scenarios import PROFILES, loadgens, session_cfg, warm_up

MAX_SESSIONS = 5000


def server_main(argv: list[str]) -> int:
    """bbproxy's main() under tracemalloc; SIGUSR2 writes a snapshot to $BBPROXY_MEMDUMP.N."""
    if argv[:2] == ["-m", "bbproxy"]:
        argv = argv[2:]
    tracemalloc.start(1)
    dumps = iter(range(1000))

    def dump(_signum: int, _frame: object) -> None:
        base = os.environ["BBPROXY_MEMDUMP"] + f".{next(dumps)}"
        tracemalloc.take_snapshot().dump(base + ".snap")
        Path(base + ".json").write_text(
            json.dumps({"tracemalloc_kib": tracemalloc.get_tracemalloc_memory() / 1024})
        )

    signal.signal(signal.SIGUSR2, dump)
    from bbproxy.cli import main  # here: the other modes do not need it

    return main(argv)


class TracedBBProxy(BBProxy):
    """bbproxy started through the wrapper (this file's server mode); everything else as in run.py."""

    wrapper = ""

    def argv(self, cert: Cert | None) -> list[str]:
        return [self.wrapper, *super().argv(cert)[1:]]


def snapshot(pid: int, base: Path, index: int) -> tuple[tracemalloc.Snapshot, float, int]:
    """Ask the server for snapshot ``index``; (snapshot, tracemalloc's own KiB, RSS KiB then)."""
    os.kill(pid, signal.SIGUSR2)
    done = Path(f"{base}.{index}.json")
    deadline = time.monotonic() + 60
    while not done.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no snapshot from the server within 60 s")
        time.sleep(0.1)
    time.sleep(0.2)
    rss = rss_kib(pid)
    own = json.loads(done.read_text())["tracemalloc_kib"]
    return tracemalloc.Snapshot.load(f"{base}.{index}.snap"), own, rss


def flight_residue(cert: Cert, count: int = 2000) -> tuple[int, float]:
    """(bytes of the server's first TLS 1.0 flight with ``cert``, KiB an ``ssl.MemoryBIO`` keeps
    after that flight was written and read). OpenSSL's memory BIO keeps its buffer at the biggest
    size ever written (BUF_MEM never shrinks), and a session's outgoing BIO gets that flight in one
    write: the certificate chain stays in memory, as a buffer, for the life of the session. Measured
    here in this process, by RSS over ``count`` BIOs, on the same OpenSSL as the server's."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert.chain, cert.key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    for ctx in (server, client):
        with warnings.catch_warnings():  # TLS 1.0 on purpose, as the held sessions
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("ECDHE+AESGCM:ECDHE+AES:@SECLEVEL=0")
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c_obj = client.wrap_bio(c_in, c_out)
    s_obj = server.wrap_bio(s_in, s_out, server_side=True)
    with contextlib.suppress(ssl.SSLWantReadError):
        c_obj.do_handshake()
    s_in.write(c_out.read())
    with contextlib.suppress(ssl.SSLWantReadError):
        s_obj.do_handshake()
    flight = s_out.read()
    bios = [ssl.MemoryBIO() for _ in range(count)]
    before = rss_kib(os.getpid())
    for bio in bios:
        bio.write(flight)
        bio.read()
    return len(flight), (rss_kib(os.getpid()) - before) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000, help=f"idle sessions held (1..{MAX_SESSIONS})")
    parser.add_argument("--top", type=int, default=15, help="source lines to list")
    parser.add_argument(
        "--stanza-size", type=int, default=200,
        help="bytes each session sends and gets echoed before it idles (default 200; 262144: a burst)",
    )  # fmt: skip
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--python", default=sys.executable, help="interpreter that can import bbproxy")
    args = parser.parse_args(argv)
    sessions = max(1, min(args.sessions, MAX_SESSIONS))
    raise_nofile()
    interrupt_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="bbproxy-memory-"))
    ns = argparse.Namespace(python=args.python, loop=args.loop, proxy_args="", skip_peers=set(), clients=1)
    env = Env(ns, dict(PROFILES["quick"]), workdir, Processes())
    # bbproxy runs as "<wrapper> -m bbproxy ...": the wrapper runs this file's server mode.
    wrapper = workdir / "python-traced"
    wrapper.write_text(f'#!/bin/sh\nexec "{args.python}" "{Path(__file__).resolve()}" server "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    dumpbase = workdir / "snapshot"
    os.environ["BBPROXY_MEMDUMP"] = str(dumpbase)
    try:
        env.certs = make_certs(workdir)
        start_echo(env)
        bb = TracedBBProxy(env)
        bb.wrapper = str(wrapper)
        with running(bb, env.certs["ecdsa"]):
            warm_up(env, bb, "1.0")
            limit = 20 + sessions / 50
            cfg = session_cfg(
                bb,
                "hold",
                "1.0",
                count=sessions,
                concurrency=64,
                time_limit=limit,
                session_timeout=30,
                hold_limit=300,
            )
            cfg["stanza_size"] = args.stanza_size
            with loadgens(env, [cfg], "memory") as (gen,):
                settle(bb.pid)
                before, own0, rss0 = snapshot(bb.pid, dumpbase, 0)
                gen.send("go")
                established = gen.expect("established", 60 + sessions / 50)
                settle(bb.pid)
                time.sleep(0.5)
                held, own1, rss1 = snapshot(bb.pid, dumpbase, 1)
                gen.send("close")
                closed = gen.expect("result", 60)
    finally:
        ignore_signals()
        env.procs.stop_all()
    ok = established["ok"]
    if not ok:
        print(f"no session established: {established['failures']}", file=sys.stderr)
        return 1
    stats = held.compare_to(before, "lineno")
    python_kib = sum(s.size_diff for s in stats) / 1024
    rss_kib_ = rss1 - rss0 - (own1 - own0)
    print(f"bbproxy {args.loop}, {ok} idle TLS 1.0 ECDSA sessions held ({established['failed']} failed, "
          f"{closed['dead_at_close']} dead at close), per session:")  # fmt: skip
    print(f"  RSS growth less tracemalloc's own:  {rss_kib_ / ok:6.2f} KiB")
    print(f"  Python's allocator (tracemalloc):    {python_kib / ok:6.2f} KiB")
    print(f"  the rest (OpenSSL, libuv, glibc):    {(rss_kib_ - python_kib) / ok:6.2f} KiB")
    flight, kept = flight_residue(env.certs["ecdsa"])
    print(f"    of which the outgoing memory BIO's buffer for the server's first flight ({flight} B): "
          f"{kept:.2f} KiB (measured apart, in this process)")  # fmt: skip
    print(f"\nPython allocations per session by source line (the {args.top} biggest):")
    for s in stats[: args.top]:
        frame = s.traceback[0]
        name = frame.filename.split("/site-packages/")[-1].split("/src/")[-1]
        print(f"  {s.size_diff / ok:8.0f} B  {s.count_diff / ok:5.2f} blocks  {name}:{frame.lineno}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_script("session_memory.py", main, server=server_main)
