"""The TLS engine in memory (sans-IO): what passes through it arrives whole and in order, and
neither memory BIO is given more than a slice at a time.

An ``ssl.MemoryBIO`` keeps its buffer at the biggest size ever written to it, so what the engine
puts into a BIO at once is what an idle session holds until it ends (tlsengine.SMALL_SLICE for
stanzas, tlsengine.BIO_SLICE once a burst passes tlsengine.BULK; the memory itself is measured by
bench/session_memory.py --stanza-size and bench/socket_bio.py --bursts). The client is Python's own
TLS over two more memory BIOs, with bbproxy's legacy and modern contexts on the server side.
"""

from __future__ import annotations

import contextlib
import os
import random
import ssl
from pathlib import Path

import pytest
import trustme

from bbproxy import tlsengine
from bbproxy.tls import CertPair, Policy, build_context
from bbproxy.tlsengine import BIO_SLICE, BULK, BURST_GAP, TlsEngine

from .kit import DOMAIN, client_context

BURST = 256 * 1024  # one read of the proxy's receive buffer
STANZAS = 32 * 1024  # a vCard with its avatar, a roster: what XMPP sends at once
# What a memory BIO may hold at once for stanza-sized traffic: a record that fits one TCP segment
# (with TLS 1.0's empty fragment before it), no more than the server's first flight already made it.
SEGMENT = 1500


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert(DOMAIN, key_type=trustme.KeyType.ECDSA)
    directory = tmp_path_factory.mktemp("engine")
    cert, key = directory / "leaf.crt", directory / "leaf.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return CertPair(Path(cert), Path(key))


class Client:
    """A TLS client in memory, talking to one TlsEngine."""

    def __init__(self, version: str) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = client_context(version, None)
        self.sslobj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=DOMAIN)
        self.done = False

    def step(self) -> bytes:
        """Go on with the handshake; what the client has to send."""
        try:
            self.sslobj.do_handshake()
            self.done = True
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def send(self, data: bytes) -> bytes:
        self.sslobj.write(data)
        return self.outgoing.read()

    def receive(self, records: bytes) -> bytes:
        self.incoming.write(records)
        plain = bytearray()
        while True:
            try:
                chunk = self.sslobj.read(65536)
            except ssl.SSLWantReadError:
                return bytes(plain)
            if not chunk:
                return bytes(plain)
            plain += chunk


def connected(pair: CertPair, version: str) -> tuple[TlsEngine, Client]:
    policy = Policy.LEGACY if version in ("1.0", "1.1") else Policy.MODERN
    client = Client(version)
    engine = TlsEngine(build_context(pair, policy, "1.0"), client.step())
    for _ in range(4):
        done = engine.handshake()
        client.incoming.write(engine.data_to_send())
        engine.receive(client.step())
        if done and client.done:
            return engine, client
    raise AssertionError("no handshake")


class Clock:
    """tlsengine's monotonic(), stopped: time passes only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(tlsengine, "monotonic", clock)
    return clock


class HeldIncoming:
    """Stands in for an engine's incoming BIO on the engine's side (OpenSSL keeps the real one)
    and notes what the BIO holds after each write: the size it keeps for the session's life."""

    def __init__(self, engine: TlsEngine) -> None:
        self.bio = engine._incoming
        self.held: list[int] = []
        engine._incoming = self  # type: ignore[assignment]

    def write(self, data: bytes | memoryview) -> int:
        written = self.bio.write(data)
        self.held.append(self.bio.pending)
        return written

    @property
    def pending(self) -> int:
        return self.bio.pending


def drain(engine: TlsEngine) -> bytes:
    """Everything the engine can decrypt now, checking the incoming BIO's bound on each read."""
    plain = bytearray()
    while (chunk := engine.read()) is not None:
        assert engine._incoming.pending <= BIO_SLICE
        if not chunk:
            break
        plain += chunk
    return bytes(plain)


@pytest.mark.parametrize("version", ["1.0", "1.2", "1.3"])
def test_a_burst_from_the_client_arrives_whole_and_the_bio_gets_a_slice_at_a_time(
    pair: CertPair, version: str
) -> None:
    engine, client = connected(pair, version)
    payload = os.urandom(3 * BURST + 12345)
    records = client.send(payload)
    assert len(records) > BURST  # more than one read's worth, as the proxy reads it
    received = bytearray()
    for start in range(0, len(records), BURST):
        engine.receive(memoryview(records)[start : start + BURST])
        assert engine._incoming.pending <= BIO_SLICE
        received += drain(engine)
    assert bytes(received) == payload


def test_pieces_of_any_size_in_any_order_of_calls_arrive_whole(pair: CertPair) -> None:
    """Receives that pile up before anything is read (the backend still connecting), pieces from
    one byte to several slices, reads in between or not."""
    engine, client = connected(pair, "1.0")
    rng = random.Random(19)
    payload = os.urandom(2 * BURST)
    records = client.send(payload)
    received = bytearray()
    at = 0
    while at < len(records):
        size = rng.choice([1, 5, 300, BIO_SLICE - 1, BIO_SLICE, BIO_SLICE + 1, 3 * BIO_SLICE + 7, BURST])
        engine.receive(records[at : at + size])
        at += size
        assert engine._incoming.pending <= BIO_SLICE
        if rng.random() < 0.5:
            received += drain(engine)
    received += drain(engine)
    assert bytes(received) == payload


