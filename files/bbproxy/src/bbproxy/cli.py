"""Command-line entry point: ``bbproxy`` and ``python -m bbproxy``."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from . import __version__, expiry, fingerprints, logsink, memory, notify
from .certificates import CertificateError
from .config import build_parser, settings_from_args
from .listeners import ListenError, adopt_sockets
from .metrics import Metrics, MetricsUnavailable, NullMetrics
from .server import load_contexts, run
from .settings import ConfigError, Settings
from .workers import Supervisor

log = logging.getLogger("bbproxy")


def setup_logging(level: str, prefix: str = "") -> None:
    # Under systemd the journal stamps each line, and files it at the priority its "<N>" prefix
    # names; elsewhere we stamp and add no prefix. Workers share one stderr stream (the journal
    # files it all under the main PID), so their lines say which they are.
    journal = logsink.stderr_is_journal(sys.stderr)
    logsink.install(level, sys.stderr, stamped=not journal, prefix=prefix, priorities=journal)
    # Every session logs; the format uses none of the thread, process or caller fields, so skip
    # collecting them for each record (the logging HOWTO's "Optimization" section).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Pick the event loop: uvloop when asked for, or on "auto" when it is installed.

    Both loops serve TLS 1.0-1.3 the same way here, because the TLS layer is our own
    (session.py) rather than the loop's start_tls; see the README's "Event loop".
    """
    if choice in ("uvloop", "auto"):
        try:
            import uvloop  # optional dependency
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("loop: uvloop is not installed (pip install 'bbproxy[uvloop]')") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["census"]:  # bbproxy census ...: a report from the logs, not a server
        from . import census

        return census.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = settings_from_args(args)
        contexts = load_contexts(settings)
        loop_name, new_loop = loop_factory(settings.loop)
        metrics = Metrics() if settings.metrics_listen is not None else NullMetrics()
        fingerprints.use(fingerprints.load(settings.fingerprints))
    except (ConfigError, CertificateError, MetricsUnavailable, fingerprints.FingerprintTableError) as exc:
        print(f"bbproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(
            f"bbproxy: configuration OK ({len(settings.domains)} domain(s), TLS >= {settings.min_tls}); "
            + contexts.describe()
        )
        print("\n".join(expiry.check_config_lines(settings, datetime.now(UTC))))
        return 0
    setup_logging(settings.log_level)
    memory.tune_for_relay()  # before any relay buffer exists; forked workers inherit it
    log.info(
        "bbproxy %s starting on the %s event loop, %d worker(s)", __version__, loop_name, settings.workers
    )
    log.info("%s", contexts.describe())

    # Socket activation (bbproxy.socket): read once, before any fork; workers share the sockets.
    try:
        inherited = adopt_sockets(notify.listen_fds())
    except ListenError as exc:
        log.error("%s", exc)
        return 1
    if inherited:
        log.info("%d listening socket(s) from systemd", len(inherited))

    def serve(on_ready: Callable[[], None] | None, reuse_port: bool, worker: int = 0) -> int:
        try:
            with asyncio.Runner(loop_factory=new_loop) as runner:
                runner.run(run(settings, contexts, on_ready, reuse_port, metrics, worker, inherited))
        except ListenError as exc:
            log.error("%s", exc)
            return 1
        except KeyboardInterrupt:
            return 0
        return 0

    if settings.workers == 1:
        return serve(None, reuse_port=False)

    def worker(index: int, ready: Callable[[], None]) -> int:
        setup_logging(settings.log_level, prefix=f"worker={index} ")
        return serve(ready, reuse_port=True, worker=index)

    return Supervisor(settings.workers, worker).run()
