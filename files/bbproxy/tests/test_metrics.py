"""Prometheus metrics: counters read back from the exposition text, bounded labels, the endpoint.

prometheus-client is an optional extra; the tests that need it skip (visibly, with -ra)
when it is missing, and one test checks the module works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import re
import string
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bbproxy import __version__, metrics_http
from bbproxy.closing import Close, CloseReason
from bbproxy.expiry import CHAINS
from bbproxy.expiry_metrics import CertExpiry
from bbproxy.metric_labels import (
    CLOSE_REASONS,
    DURATION_BUCKETS,
    HANDSHAKE_FAILURE_REASONS,
    LEGACY_FAILED,
    LEGACY_REFUSED,
    LEGACY_SERVED,
    LEGACY_UNKNOWN,
    MAX_CIPHERS,
    MAX_LEGACY_SERIES,
    MAX_LISTENERS,
    OTHER,
    REFUSE_REASONS,
    ROUTES,
    handshake_failure_reason,
    refuse_reason,
    tls_version,
)
from bbproxy.metrics import (
    UNAVAILABLE_MESSAGE,
    LiveTotals,
    Metrics,
    MetricsUnavailable,
    NullMetrics,
    Recorder,
)
from bbproxy.metrics_http import MAX_SCRAPERS, render, serve
from bbproxy.x509 import KEY_TYPES, OTHER_KEY

from .helpers import run

LOOPS = ["asyncio", "uvloop"]
LISTENER = "starttls/0.0.0.0:5222"
DIRECT = "direct-tls/[::]:5223"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics() -> Metrics:
    pytest.importorskip("prometheus_client", reason="prometheus-client (bbproxy[metrics]) is not installed")
    return Metrics()


def scrape(metrics: Metrics) -> Samples:
    """Every sample of the text exposition, parsed back by the client library's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(render(metrics).decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key[1])[label] for key in samples if key[0] == name}


# -- counting ------------------------------------------------------------------------------


def test_a_fresh_registry_has_the_fixed_series(metrics: Metrics) -> None:
    samples = scrape(metrics)
    assert value(samples, "bbproxy_build_info", version=__version__) == 1
    assert value(samples, "bbproxy_connections_active") == 0
    assert value(samples, "bbproxy_backend_connect_failures_total") == 0
    assert value(samples, "bbproxy_relayed_bytes_total", direction="client_to_backend") == 0
    assert value(samples, "bbproxy_relayed_bytes_total", direction="backend_to_client") == 0
    assert value(samples, "bbproxy_handshake_duration_seconds_count") == 0
    assert value(samples, "process_open_fds") is not None  # the process collector is there
    assert not any(name.endswith("_created") for name, _ in samples)  # no doubled series


def test_counters_move_as_calls_are_made(metrics: Metrics) -> None:
    metrics.accepted(LISTENER)
    metrics.accepted(LISTENER)
    metrics.accepted(DIRECT)
    metrics.refused(LISTENER, "max-connections")
    metrics.handshake(LISTENER, "TLSv1", "ECDHE-RSA-AES256-SHA", 0.2)
    metrics.handshake(LISTENER, "TLSv1", "ECDHE-RSA-AES256-SHA", 0.3)
    metrics.handshake(DIRECT, "TLSv1.3", "TLS_AES_256_GCM_SHA384", 0.01)
    metrics.handshake_failed(LISTENER, "tls-failed: timeout")
    metrics.backend_failed()
    metrics.closed(Close.CLIENT_EOF, bytes_up=10, bytes_down=20)
    metrics.closed(Close.BACKEND_UNAVAILABLE)
    samples = scrape(metrics)
    assert value(samples, "bbproxy_connections_accepted_total", listener=LISTENER) == 2
    assert value(samples, "bbproxy_connections_accepted_total", listener=DIRECT) == 1
    assert (
        value(samples, "bbproxy_connections_refused_total", listener=LISTENER, reason="max-connections") == 1
    )
    tls10 = value(
        samples, "bbproxy_handshakes_total", listener=LISTENER, version="TLSv1", cipher="ECDHE-RSA-AES256-SHA"
    )
    assert tls10 == 2
    tls13 = value(
        samples,
        "bbproxy_handshakes_total",
        listener=DIRECT,
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
    )
    assert tls13 == 1
    assert value(samples, "bbproxy_handshake_failures_total", listener=LISTENER, reason="timeout") == 1
    assert value(samples, "bbproxy_backend_connect_failures_total") == 1
    assert value(samples, "bbproxy_connections_closed_total", reason="client-eof") == 1
    assert value(samples, "bbproxy_connections_closed_total", reason="backend-unavailable") == 1
    assert value(samples, "bbproxy_relayed_bytes_total", direction="client_to_backend") == 10
    assert value(samples, "bbproxy_relayed_bytes_total", direction="backend_to_client") == 20
    assert value(samples, "bbproxy_handshake_duration_seconds_count") == 3
    assert value(samples, "bbproxy_handshake_duration_seconds_sum") == pytest.approx(0.51)


