"""Log lines: the sessions' direct path writes what logging would, and one loop turn's lines
leave in one write."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Callable, Iterator

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
