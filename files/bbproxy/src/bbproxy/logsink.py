"""Where log lines go: stderr (the journal under systemd), written once per event-loop turn.

Under systemd (stderr is the journal stream :func:`stderr_is_journal` recognises) each line
starts with its syslog priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug
(sd-daemon(3)): journald strips the prefix and files the line at that priority
(``SyslogLevelPrefix=``, on by default), so ``journalctl -p warning -u bbproxy`` shows the
warnings and errors alone. Elsewhere (a terminal, a pipe, a file) lines carry no prefix.

Every session logs a line or two (a legacy client's fingerprint, the close line). Through the
``logging`` machinery a line costs a LogRecord, a handler lock, a Formatter pass and a write(2);
measured inside the running proxy, a session's two lines took 0.07-0.1 ms of its ~0.65 ms of
CPU (bench/README.md, "Where the handshake time goes"); this path takes 0.03 ms. So:

- :class:`TurnHandler` writes the lines of one loop turn together: a line logged inside a
  running loop waits for the loop's next turn (the loop does not sleep while a callback is
  ready, so no line waits for traffic); lines logged outside a running loop (start-up, other
  threads) leave at once; ``flush()``, logging's exit hook included, writes whatever waits. A
  SIGKILL loses at most the current turn's lines.
- :func:`info` is the sessions' path: when :func:`install` set a :class:`TurnHandler` up as the
  only handler, the line is formatted exactly as the handler's Formatter would and appended
  directly; otherwise (tests, embedding, other handlers) it is an ordinary ``logger.info()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TextIO

_fast: TurnHandler | None = None  # set by install(): the one handler, taking lines directly

# sd-daemon(3)'s SD_CRIT ... SD_DEBUG for logging's levels; a level between two takes the
# priority of the standard level below it (a custom level 25 is filed as info, never as warning).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def journal_priority(levelno: int) -> int:
    """The syslog priority journald files a line of logging level LEVELNO under."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return _DEBUG_PRIORITY


def stderr_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether STREAM is the journal stream systemd connected: ``JOURNAL_STREAM`` is
    "DEVICE:INODE" of that stream (systemd.exec(5)), compared with the stream's own, so a
    child whose stderr was redirected elsewhere does not mistake the inherited variable."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (closed, or an in-memory stream)
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines as ``[<priority>][asctime ]levelname prefix message``; see the module docstring.

    With ``priorities`` every line of a record (a traceback's too) starts with its priority."""

    def __init__(self, stream: TextIO, *, stamped: bool, prefix: str = "", priorities: bool = False) -> None:
        super().__init__(stream)
        self.setFormatter(
            logging.Formatter(("%(asctime)s " if stamped else "") + f"%(levelname)s {prefix}%(message)s")
        )
        self._stamped = stamped
        self._priorities = priorities
        self._info_mark = f"<{journal_priority(logging.INFO)}>" if priorities else ""
        self._info_head = f"INFO {prefix}"
        self._lines: list[str] = []
        self._second = -1
        self._second_text = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's own contract: report it and go on
            self.handleError(record)
            return
        if self._priorities:
            mark = f"<{journal_priority(record.levelno)}>"
            line = mark + line.replace("\n", "\n" + mark)
        self._append(line + self.terminator)

    def line(self, message: str) -> None:
        """An INFO line, exactly as emit() would format it."""
        head = self._info_head
        if self._info_mark and "\n" in message:
            message = message.replace("\n", "\n" + self._info_mark)
        if self._stamped:  # Formatter.formatTime's default: local time, then ",msecs"
            now = time.time()
            second = int(now)
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            head = f"{self._second_text},{int((now - second) * 1000):03d} {head}"
        with self.lock or contextlib.nullcontext():
            self._append(self._info_mark + head + message + self.terminator)

    def _append(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running in this thread
                self.flush()

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            lines, self._lines = self._lines, []
            try:
                if lines:
                    self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stderr gone (journal stopped, pipe closed): lines lost
                pass


def install(
    level: str, stream: TextIO, *, stamped: bool, prefix: str = "", priorities: bool = False
) -> TurnHandler:
    """Make a TurnHandler the root logger's only handler, and let info() use it directly."""
    global _fast
    handler = TurnHandler(stream, stamped=stamped, prefix=prefix, priorities=priorities)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    _fast = handler
    return handler


def info(logger: logging.Logger, message: str, *args: object) -> None:
    """``logger.info(message, *args)``, straight into the TurnHandler when that is the setup."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fast = _fast
    root = logging.root
    if (
        fast is not None
        and root.handlers == [fast]
        and not (logger.handlers or logger.filters or root.filters)
    ):
        try:
            fast.line(message % args if args else message)
            return
        except (TypeError, ValueError):
            pass  # logging reports a bad format string with a traceback: let it
    logger.info(message, *args)
