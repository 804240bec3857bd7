"""Hostile input for the torture run: a seeded grammar + mutation generator, checked two ways.

In process (fast, most of the cases): every pre-TLS dialogue goes through the proxy's sans-IO
``bbproxy.negotiation.Negotiation`` twice, in one piece and in random chunks, and every
ClientHello variant through ``bbproxy.clienthello.ClientHelloParser`` in random chunks. Any
exception other than the parser's own ``ClientHelloError``, a chunking that changes the
outcome, a close without a stream error, or input past the byte cap still being buffered is a
finding.

Over the network (a share of a few thousand): the same kind of cases sent to the running
proxy, each expected to end (stream error or close) within a bound, and the stream error must
be the one the in-process parser predicts. Plus the named attacks of issue #9.

Same seed, same cases: ``--seed`` makes a finding reproducible.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bbproxy.clienthello import MAX_BYTES as HELLO_MAX_BYTES
from bbproxy.clienthello import ClientHello, ClientHelloError, ClientHelloParser
from bbproxy.negotiation import PROCEED, Action, Negotiation, Outcome

from ..kit import DOMAIN, STARTTLS, STREAM_ERROR_RE, STREAM_NS, recv_until_closed, stream_header

MAX_PRE_TLS = 8192


# --------------------------------------------------------------------------- pre-TLS grammar


def _attr_value(rng: random.Random) -> str:
    return rng.choice(
        [
            DOMAIN,
            DOMAIN.upper() + ".",
            "other.test",
            "",
            "a" * rng.choice([1, 100, 1000, 9000]),
            "&amp;&lt;&#x41;&#65;",
            "&lol;",
            "&#0;",
            "&#x110000;",
            "\x00",
            "caf\u00e9",
            "\U0001f600",
            "'\"",
        ]
    )


def _header(rng: random.Random) -> bytes:
    prolog = rng.choice(
        ["<?xml version='1.0'?>", "", "<?xml version='1.0' encoding='UTF-8'?>", "\ufeff", "  "]
    )
    qname = rng.choice(["stream:stream", "stream:stream", "stream", "x:stream", "stream:features"])
    attrs = [STREAM_NS] if rng.random() < 0.85 else []
    if rng.random() < 0.9:
        quote = rng.choice("'\"")
        attrs.append(f"to={quote}{_attr_value(rng)}{quote}")
    if rng.random() < 0.8:
        attrs.append(f"version='{rng.choice(['1.0', '1.0', '2.0', '0.9', 'x', '1.0.0'])}'")
    for _ in range(rng.choice([0, 0, 1, 3, 50])):
        attrs.append(f"a{rng.randrange(1000)}='{_attr_value(rng)}'")
    if rng.random() < 0.05:
        attrs.append("to='a' to='b'")
    end = rng.choice([">", ">", "/>", " >", ""])
    return f"{prolog}<{qname} {' '.join(attrs)}{end}".encode("utf-8", "surrogatepass")


def _element(rng: random.Random, depth: int = 0) -> bytes:
    pick = rng.random()
    if pick < 0.35:
        return STARTTLS
    if pick < 0.45:
        return rng.choice(
            [
                b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'></starttls>",
                b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>",
                b"<starttls/>",
                b"<starttls xmlns='jabber:client'/>",
                b"<tls:starttls xmlns:tls='urn:ietf:params:xml:ns:xmpp-tls'/>",
            ]
        )
    if pick < 0.55:
        return b"</stream:stream>"
    if pick < 0.65:
        return rng.choice(
            [
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
                b"<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>",
                b"<message to='x@y'><body>hi</body></message>",
                b"<presence/>",
            ]
        )
    if pick < 0.72:
        n = rng.choice([2, 10, 100, 5000])
        return b"<a>" * n + b"</a>" * rng.choice([0, n])
    if pick < 0.78:
        return rng.choice(
            [
                b"<!-- comment -->",
                b"<?pi data?>",
                b"<![CDATA[x]]>",
                b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]>",
                b"&amp;",
                b"text",
            ]
        )
    if pick < 0.84:
        return b" " * rng.choice([1, 10, 1000, 9000])
    if pick < 0.9:
        return bytes([0x16, 0x03, 0x01, 0x00, 0x40]) + rng.randbytes(0x40)  # a TLS record, early
    return rng.randbytes(rng.choice([1, 5, 50, 500]))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 5])):
        if not buf:
            buf += rng.randbytes(3)
        op = rng.random()
        pos = rng.randrange(len(buf) + 1)
        if op < 0.3 and pos < len(buf):
            buf[pos] = rng.randrange(256)
        elif op < 0.5:
            buf[pos:pos] = bytes([rng.choice(b"<>/'\"=&;:\x00\xff\xc3 ?!-[]")])
        elif op < 0.7 and pos < len(buf):
            del buf[pos : pos + rng.randrange(1, 8)]
        elif op < 0.85:
            del buf[pos:]
        else:
            a = rng.randrange(len(buf) + 1)
            buf[pos:pos] = buf[a : a + rng.randrange(1, 64)]
    return bytes(buf)


def pre_tls_case(rng: random.Random) -> bytes:
    """One client's whole pre-TLS input: mostly grammar-shaped, often mutated."""
    parts = [_header(rng)] if rng.random() < 0.95 else []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        parts.append(_element(rng))
    data = b"".join(parts)
    if rng.random() < 0.4:
        data = _mutate(rng, data)
    return data


