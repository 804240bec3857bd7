"""The proxy's log never holds credentials, SASL payloads or message bodies (issue #9, item 4).

Real SASL PLAIN and SCRAM-SHA-1 logins go through the proxy into a real Prosody, with the proxy
at its most verbose log level. A raw client drives them, so the test knows every byte that
crossed the proxy: the password, each base64 SASL payload (PLAIN's, SCRAM's client-first,
server-first and client-final with the proof) and a unique marker in a message body. None of
them may appear in the proxy's output (its log file holds stdout and stderr). slixmpp logins
(tools/xmpp_login_check.py) run too, as a second, independent client.

The test can fail: a proxy that logs what it relays (e.g. a debug line with the received
bytes) puts the base64 payloads and the marker into the log.
"""

from __future__ import annotations

import base64
import re
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..kit import ScramSha1
from .support import (
    DOMAIN,
    STARTTLS,
    Certs,
    Prosody,
    ProxyFactory,
    client_context,
    connect,
    open_stream,
    read_proceed,
    recv_until,
    run_login_check,
    stream_header,
)

pytestmark = pytest.mark.integration

SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
TIMEOUT = 10.0


@dataclass
class Transcript:
    """Everything a login put on the wire that must stay out of the proxy's log."""

    secrets: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, value: str) -> None:
        assert value, f"empty secret {label}"
        self.secrets[label] = value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def element_text(data: bytes, name: str) -> str:
    match = re.search(rb"<" + name.encode() + rb"\b[^>]*>([^<]*)</" + name.encode() + rb">", data)
    assert match is not None, f"no <{name}> in {data!r}"
    return match.group(1).decode("ascii")


def exchange(tls: ssl.SSLSocket, payload: str, needle: bytes) -> bytes:
    tls.sendall(payload.encode())
    answer = recv_until(tls, needle, TIMEOUT)
    assert needle in answer, f"waiting for {needle!r}, got {answer!r}"
    return answer


def start_tls(port: int, cafile: Path, version: str) -> ssl.SSLSocket:
    sock = connect(port)
    open_stream(sock)
    sock.sendall(STARTTLS)
    read_proceed(sock)
    tls = client_context(version, cafile).wrap_socket(sock, server_hostname=DOMAIN)
    tls.sendall(stream_header())
    features = recv_until(tls, b"</stream:features>", TIMEOUT)
    assert b"</stream:features>" in features, f"no features from Prosody: {features!r}"
    return tls


def sasl_plain(tls: ssl.SSLSocket, user: str, password: str, transcript: Transcript) -> None:
    payload = b64(f"\0{user}\0{password}".encode())
    transcript.add(f"PLAIN payload of {user}", payload)
    exchange(tls, f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{payload}</auth>", b"<success")


def sasl_scram_sha1(tls: ssl.SSLSocket, user: str, password: str, transcript: Transcript) -> None:
    """RFC 5802 SCRAM-SHA-1 without channel binding (kit.ScramSha1); checks the server's signature too."""
    scram = ScramSha1(user, password)
    client_first = b64(scram.first())
    transcript.add(f"SCRAM client-first of {user}", client_first)
    challenge = exchange(
        tls, f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-1'>{client_first}</auth>", b"</challenge>"
    )
    server_first_b64 = element_text(challenge, "challenge")
    transcript.add(f"SCRAM server-first of {user}", server_first_b64)
    client_final = b64(scram.final(base64.b64decode(server_first_b64)))
    transcript.add(f"SCRAM client-final of {user}", client_final)
    success = exchange(tls, f"<response xmlns='{SASL_NS}'>{client_final}</response>", b"</success>")
    server_final_b64 = element_text(success, "success")
    transcript.add(f"SCRAM server-final of {user}", server_final_b64)
    assert scram.verify(base64.b64decode(server_final_b64)), "server signature mismatch"


def bind_and_echo(tls: ssl.SSLSocket, marker: str) -> None:
    """Restart the stream, bind, and send ourselves a message carrying ``marker`` until it comes back."""
    tls.sendall(stream_header())
    features = recv_until(tls, b"</stream:features>", TIMEOUT)
    assert BIND_NS.encode() in features, f"no bind after SASL: {features!r}"
    bound = exchange(tls, f"<iq type='set' id='bind1'><bind xmlns='{BIND_NS}'/></iq>", b"</jid>")
    jid = element_text(bound, "jid")
    echoed = exchange(
        tls, f"<message to='{jid}' type='chat' id='m1'><body>{marker}</body></message>", marker.encode()
    )
    assert marker.encode() in echoed
    tls.sendall(b"</stream:stream>")
    recv_until(tls, b"</stream:stream>", TIMEOUT)
    tls.close()


def assert_log_clean(log: str, transcript: Transcript, passwords: dict[str, str]) -> None:
    leaks = [label for label, value in transcript.secrets.items() if value in log]
    leaks += [f"password of {user}" for user, password in passwords.items() if password in log]
    assert not leaks, f"the proxy log contains: {', '.join(leaks)}"


def test_log_holds_no_passwords_sasl_payloads_or_bodies(
    proxy_factory: ProxyFactory, prosody: Prosody, certs: Certs
) -> None:
    # The asyncio loop, because its start-up debug line ("Using selector") proves the level took.
    proxy = proxy_factory(
        backend=f"{prosody.host}:{prosody.port}",
        cert="rsa",
        loop="asyncio",
        extra_args=["--log-level", "debug"],
    )
    transcript = Transcript()
    logins = [
        ("alice", "1.0", sasl_plain),
        ("bob", "1.3", sasl_scram_sha1),
        ("carol", "1.2", sasl_scram_sha1),
    ]
    for user, version, mechanism in logins:
        marker = f"log-hygiene-marker-{secrets.token_hex(8)}"
        transcript.add(f"message body of {user}", marker)
        tls = start_tls(proxy.port, certs.cafile, version)
        mechanism(tls, user, prosody.passwords[user], transcript)
        bind_and_echo(tls, marker)

    # A second client: slixmpp's own SASL (SCRAM, then forced PLAIN) and its message token.
    for extra in ([], ["--sasl-mech", "PLAIN"]):
        result = run_login_check(
            port=proxy.port, prosody=prosody, cafile=certs.cafile, tls="1.0", peer_tls="1.3", extra=extra
        )
        assert result.returncode == 0, result.output
    transcript.add("slixmpp message token prefix", "bbproxy-check-")

    proxy.stop()
    log = proxy.log_text()
    # The log is the verbose one and it saw every session (so a clean log is not an empty one).
    assert " DEBUG " in log, f"the proxy did not log at debug level:\n{log[-2000:]}"
    closes = [line for line in log.splitlines() if "conn=" in line and "close=" in line]
    assert len(closes) == len(logins) + 4, log[-4000:]
    assert_log_clean(log, transcript, prosody.passwords)
