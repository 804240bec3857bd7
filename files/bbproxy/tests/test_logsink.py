"""Log lines: the sessions' direct path writes what logging would, and one loop turn's lines
leave in one write."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bbproxy import logsink

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


Sink = Callable[[], tuple[logsink.TurnHandler, CountingStream]]


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    """What cli.setup_logging installs, for this test only. Pytest adds its capture handlers to the
    root logger after fixtures ran, so the test body calls sink() to make this handler the only
    one, as it is in the proxy. The level is set with setLevel(), which also clears the loggers'
    isEnabledFor() caches that earlier tests filled (assigning ``root.level`` does not)."""
    stream = CountingStream()
    handler = logsink.TurnHandler(stream, stamped=True, prefix="worker=1 ")
    level = logging.root.level
    logging.root.setLevel(logging.INFO)
    monkeypatch.setattr(logsink, "_fast", handler)

    def only_handler() -> tuple[logsink.TurnHandler, CountingStream]:
        monkeypatch.setattr(logging.root, "handlers", [handler])
        return handler, stream

    yield only_handler
    logging.root.setLevel(level)


def test_direct_lines_read_as_logging_would_write_them(sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stream = sink()
    log = logging.getLogger("bbproxy.session")
    log.info("conn=%d peer=%s close=%s", 7, "[::1]:5000", "client-eof")  # through logging
    records: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "emit", records.append)  # the direct path must not need it
    logsink.info(log, "conn=%d peer=%s close=%s", 7, "[::1]:5000", "client-eof")
    assert records == []
    by_logging, direct = stream.getvalue().splitlines()
    assert STAMP.match(by_logging) and STAMP.match(direct), (by_logging, direct)
    assert (
        STAMP.sub("", direct)
        == STAMP.sub("", by_logging)
        == "INFO worker=1 conn=7 peer=[::1]:5000 close=client-eof"
    )


def test_without_timestamps_under_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = CountingStream()
    handler = logsink.TurnHandler(stream, stamped=False)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logsink, "_fast", handler)
    log = logging.getLogger("bbproxy.session")
    monkeypatch.setattr(log, "level", logging.INFO)
    logsink.info(log, "conn=%d up", 1)
    log.info("conn=%d up", 1)
    assert stream.getvalue() == "INFO conn=1 up\nINFO conn=1 up\n"


def test_level_is_respected(sink: Sink) -> None:
    _, stream = sink()
    log = logging.getLogger("bbproxy.session")
    log.setLevel(logging.WARNING)
    try:
        logsink.info(log, "conn=%d quiet", 1)
    finally:
        log.setLevel(logging.NOTSET)
    assert stream.getvalue() == ""


def test_other_handlers_get_ordinary_records(caplog: pytest.LogCaptureFixture) -> None:
    """Tests and embedders that attach their own handler still see every session line."""
    with caplog.at_level(logging.INFO, logger="bbproxy.session"):
        logsink.info(logging.getLogger("bbproxy.session"), "conn=%d closed", 3)
    assert [r.getMessage() for r in caplog.records] == ["conn=3 closed"]


def test_one_loop_turn_is_one_write(sink: Sink) -> None:
    _, stream = sink()
    log = logging.getLogger("bbproxy.session")

    async def scenario() -> None:
        logsink.info(log, "conn=%d a", 1)
        log.info("conn=%d b", 2)
        logsink.info(log, "conn=%d c", 3)
        assert stream.writes == []  # nothing yet: the loop has not turned
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(stream.writes) == 1
        assert [STAMP.sub("", line) for line in stream.writes[0].splitlines()] == [
            "INFO worker=1 conn=1 a",
            "INFO worker=1 conn=2 b",
            "INFO worker=1 conn=3 c",
        ]

    asyncio.run(scenario())
    logsink.info(log, "conn=%d d", 4)  # outside a running loop: at once
    assert len(stream.writes) == 2 and stream.writes[1].endswith("conn=4 d\n")


def test_flush_writes_what_waits(sink: Sink) -> None:
    """logging.shutdown() (run at exit) flushes handlers: a line logged just before is kept."""
    handler, stream = sink()

    async def scenario() -> None:
        logsink.info(logging.getLogger("bbproxy.session"), "conn=%d last", 9)
        handler.flush()
        assert stream.getvalue().endswith("conn=9 last\n")

    asyncio.run(scenario())


# ---- journald priorities (sd-daemon(3) prefixes, only when stderr is the journal) -----------


def test_journal_priority_prefixes_per_level(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = CountingStream()
    handler = logsink.TurnHandler(stream, stamped=False, prefix="worker=2 ", priorities=True)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logsink, "_fast", handler)
    log = logging.getLogger("bbproxy.server")
    monkeypatch.setattr(log, "level", logging.DEBUG)
    log.debug("d %d", 1)
    log.info("i %d", 2)
    logsink.info(log, "fast %d", 3)  # the sessions' direct path
    log.warning("w %d", 4)
    log.error("e %d", 5)
    log.critical("c %d", 6)
    log.log(25, "between info and warning")
    assert stream.getvalue().splitlines() == [
        "<7>DEBUG worker=2 d 1",
        "<6>INFO worker=2 i 2",
        "<6>INFO worker=2 fast 3",
        "<4>WARNING worker=2 w 4",
        "<3>ERROR worker=2 e 5",
        "<2>CRITICAL worker=2 c 6",
        "<6>Level 25 worker=2 between info and warning",
    ]


def test_every_line_of_a_multiline_record_keeps_its_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """journald reads each line on its own: a traceback's lines must not fall back to info."""
    stream = CountingStream()
    handler = logsink.TurnHandler(stream, stamped=False, priorities=True)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logsink, "_fast", handler)
    log = logging.getLogger("bbproxy.server")
    monkeypatch.setattr(log, "level", logging.INFO)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logsink.info(log, "two\nlines")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "<3>ERROR failed" and len(lines) > 3
    assert all(line.startswith("<3>") for line in lines[:-2]), lines
    assert lines[-2:] == ["<6>INFO two", "<6>lines"]


