"""Memory handed back to the OS after a mass close (glibc malloc_trim), in-process; relay buffers
kept for reuse in between (mallopt), in a child process."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

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


_CHURN = """
import resource, sys
from bbproxy import memory
if sys.argv[1] == "tuned" and not memory.tune_for_relay():
    sys.exit(3)
def relay_read():  # what one busy read does: a few 256 KiB buffers, freed a moment later
    buffers = [b"x" * (256 * 1024) for _ in range(8)]
    del buffers
relay_read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    relay_read()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults_of_relay_reads(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode == 3:
        pytest.skip("this libc has no mallopt (not glibc)")
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_tuned_malloc_reuses_relay_buffers_instead_of_faulting_them_in_again() -> None:
    if not memory.available():
        pytest.skip("glibc only")
    untuned = _page_faults_of_relay_reads("plain")
    tuned = _page_faults_of_relay_reads("tuned")
    # 200 reads x 2 MiB: glibc's defaults give most of it back to the kernel after each read.
    assert untuned > 200 * 64, f"the default malloc did not churn here ({untuned} faults)"
    assert tuned < untuned / 20, f"{tuned} page faults tuned against {untuned} untuned"


def test_operator_malloc_tunables_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert memory.tune_for_relay() is False