def test_tls_versions_can_be_summed_by_version(metrics: Metrics) -> None:
    """The data behind `sum by (version) (rate(bbproxy_handshakes_total[1d]))`."""
    for version, cipher, listener in [
        ("TLSv1", "AES256-SHA", LISTENER),
        ("TLSv1", "ECDHE-RSA-AES128-SHA", DIRECT),
        ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", LISTENER),
        ("TLSv1", "AES256-SHA", LISTENER),
    ]:
        metrics.handshake(listener, version, cipher, 0.05)
    by_version: dict[str, float] = {}
    for (name, labels), count in scrape(metrics).items():
        if name == "bbproxy_handshakes_total":
            version = dict(labels)["version"]
            by_version[version] = by_version.get(version, 0) + count
    assert by_version == {"TLSv1": 3, "TLSv1.2": 1}


def test_handshake_duration_buckets(metrics: Metrics) -> None:
    for seconds in (0.0005, 0.001, 0.0011, 0.02, 29.9, 30.0, 45.0, -1.0, float("nan")):
        metrics.handshake(LISTENER, "TLSv1.2", "AES128-SHA", seconds)
    samples = scrape(metrics)

    def bucket(le: str) -> float | None:
        return value(samples, "bbproxy_handshake_duration_seconds_bucket", le=le)

    # "le" is "less than or equal": 0.001 falls in the 0.001 bucket; -1 and NaN count as 0.
    assert bucket("0.001") == 4  # -1, NaN, 0.0005, 0.001
    assert bucket("0.0025") == 5
    assert bucket("0.01") == 5
    assert bucket("0.025") == 6
    assert bucket("10.0") == 6
    assert bucket("30.0") == 8
    assert bucket("+Inf") == 9
    assert value(samples, "bbproxy_handshake_duration_seconds_count") == 9
    assert value(samples, "bbproxy_handshake_duration_seconds_sum") == pytest.approx(
        0.0005 + 0.001 + 0.0011 + 0.02 + 29.9 + 30.0 + 45.0
    )
    les = label_values(samples, "bbproxy_handshake_duration_seconds_bucket", "le")
    assert les == {repr(b) for b in DURATION_BUCKETS} | {"+Inf"}
    assert DURATION_BUCKETS[0] == 0.001 and DURATION_BUCKETS[-1] == 30.0


def test_live_source_is_added_to_closed_totals(metrics: Metrics) -> None:
    metrics.closed(Close.CLIENT_EOF, bytes_up=100, bytes_down=1000)
    metrics.closed(Close.CLIENT_CLOSE_NOTIFY, bytes_up=1, bytes_down=2)
    live = LiveTotals(active=2, bytes_up=5, bytes_down=7)
    metrics.set_live_source(lambda: live)
    samples = scrape(metrics)
    assert value(samples, "bbproxy_connections_active") == 2
    assert value(samples, "bbproxy_relayed_bytes_total", direction="client_to_backend") == 106
    assert value(samples, "bbproxy_relayed_bytes_total", direction="backend_to_client") == 1009


