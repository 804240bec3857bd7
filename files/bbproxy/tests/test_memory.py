"""Memory handed back to the OS after a mass close (glibc malloc_trim), in-process."""

from __future__ import annotations

import asyncio
import logging

import pytest
import trustme

from bbproxy import memory, server
from bbproxy.tls import CertPair

from .helpers import until
from .test_relay import Backend, ca_and_pair, proxy, run, starttls_client

__all__ = ["ca_and_pair"]  # the module-scoped fixture, shared with test_relay


def test_trim_and_rss_work_on_this_libc() -> None:
    if not memory.available():
        pytest.skip("not glibc: malloc_trim is not there, trim() is a no-op")
    assert memory.rss_bytes() > 1 << 20
    assert memory.trim() is True


def test_a_mass_close_triggers_one_trim_and_small_churn_none(
    ca_and_pair: tuple[trustme.CA, CertPair],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Scaled down: 6 sessions stand for thousands, the delay for seconds.
    monkeypatch.setattr(server, "TRIM_MIN_DROP", 4)
    monkeypatch.setattr(server, "TRIM_DELAY", 0.05)
    caplog.set_level(logging.INFO, "bbproxy")
    ca, pair = ca_and_pair

    async def scenario() -> None:
        backend = Backend(echo=True)
        async with proxy(pair, await backend.start()) as (srv, port):
            clients = [await starttls_client(port, ca) for _ in range(6)]
            await until(lambda: len(srv.sessions) == 6, "six sessions")
            clients.pop()[1].close()  # one leaving is churn, not a mass close
            await until(lambda: len(srv.sessions) == 5, "one closed")
            await asyncio.sleep(0.2)  # longer than TRIM_DELAY: a trim would have run by now
            assert srv.trims == 0
            for _, writer in clients:
                writer.close()
            await until(lambda: srv.trims == 1, "one trim after the mass close")
            backend.close()

    run("asyncio", scenario)
    if memory.available():
        assert "sessions closed since the peak of 6: RSS" in caplog.text