def test_no_prefix_unless_asked(sink: Sink) -> None:
    _, stream = sink()
    log = logging.getLogger("bbproxy.session")
    log.warning("conn=%d w", 1)
    logsink.info(log, "conn=%d i", 2)
    lines = [STAMP.sub("", line) for line in stream.getvalue().splitlines()]
    assert lines == ["WARNING worker=1 conn=1 w", "INFO worker=1 conn=2 i"]


def test_stderr_is_journal_only_for_the_stream_systemd_named(tmp_path: Path) -> None:
    """JOURNAL_STREAM is DEVICE:INODE of the journal stream; an inherited value that names
    another file (stderr redirected) or none at all means no prefixes."""
    path = tmp_path / "stderr"
    other = tmp_path / "other"
    with open(path, "w") as stream, open(other, "w") as redirected:
        status = os.fstat(stream.fileno())
        named = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert logsink.stderr_is_journal(stream, named)
        assert not logsink.stderr_is_journal(redirected, named)
        assert not logsink.stderr_is_journal(stream, {})
        assert not logsink.stderr_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
    assert not logsink.stderr_is_journal(io.StringIO(), named)  # no descriptor at all


def test_cli_logging_under_the_journal_has_priorities_and_no_stamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cli.setup_logging: the journal gets "<N>" and no timestamps; anything else stamps, no "<N>"."""
    from bbproxy import cli

    path = tmp_path / "stderr"
    handlers = logging.root.handlers[:]
    level = logging.root.level
    try:
        with open(path, "w") as stream:
            monkeypatch.setattr("sys.stderr", stream)
            status = os.fstat(stream.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
            cli.setup_logging("info")
            logging.getLogger("bbproxy").warning("journal %d", 1)
            monkeypatch.setenv("JOURNAL_STREAM", "1:1")  # inherited, names another stream
            cli.setup_logging("info")
            logging.getLogger("bbproxy").warning("terminal %d", 2)
            logging.root.handlers[0].flush()
    finally:
        logging.basicConfig(level=level, handlers=handlers, force=True)
        monkeypatch.setattr(logsink, "_fast", None)
    journal, terminal = path.read_text().splitlines()
    assert journal == "<4>WARNING journal 1"
    assert STAMP.match(terminal) and STAMP.sub("", terminal) == "WARNING terminal 2", terminal