def chunked(rng: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.choice([1, 2, 5, 20]))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# --------------------------------------------------------------------------- in-process checks


@dataclass
class Findings:
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # broken invariants: counted as lost
    notes: list[str] = field(default_factory=list)  # both answers are stream errors, but differ

    def add(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(text)


def run_negotiation(chunks: list[bytes]) -> tuple[str, bytes, int]:
    """Feed ``chunks``; returns (outcome label, bytes sent back, bytes consumed)."""
    negotiation = Negotiation({DOMAIN}, MAX_PRE_TLS, stream_id_factory=lambda: "fixed")
    sent = bytearray()
    consumed = 0
    outcome = Outcome(Action.CONTINUE)
    for chunk in chunks:
        outcome = negotiation.receive_data(chunk)
        consumed += len(chunk)
        sent += outcome.send
        if outcome.action is not Action.CONTINUE:
            break
    if outcome.action is Action.STARTTLS:
        return "starttls", bytes(sent), consumed
    if outcome.action is Action.CLOSE:
        match = STREAM_ERROR_RE.search(sent)
        return (f"stream-error:{match.group(1).decode()}" if match else "stream-end"), bytes(sent), consumed
    return "need-data", bytes(sent), consumed


def predict(data: bytes) -> str:
    """What the proxy must answer to ``data`` sent in one piece, then EOF."""
    return run_negotiation([data])[0]


def check_pre_tls(data: bytes, rng: random.Random, findings: Findings) -> str:
    findings.cases += 1
    try:
        whole, sent, _ = run_negotiation([data])
        pieces = chunked(rng, data)
        split, sent_split, consumed = run_negotiation(pieces)
    except Exception as exc:  # any exception here is a finding
        findings.add(f"pre-TLS exception {type(exc).__name__}: {exc} for {data[:120]!r}")
        return "exception"
    findings.outcomes[whole] += 1
    # Bytes pipelined behind <starttls/> in one piece are an injection; in pieces they may
    # arrive after it (then they are TLS). Everything else must not depend on the chunking.
    # The byte cap is judged per read: input over the cap in one piece is refused for its size
    # before an earlier syntax error is seen. Both are stream errors; not a finding.
    over_cap = len(data) > MAX_PRE_TLS and "stream-error:policy-violation" in (whole, split)
    if whole != split and not over_cap and not (whole.endswith("policy-violation") and split == "starttls"):
        both_errors = whole.startswith("stream-error") and split.startswith("stream-error")
        (findings.note if both_errors else findings.add)(
            f"chunking changed the outcome: {whole} vs {split} for {data[:120]!r}"
        )
    if whole == "need-data" and len(data) > MAX_PRE_TLS:
        findings.add(f"{len(data)} bytes buffered past the {MAX_PRE_TLS}-byte cap: {data[:80]!r}")
    if whole == "starttls" and not sent.endswith(PROCEED):
        findings.add(f"STARTTLS outcome without <proceed/> last: {sent[-80:]!r}")
    if whole.startswith("stream-error") and not sent.endswith(b"</stream:stream>"):
        findings.add(f"stream error not followed by </stream:stream>: {sent[-80:]!r}")
    if len(sent) > 4096 or len(sent_split) > 4096:
        findings.add(f"answer of {len(sent)} bytes to {len(data)} bytes of input")
    del consumed
    return whole


# --------------------------------------------------------------------------- ClientHellos


def real_hellos() -> list[bytes]:
    """ClientHellos OpenSSL really sends, TLS 1.0 to 1.3, with and without SNI/ALPN."""
    hellos = []
    import warnings

    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        for sni, alpn in ((DOMAIN, None), (None, ["xmpp-client"]), (DOMAIN, ["xmpp-client", "h2"])):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = version
                ctx.maximum_version = version
            if version is ssl.TLSVersion.TLSv1:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            if alpn:
                ctx.set_alpn_protocols(alpn)
            tls = ctx.wrap_bio(
                ssl.MemoryBIO(), (out := ssl.MemoryBIO()), server_side=False, server_hostname=sni
            )
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            hellos.append(out.read())
    return [*hellos, sslv3_hello(), sslv2_hello()]


def sslv3_hello() -> bytes:
    """An SSLv3 ClientHello (version 3.0, RSA suites, no extensions)."""
    body = (
        struct.pack("!H", 0x0300) + bytes(32) + b"\x00" + struct.pack("!H", 6) + bytes.fromhex("000a002f0035")
    )
    body += b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x00" + struct.pack("!H", len(handshake)) + handshake


def sslv2_hello() -> bytes:
    """An SSLv2-format CLIENT-HELLO (what pre-2000 clients and some scanners send)."""
    ciphers = bytes.fromhex("0700c0050080030080010080")  # SSL2 suites
    challenge = bytes(range(16))
    body = b"\x01" + struct.pack("!HHHH", 0x0002, len(ciphers), 0, len(challenge)) + ciphers + challenge
    return struct.pack("!H", 0x8000 | len(body)) + body


def _records(rng: random.Random, hello: bytes) -> bytes:
    """Re-split a one-record hello into several handshake records (legal fragmentation)."""
    if hello[:1] != b"\x16" or len(hello) < 10:
        return hello
    message = hello[5:]
    out = bytearray()
    pos = 0
    while pos < len(message):
        size = rng.randrange(1, 300)
        out += hello[:3] + struct.pack("!H", len(message[pos : pos + size])) + message[pos : pos + size]
        pos += size
    return bytes(out)


def hello_case(rng: random.Random, bases: list[bytes]) -> bytes:
    data = rng.choice(bases)
    pick = rng.random()
    if pick < 0.2:
        data = _records(rng, data)
    elif pick < 0.7:
        buf = bytearray(data)
        for _ in range(rng.choice([1, 2, 4, 16])):
            pos = rng.randrange(len(buf))
            if rng.random() < 0.5:
                buf[pos] = rng.randrange(256)
            else:
                buf[pos : pos + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x40\x00", b"\x00\x01"])
        data = bytes(buf)
    elif pick < 0.8:
        data = data[: rng.randrange(1, len(data))]
    elif pick < 0.9:
        ext = struct.pack("!HH", rng.randrange(65536), 2000) + rng.randbytes(2000)
        data = data + ext  # junk after the message
    else:
        data = bytes([0x16, 0x03, rng.randrange(5)]) + rng.randbytes(rng.choice([2, 100, 20000]))
    return data


def check_hello(data: bytes, rng: random.Random, findings: Findings) -> None:
    findings.cases += 1
    parser = ClientHelloParser()
    fed = 0
    try:
        for piece in chunked(rng, data):
            fed += len(piece)
            hello = parser.feed(piece)
            if hello is not None:
                assert isinstance(hello, ClientHello)
                hello.summary()
                hello.ja3()
                findings.outcomes["parsed"] += 1
                return
        if fed > HELLO_MAX_BYTES + 5 + 2048:
            findings.add(f"{fed} hello bytes buffered without a verdict")
        findings.outcomes["need-data"] += 1
    except ClientHelloError as exc:
        findings.outcomes[f"error:{exc}"] += 1
    except Exception as exc:  # anything else is a finding
        findings.add(f"ClientHello parser {type(exc).__name__}: {exc} for {data[:60].hex()}")


def run_in_process(pre_tls_cases: int, hello_cases: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)  # seeded: reproducible, not secret
    start = time.monotonic()
    pre = Findings()
    for _ in range(pre_tls_cases):
        check_pre_tls(pre_tls_case(rng), rng, pre)
    pre_s = time.monotonic() - start
    bases = real_hellos()
    hel = Findings()
    start = time.monotonic()
    for _ in range(hello_cases):
        check_hello(hello_case(rng, bases), rng, hel)
    hello_outcomes: Counter[str] = Counter()
    for key, value in hel.outcomes.items():
        hello_outcomes[key.split(":")[0]] += value
    return {
        "pre_tls": {
            "cases": pre.cases,
            "seconds": round(pre_s, 1),
            "outcomes": dict(pre.outcomes.most_common()),
        },
        "clienthello": {
            "cases": hel.cases,
            "seconds": round(time.monotonic() - start, 1),
            "outcomes": dict(hello_outcomes),
            "distinct_errors": len([k for k in hel.outcomes if k.startswith("error:")]),
        },
        "problems": pre.problems + hel.problems,
        "notes": pre.notes,
    }


# --------------------------------------------------------------------------- over the network


def exchange(
    port: int, data: bytes, *, timeout: float, after: Callable[[socket.socket, bytes], bytes] | None = None
) -> tuple[bytes, bool, float]:
    """Send ``data`` in one piece, half-close, read until the proxy closes or ``timeout``.

    Returns (answer, closed by the proxy, seconds). ``after`` may continue the dialogue
    (it gets the socket and the answer so far, returns the answer read meanwhile).
    """
    start = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        if after is not None:
            answer += after(sock, answer)
        else:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        # A reset is a close (kit.recv_until_closed); so is any other OSError, whatever it cut off.
        with contextlib.suppress(OSError):
            rest, closed = recv_until_closed(sock, start + timeout - time.monotonic())
            return answer + rest, closed, time.monotonic() - start
        return answer, True, time.monotonic() - start


def classify(answer: bytes) -> str:
    match = STREAM_ERROR_RE.search(answer)
    if match:
        return f"stream-error:{match.group(1).decode()}"
    if PROCEED in answer:
        return "starttls"
    if answer.endswith(b"</stream:stream>"):
        return "stream-end"
    return "need-data"


def run_network(port: int, cases: int, seed: int, timeout: float, workers: int = 24) -> dict[str, Any]:
    """``cases`` generated dialogues over real sockets; compare with the in-process verdict."""
    rng = random.Random(seed ^ 0x5EED)
    bases = real_hellos()
    inputs: list[tuple[bytes, str]] = []
    for i in range(cases):
        if i % 4 == 3:  # a proper STARTTLS, then a hostile ClientHello as the first TLS bytes
            head = stream_header()
            inputs.append((head + STARTTLS + b"\0" + hello_case(rng, bases), "hello"))
        else:
            inputs.append((pre_tls_case(rng), "pre-tls"))

    def one(item: tuple[bytes, str]) -> tuple[str, str, bool, float]:
        data, kind = item
        if kind == "hello":
            head, hello = data.split(b"\0", 1)
            answer, closed, elapsed = exchange(port, head, timeout=timeout, after=_send_after_proceed(hello))
            return "hello", "starttls" if PROCEED in answer else classify(answer), closed, elapsed
        expected = predict(data)
        answer, closed, elapsed = exchange(port, data, timeout=timeout)
        got = classify(answer)
        return expected, got, closed, elapsed

    outcomes: Counter[str] = Counter()
    mismatches: list[str] = []
    not_closed = 0
    slowest = 0.0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (data, _), (expected, got, closed, elapsed) in zip(inputs, pool.map(one, inputs), strict=True):
            outcomes[got] += 1
            slowest = max(slowest, elapsed)
            if not closed:
                not_closed += 1
            ok = got == expected or (expected.endswith("policy-violation") and got == "starttls")
            if expected == "hello":
                ok = got == "starttls"
            if expected == "need-data":
                ok = got in ("need-data", "stream-end") or got.startswith("stream-error")
            if not ok and len(mismatches) < 10:
                mismatches.append(f"expected {expected}, got {got}: {data[:100]!r}")
    return {
        "cases": cases,
        "outcomes": dict(outcomes.most_common()),
        "not_closed_within_bound": not_closed,
        "slowest_s": round(slowest, 2),
        "mismatches": mismatches,
    }


def _send_after_proceed(payload: bytes) -> Callable[[socket.socket, bytes], bytes]:
    def after(sock: socket.socket, _: bytes) -> bytes:
        answer = b""
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while PROCEED not in answer and b"</stream:stream>" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            if PROCEED in answer:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        return answer

    return after


# --------------------------------------------------------------------------- named attacks


BILLION_LAUGHS = (
    b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    + b"".join(
        f"<!ENTITY lol{i} '{('&lol' + str(i - 1) + ';') * 10 if i > 1 else '&lol;' * 10}'>".encode()
        for i in range(1, 10)
    )
    + b"]>"
    + stream_header("&lol9;")
)


ANY_PRE_TLS_ERROR = ("policy-violation", "unsupported-stanza-type", "not-authorized", "not-well-formed")


@dataclass
class Attack:
    name: str
    expect: str  # human-readable expectation
    run: Callable[[], tuple[bool, str]]  # (passed, what happened)


def _expect_error(port: int, data: bytes, conditions: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    answer, closed, elapsed = exchange(port, data, timeout=timeout)
    got = classify(answer)
    ok = closed and any(got == f"stream-error:{c}" for c in conditions)
    if b"lollol" in answer:
        return False, "entity expanded in the answer"
    return ok, f"{got}, {'closed' if closed else 'NOT closed'} in {elapsed:.2f}s, {len(answer)} bytes back"


def _tls_after_starttls(port: int, payload: bytes, timeout: float) -> tuple[bytes, bool, float]:
    return exchange(port, stream_header() + STARTTLS, timeout=timeout, after=_send_after_proceed(payload))


RENEGOTIATION_OUTPUT: list[str] = []


def _renegotiation(port: int, cafile: str, timeout: float) -> tuple[bool, str]:
    """openssl s_client over STARTTLS at TLS 1.0; 'R' asks for a client-initiated renegotiation."""
    args = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "xmpp", "-xmpphost", DOMAIN,
        "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", cafile, "-servername", DOMAIN,
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    try:
        time.sleep(1.0)  # handshake first; s_client reads commands only once connected
        with contextlib.suppress(OSError):
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
        time.sleep(1.0)
        output = proc.communicate(timeout=timeout)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return False, "s_client did not finish"
    RENEGOTIATION_OUTPUT[:] = [output]
    renegotiated = "RENEGOTIATING" in output
    refused = "no renegotiation" in output.lower()
    secure = "Secure Renegotiation IS supported" in output
    what = f"secure renegotiation {'supported' if secure else 'NOT supported'}; "
    what += "client-initiated renegotiation refused" if refused else "renegotiation accepted"
    return renegotiated and secure and refused, what


def _heartbeat(port: int, hello: bytes, timeout: float) -> tuple[bool, str]:
    """A heartbeat request claiming 16 KiB of payload, right after the server's first flight."""
    heartbeat = b"\x18\x03\x01\x00\x03\x01\x40\x00"

    def after(sock: socket.socket, _: bytes) -> bytes:
        answer = b""
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while PROCEED not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    return answer
                answer += chunk
            sock.sendall(hello)
            flight = b""
            while b"\x0e\x00\x00\x00" not in flight:  # ServerHelloDone
                chunk = sock.recv(65536)
                if not chunk:
                    break
                flight += chunk
            sock.sendall(heartbeat)
        return b""  # only what comes after the heartbeat counts

    answer, closed, elapsed = exchange(port, stream_header() + STARTTLS, timeout=timeout, after=after)
    leaked = len(answer) > 64
    what = (
        f"{len(answer)} bytes after the heartbeat, {'closed' if closed else 'NOT closed'} in {elapsed:.2f}s"
    )
    return closed and not leaked, what


def attacks(port: int, cafile: str, tls10_hello: bytes, timeout: float) -> Iterator[Attack]:
    t = timeout
    header = stream_header()
    yield Attack(
        "STARTTLS injection (bytes after <starttls/>)",
        "policy-violation, nothing relayed",
        lambda: _expect_error(port, header + STARTTLS + b"<auth mechanism='PLAIN'>AGEAYg==</auth>",
                              ("policy-violation",), t),
    )  # fmt: skip
    yield Attack(
        "oversized attribute (to = 100 000 bytes)",
        "policy-violation at the byte cap",
        lambda: _expect_error(port, stream_header("a" * 100_000), ("policy-violation",), t),
    )
    yield Attack(
        "10 000 attributes",
        "policy-violation at the byte cap",
        lambda: _expect_error(port, stream_header(extra="".join(f" a{i}='x'" for i in range(10_000))),
                              ("policy-violation",), t),
    )  # fmt: skip
    yield Attack(
        "deep nesting (50 000 levels)",
        "a stream error, no recursion",
        lambda: _expect_error(port, header + b"<a>" * 50_000, ANY_PRE_TLS_ERROR, t),
    )
    yield Attack(
        "billion laughs (DTD + nested entities)",
        "restricted-xml, never expanded",
        lambda: _expect_error(port, BILLION_LAUGHS, ("restricted-xml",), t),
    )
    yield Attack(
        "entity reference to an undeclared entity",
        "a stream error",
        lambda: _expect_error(port, stream_header("&lol;"), ("not-well-formed", "restricted-xml"), t),
    )
    yield Attack(
        "NUL bytes in the header",
        "not-well-formed",
        lambda: _expect_error(port, stream_header("exa\x00mple.test"), ("not-well-formed",), t),
    )
    yield Attack(
        "invalid UTF-8 in the header",
        "not-well-formed / unsupported-encoding",
        lambda: _expect_error(port, header.replace(DOMAIN.encode(), b"\xff\xfe\xc3("),
                              ("not-well-formed", "unsupported-encoding", "bad-format"), t),
    )  # fmt: skip
    yield Attack(
        "TLS ClientHello before <starttls/> (raw TLS on the STARTTLS port)",
        "a stream error, then close",
        lambda: _expect_error(
            port, tls10_hello, ("not-well-formed", "unsupported-encoding", "bad-format"), t
        ),
    )
    for label, hello in (("SSLv2", sslv2_hello()), ("SSLv3", sslv3_hello())):
        yield Attack(
            f"{label} ClientHello after <starttls/>",
            "handshake refused, connection closed",
            lambda hello=hello: _closed_with_alert(*_tls_after_starttls(port, hello, t)),
        )
    yield Attack(
        "ClientHello with a non-ASCII SNI (bytes 0xff 0xfe in the host name)",
        "handshake refused, connection closed, no traceback",
        lambda: _closed_with_alert(*_tls_after_starttls(port, non_ascii_sni_hello(tls10_hello), t)),
    )
    yield Attack(
        "client-initiated renegotiation (TLS 1.0)",
        "secure renegotiation only; client-initiated refused",
        lambda: _renegotiation(port, cafile, t + 10),
    )
    yield Attack(
        "heartbeat request (Heartbleed shape)",
        "no heartbeat answer, closed",
        lambda: _heartbeat(port, tls10_hello, t),
    )


def _closed_with_alert(answer: bytes, closed: bool, elapsed: float) -> tuple[bool, str]:
    after = answer.split(PROCEED, 1)[1] if PROCEED in answer else answer
    alert = after[:1] == b"\x15"
    server_hello = after[:1] == b"\x16"
    what = f"{'alert' if alert else 'ServerHello!' if server_hello else repr(after[:8])}, "
    what += f"{'closed' if closed else 'NOT closed'} in {elapsed:.2f}s"
    return closed and not server_hello, what


def run_attacks(
    port: int, cafile: str, tls10_hello: bytes, timeout: float, tracebacks: Callable[[], int]
) -> list[dict[str, Any]]:
    """Run every named attack; ``tracebacks`` counts the tracebacks in the proxy's log so far."""
    rows = []
    for attack in attacks(port, cafile, tls10_hello, timeout):
        before = tracebacks()
        try:
            passed, what = attack.run()
        except Exception as exc:  # an attack that breaks the harness is reported, not hidden
            passed, what = False, f"harness error {type(exc).__name__}: {exc}"
        time.sleep(0.05)  # the proxy writes its log line after the close we saw
        rows.append(
            {
                "attack": attack.name,
                "expected": attack.expect,
                "passed": passed,
                "result": what,
                "tracebacks": tracebacks() - before,
            }
        )
    return rows


def non_ascii_sni_hello(hello: bytes) -> bytes:
    """``hello`` (which names DOMAIN in its SNI) with two SNI bytes replaced by non-ASCII ones."""
    name = DOMAIN.encode()
    assert hello.count(name) == 1, "the ClientHello must carry the domain exactly once"
    return hello.replace(name, name[:4] + b"\xff\xfe" + name[6:])