def test_bytes_stay_monotonic_when_a_session_closes(metrics: Metrics) -> None:
    # One open session with 300/400 bytes so far, then it closes and reports the same totals.
    live = [LiveTotals(active=1, bytes_up=300, bytes_down=400)]
    metrics.set_live_source(lambda: live[0])
    before = scrape(metrics)
    live[0] = LiveTotals()
    metrics.closed(Close.BACKEND_CLOSED, bytes_up=300, bytes_down=400)
    after = scrape(metrics)
    for direction in ("client_to_backend", "backend_to_client"):
        name = "bbproxy_relayed_bytes_total"
        assert value(after, name, direction=direction) == value(before, name, direction=direction)
    assert value(after, "bbproxy_connections_active") == 0
    metrics.closed(Close.CLIENT_EOF, bytes_up=-5, bytes_down=-5)  # never makes a counter go down
    assert value(scrape(metrics), "bbproxy_relayed_bytes_total", direction="client_to_backend") == 300


def test_certificate_gauges_hold_the_last_dates_given(metrics: Metrics) -> None:
    leaf = "bbproxy_certificate_expiry_timestamp_seconds"
    link = "bbproxy_certificate_chain_expiry_timestamp_seconds"
    assert not [key for key in scrape(metrics) if key[0] in (leaf, link)]  # nothing before the first load
    metrics.certificates(
        (
            CertExpiry("default", "", "rsa", 1_900_000_000.0, 1_800_000_000.0),
            CertExpiry("domain", "chat.example.net", "ecdsa", 1_850_000_000.0, 1_850_000_000.0),
            CertExpiry("legacy", "", "rsa", 1_830_000_000.0, 1_832_976_000.0),
        )
    )
    samples = scrape(metrics)
    assert value(samples, leaf, chain="default", domain="", key_type="rsa") == 1_900_000_000
    assert value(samples, link, chain="default", domain="", key_type="rsa") == 1_800_000_000
    assert value(samples, leaf, chain="domain", domain="chat.example.net", key_type="ecdsa") == 1_850_000_000
    assert value(samples, link, chain="legacy", domain="", key_type="rsa") == 1_832_976_000
    # A reload replaces the set: a chain no longer served loses its series.
    metrics.certificates((CertExpiry("default", "", "rsa", 1_950_000_000.0, 1_950_000_000.0),))
    samples = scrape(metrics)
    assert value(samples, leaf, chain="default", domain="", key_type="rsa") == 1_950_000_000
    assert {key for key in samples if key[0] == leaf} == {
        (leaf, frozenset({("chain", "default"), ("domain", ""), ("key_type", "rsa")}))
    }


def test_each_metrics_has_its_own_registry() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import REGISTRY

    first, second = Metrics(), Metrics()
    first.accepted(LISTENER)
    assert value(scrape(first), "bbproxy_connections_accepted_total", listener=LISTENER) == 1
    assert value(scrape(second), "bbproxy_connections_accepted_total", listener=LISTENER) is None
    assert REGISTRY.get_sample_value("bbproxy_connections_accepted_total", {"listener": LISTENER}) is None


# -- bounded labels ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "logged"),
    [
        (CloseReason(Close.CLIENT_EOF), "client-eof"),
        (
            CloseReason(Close.CLIENT_ERROR, "connection reset by peer"),
            "client-error: connection reset by peer",
        ),
        (CloseReason(Close.TLS_FAILED, "WRONG_VERSION_NUMBER"), "tls-failed: WRONG_VERSION_NUMBER"),
        (CloseReason(Close.BACKEND_SILENT, "no answer in 30s"), "backend-silent: no answer in 30s"),
        (CloseReason(Close.REFUSED, "max-connections"), "refused-max-connections"),
        (CloseReason.of_negotiation("not-well-formed"), "not-well-formed"),
        (CloseReason.of_negotiation("host-unknown"), "host-unknown"),
        (CloseReason.of_negotiation("starttls-injection"), "starttls-injection"),
    ],
)
def test_close_reasons_are_logged_as_before(reason: CloseReason, logged: str) -> None:
    """The log line's close=... text did not change with the enum (log readers, bbproxy census)."""
    assert str(reason) == logged