def test_a_burst_that_comes_with_the_clients_last_flight_is_read_after_the_handshake(pair: CertPair) -> None:
    """TLS 1.3: the client's Finished and its first data can leave together."""
    client = Client("1.3")
    engine = TlsEngine(build_context(pair, Policy.MODERN, "1.0"), client.step())
    assert not engine.handshake()
    client.incoming.write(engine.data_to_send())
    last_flight = client.step()  # Finished
    assert client.done
    payload = os.urandom(BURST)
    engine.receive(last_flight + client.send(payload))  # one read: the flight and the burst
    assert engine._incoming.pending <= BIO_SLICE
    assert engine.handshake()
    assert drain(engine) == payload


def test_close_notify_after_a_burst_comes_after_all_of_its_data(pair: CertPair) -> None:
    engine, client = connected(pair, "1.0")
    payload = os.urandom(BURST)
    records = client.send(payload)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.sslobj.unwrap()  # queues the close_notify
    engine.receive(records + client.outgoing.read())
    received = bytearray()
    while (chunk := engine.read()) is not None:
        if not chunk:
            break
        received += chunk
    assert chunk == b""  # the close_notify, and only after every byte before it
    assert bytes(received) == payload


@pytest.mark.parametrize("version", ["1.0", "1.2", "1.3"])
def test_a_burst_to_the_client_leaves_the_outgoing_bio_at_most_a_slice(pair: CertPair, version: str) -> None:
    engine, client = connected(pair, version)
    first, burst = b"<presence/>", os.urandom(BURST + 777)
    engine.write(first)  # queued before the burst: it must leave first
    engine.write(memoryview(burst))
    # Records are taken out of the BIO after each slice: what is left in it is one slice's.
    assert engine._outgoing.pending <= BIO_SLICE + 1024
    records = engine.records_to_send()  # the pieces as taken out, for one writev
    assert len(records) > 1
    assert client.receive(b"".join(records)) == first + burst
    assert engine.records_to_send() == []
    assert engine.data_to_send() == b""
    engine.write(b"<iq/>")  # and after a burst, small writes as before
    assert client.receive(engine.data_to_send()) == b"<iq/>"


@pytest.mark.parametrize("version", ["1.0", "1.2", "1.3"])
def test_a_stanza_sized_burst_goes_through_both_bios_in_small_slices(
    pair: CertPair, version: str, clock: Clock
) -> None:
    """A 32 KiB stanza each way: neither BIO ever holds more than a small slice (and its record)."""
    engine, client = connected(pair, version)
    down = os.urandom(STANZAS)
    engine.write(down)
    pieces = engine.records_to_send()  # each piece: what the outgoing BIO held at once
    assert max(map(len, pieces)) <= SEGMENT
    assert client.receive(b"".join(pieces)) == down
    incoming = HeldIncoming(engine)
    up = os.urandom(STANZAS)
    engine.receive(client.send(up))  # the client's 16 KiB records, in one read
    assert drain(engine) == up
    assert max(incoming.held) <= SEGMENT


def test_a_bulk_transfer_goes_in_full_slices_once_past_bulk(pair: CertPair, clock: Clock) -> None:
    """No pause: past BULK bytes one way, that way's slices are BIO_SLICE (the bulk relay's CPU)."""
    engine, client = connected(pair, "1.0")
    payload = os.urandom(BULK + 4 * BIO_SLICE)
    read = 65536  # one read of either side
    sizes: list[int] = []
    received = bytearray()
    for start in range(0, len(payload), read):  # Prosody's bytes, read after read
        engine.write(payload[start : start + read])
        pieces = engine.records_to_send()
        sizes += map(len, pieces)
        received += client.receive(b"".join(pieces))
    assert bytes(received) == payload
    # The reads before the one that takes the burst past BULK: small records.
    before_bulk = (BULK - read) // SEGMENT
    assert sum(1 for size in sizes if size <= SEGMENT) >= before_bulk
    assert max(sizes) > BIO_SLICE  # then whole slices
    incoming = HeldIncoming(engine)
    got = bytearray()
    records = client.send(payload)
    for start in range(0, len(records), read):  # the client's, read after read
        engine.receive(records[start : start + read])
        got += drain(engine)
    assert bytes(got) == payload
    assert max(incoming.held[:before_bulk]) <= SEGMENT
    assert max(incoming.held) > BIO_SLICE // 2


def test_a_pause_ends_a_burst(pair: CertPair, clock: Clock) -> None:
    """Bulk ends with a pause of BURST_GAP: the next stanza goes in small slices again."""
    engine, client = connected(pair, "1.0")
    engine.write(os.urandom(BULK + 1))
    client.receive(engine.data_to_send())
    clock.now += BURST_GAP / 2  # not a pause: still the same burst
    engine.write(os.urandom(STANZAS))
    pieces = engine.records_to_send()
    assert max(map(len, pieces)) > BIO_SLICE
    client.receive(b"".join(pieces))
    clock.now += BURST_GAP * 2
    stanza = os.urandom(STANZAS)
    engine.write(stanza)
    pieces = engine.records_to_send()
    assert max(map(len, pieces)) <= SEGMENT
    assert client.receive(b"".join(pieces)) == stanza