def test_every_close_reason_has_its_own_label(metrics: Metrics) -> None:
    """Typed from where a session ends to the metric: no reason can fall into 'other' (the
    string parser this replaces counted 'backend-silent' as 'other')."""
    for kind in Close:
        metrics.closed(kind)
    closed = label_values(scrape(metrics), "bbproxy_connections_closed_total", "reason")
    assert closed == CLOSE_REASONS == {kind.value for kind in Close}
    assert CloseReason.of_negotiation("policy-violation").kind is Close.STREAM_ERROR


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("timeout", "timeout"),
        ("tls-failed: timeout", "timeout"),
        ("UNEXPECTED_EOF_WHILE_READING", "eof"),
        ("client-eof", "eof"),
        ("connection reset by peer", "eof"),
        ("UNSUPPORTED_PROTOCOL", "protocol-version"),
        ("tls-failed: VERSION_TOO_LOW", "protocol-version"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", "protocol-version"),
        ("NO_SHARED_CIPHER", "no-shared-cipher"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "no-shared-cipher"),
        ("TLSV1_ALERT_UNKNOWN_CA", "certificate-rejected"),
        ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", "certificate-rejected"),
        ("WRONG_VERSION_NUMBER", "not-tls"),
        ("HTTP_REQUEST", "not-tls"),
        ("TLSV1_ALERT_DECODE_ERROR", "client-alert"),
        ("SSLV3_ALERT_UNEXPECTED_MESSAGE", "client-alert"),
        ("SOMETHING_ELSE", "other"),
        ("", "other"),
    ],
)
def test_handshake_failure_reasons(raw: str, expected: str) -> None:
    assert handshake_failure_reason(raw) == expected
    assert expected in HANDSHAKE_FAILURE_REASONS | {"other"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("max-connections", "max-connections"),
        ("shutting-down", "shutting-down"),
        ("per-ip-connections", "per-ip-connections"),
        ("per-ip-rate", "per-ip-rate"),
        ("refused-per-ip-rate", "per-ip-rate"),
        ("per-ip-rate: 31/min", "per-ip-rate"),
        ("nope", "other"),
    ],
)
def test_refuse_reasons(raw: str, expected: str) -> None:
    assert refuse_reason(raw) == expected


def test_every_vocabulary_word_maps_to_itself() -> None:
    for reason in REFUSE_REASONS:
        assert refuse_reason(reason) == reason
    for version in ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"):
        assert tls_version(version) == version
    assert tls_version("SSLv3") == tls_version("-") == tls_version("TLSv1.4") == "other"


def random_reasons(count: int, seed: int) -> list[str]:
    """Distinct raw reasons: real prefixes with odd details, and junk."""
    rng = random.Random(seed)
    prefixes = [*CLOSE_REASONS, *REFUSE_REASONS, "tls-failed", "refused-x", "policy-violation", ""]
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \t\n\u00e9\u2028"
    out: set[str] = set()
    while len(out) < count:
        junk = "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
        out.add(f"{rng.choice(prefixes)}: {junk}" if rng.random() < 0.5 else junk)
    return sorted(out)


def test_ten_thousand_raw_reasons_make_few_label_values(metrics: Metrics) -> None:
    for raw in random_reasons(10_000, seed=6):
        metrics.refused(LISTENER, raw)
        metrics.handshake_failed(LISTENER, raw)
        metrics.handshake(LISTENER, raw, "AES128-SHA", 0.01)
    samples = scrape(metrics)
    refused = label_values(samples, "bbproxy_connections_refused_total", "reason")
    failures = label_values(samples, "bbproxy_handshake_failures_total", "reason")
    versions = label_values(samples, "bbproxy_handshakes_total", "version")
    assert len(refused) <= 20 and refused <= REFUSE_REASONS | {"other"}
    assert len(failures) <= 20 and failures <= HANDSHAKE_FAILURE_REASONS | {"other"}
    assert versions == {"other"}


def test_listeners_and_ciphers_are_capped(metrics: Metrics) -> None:
    for i in range(1000):
        metrics.accepted(f"starttls/127.0.0.{i % 250}:{5000 + i}")
        metrics.handshake(LISTENER, "TLSv1.2", f"CIPHER-{i}", 0.01)
    metrics.handshake(LISTENER, "TLSv1.2", 'bad"cipher\n', 0.01)
    samples = scrape(metrics)
    listeners = label_values(samples, "bbproxy_connections_accepted_total", "listener")
    ciphers = label_values(samples, "bbproxy_handshakes_total", "cipher")
    assert len(listeners) <= MAX_LISTENERS + 1 and "other" in listeners
    assert len(ciphers) == MAX_CIPHERS + 1 and "other" in ciphers
    assert sum(v for (name, _), v in samples.items() if name == "bbproxy_connections_accepted_total") == 1000


def test_the_recorder_guards_the_legacy_families_it_is_given(metrics: Metrics) -> None:
    """The server bounds the families (test_bounded.py); the recorder still caps what it is handed."""
    for i in range(MAX_LEGACY_SERIES + 100):
        metrics.legacy_client(f"TLSv1/unknown:{i:036x}", LEGACY_SERVED)
    metrics.legacy_client(LEGACY_UNKNOWN, LEGACY_REFUSED)
    samples = scrape(metrics)
    families = label_values(samples, "bbproxy_legacy_clients_total", "family")
    assert len(families) == MAX_LEGACY_SERIES + 2 and {"other", LEGACY_UNKNOWN} <= families
    assert value(samples, "bbproxy_legacy_clients_total", family="other", outcome=LEGACY_SERVED) == 100
    assert value(samples, "bbproxy_legacy_clients_total", family=LEGACY_UNKNOWN, outcome=LEGACY_REFUSED) == 1


# -- the interface -------------------------------------------------------------------------


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_null_metrics_has_exactly_the_methods_of_metrics() -> None:
    real, null = public_methods(Metrics), public_methods(NullMetrics)
    assert real == null == public_methods(Recorder)  # mypy checks each against Recorder too
    assert Recorder in Metrics.__mro__ and Recorder in NullMetrics.__mro__
    assert {"accepted", "refused", "handshake", "handshake_failed", "backend_failed", "closed"} <= set(real)
    assert "set_live_source" in real


def test_null_metrics_does_nothing() -> None:
    null = NullMetrics()
    null.accepted(LISTENER)
    null.refused(LISTENER, "max-connections")
    null.handshake(LISTENER, "TLSv1", "AES256-SHA", 0.1)
    null.handshake_failed(LISTENER, "timeout")
    null.backend_failed()
    null.closed(Close.CLIENT_EOF, bytes_up=1, bytes_down=2)
    null.set_live_source(LiveTotals)
    null.certificates((CertExpiry("default", "", "rsa", 1.0, 1.0),))
    assert not hasattr(null, "__dict__")  # no state to grow


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_module_works_without_prometheus_client() -> None:
    result = run_python(
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if it were not installed\n"
        "from bbproxy import metrics\n"
        "from bbproxy.closing import Close\n"
        "null = metrics.NullMetrics()\n"
        "null.accepted('x'); null.closed(Close.CLIENT_EOF, 1, 2)\n"
        "try:\n"
        "    metrics.Metrics()\n"
        "except metrics.MetricsUnavailable as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == UNAVAILABLE_MESSAGE + "\n"
    assert "\n" not in str(MetricsUnavailable())
    assert str(MetricsUnavailable()) == "metrics need prometheus-client: pip install 'bbproxy[metrics]'"


def test_importing_the_module_does_not_import_prometheus_client() -> None:
    # Metrics are off by default: the proxy should not pay for the library's import then.
    result = run_python("import sys\nimport bbproxy.metrics\nprint('prometheus_client' in sys.modules)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "False\n"


# -- the HTTP endpoint ---------------------------------------------------------------------


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


async def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` and read to EOF; a reset (the server closed on unread bytes) reads as b""."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()


async def with_server(metrics: Metrics, body: Callable[[int], Awaitable[None]]) -> None:
    server = await serve(metrics, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        await body(port)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_endpoint_serves_metrics_and_404s_elsewhere(loop_name: str, metrics: Metrics) -> None:
    metrics.handshake(LISTENER, "TLSv1", "ECDHE-RSA-AES256-SHA", 0.1)
    metrics.set_live_source(lambda: LiveTotals(active=4, bytes_up=1, bytes_down=2))

    async def body(port: int) -> None:
        base = f"http://127.0.0.1:{port}"
        status, headers, text = await asyncio.to_thread(http_get, base + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert int(headers["Content-Length"]) == len(text)
        assert (
            b'bbproxy_handshakes_total{cipher="ECDHE-RSA-AES256-SHA",listener="starttls/0.0.0.0:5222",'
            b'version="TLSv1"} 1.0' in text
        )
        assert b"bbproxy_connections_active 4.0" in text
        status, _, _ = await asyncio.to_thread(http_get, base + "/metrics?name[]=x")
        assert status == 200
        for path in ("/", "/metric", "/metrics/", "/favicon.ico"):
            status, _, text = await asyncio.to_thread(http_get, base + path)
            assert status == 404, path
        status, headers, text = await asyncio.to_thread(http_get, base + "/metrics", "HEAD")
        assert status == 200 and text == b"" and int(headers["Content-Length"]) > 0
        status, headers, _ = await asyncio.to_thread(http_get, base + "/metrics", "POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"

    run(loop_name, lambda: with_server(metrics, body))


@pytest.mark.parametrize("loop_name", LOOPS)
def test_endpoint_bounds_requests(loop_name: str, metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_http, "REQUEST_TIMEOUT", 1.0)

    async def body(port: int) -> None:
        answer = await raw_request(port, b"GARBAGE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ")
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await raw_request(port, b"GET /metrics HTTP/1.1\r\n")  # never finishes its head
        assert answer == b"" and loop.time() - started < 5
        # A full house: the next connection is closed at once, and the others still time out.
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_SCRAPERS)]
        try:
            await asyncio.sleep(0.2)  # the server shares this loop: its handlers have started
            assert await raw_request(port, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
        finally:
            for _, writer in idle:
                writer.close()
                await writer.wait_closed()
        for _ in range(50):  # the slots free up as the server sees the closes
            answer = await raw_request(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            if answer:
                break
            await asyncio.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200 ")

    run(loop_name, lambda: with_server(metrics, body))


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_failing_live_source_gives_500_not_a_crash(
    loop_name: str, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> LiveTotals:
        raise RuntimeError("boom")

    metrics.set_live_source(broken)

    async def body(port: int) -> None:
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 500
        metrics.set_live_source(LiveTotals)
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200

    run(loop_name, lambda: with_server(metrics, body))
    assert "metrics scrape failed: RuntimeError: boom" in caplog.text


DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def test_the_doc_names_every_metric_and_label_value(metrics: Metrics) -> None:
    """docs/metrics.md is the operators' list: it must not drift from what is exposed."""
    from prometheus_client.parser import text_string_to_metric_families

    doc = DOC.read_text(encoding="utf-8")
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(render(metrics).decode())
        if family.name.startswith("bbproxy_")
    }
    assert len(exposed) == 14
    for name in exposed:
        assert f"| `{name}` |" in doc or f"| `{name}{{" in doc, name
    # Metric names, not the role's variables (bbproxy_metrics_listen, ...) the doc also names.
    named = {name for name in re.findall(r"\bbbproxy_[a-z_]+", doc) if not name.startswith("bbproxy_metrics")}
    histogram = "bbproxy_handshake_duration_seconds"
    assert named - exposed <= {histogram + "_bucket"}, "the doc names a metric that does not exist"
    words = REFUSE_REASONS | HANDSHAKE_FAILURE_REASONS | ROUTES | CLOSE_REASONS
    for word in words | {
        LEGACY_SERVED,
        LEGACY_REFUSED,
        LEGACY_FAILED,
        LEGACY_UNKNOWN,
        OTHER,
        "client_to_backend",
        "backend_to_client",
    }:
        assert f"`{word}`" in doc, word


def test_the_doc_names_every_certificate_label_value() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for word in CHAINS | set(KEY_TYPES.values()) | {OTHER_KEY}:
        assert f"`{word}`" in doc, word
