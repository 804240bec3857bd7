"""backend_starttls.py: bbproxy's STARTTLS with Prosody for a spliced client, bytes in, steps out.

PROSODY_ANSWER is what Prosody 0.12 sends on a STARTTLS port (mod_bbproxy_proxy's
bbproxy_proxy_starttls_ports, c2s_require_encryption on), as its debug log shows it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbproxy.backend_starttls import STARTTLS, StartTlsDialogue, Step, opening

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xml:lang='en'"
    b" xmlns:stream='http://etherx.jabber.org/streams' id='b7c5' from='example.test' version='1.0'>"
)
FEATURES = (
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"</stream:features>"
)
PROCEED = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


def run(chunks: list[bytes], max_bytes: int = 8192) -> list[Step]:
    dialogue = StartTlsDialogue(max_bytes)
    return [dialogue.receive_data(chunk) for chunk in chunks]


def outcome(steps: list[Step]) -> tuple[bytes, bool, str | None]:
    """Everything to send, whether it got ready, the first failure."""
    failures = [s.failure for s in steps if s.failure is not None]
    return b"".join(s.send for s in steps), any(s.ready for s in steps), failures[0] if failures else None


def test_opening_names_the_domain() -> None:
    assert opening("example.test") == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams' to=\"example.test\" version='1.0'>"
    )


def test_features_with_starttls_then_proceed() -> None:
    dialogue = StartTlsDialogue(8192)
    assert dialogue.receive_data(HEADER) == Step()
    assert dialogue.receive_data(FEATURES) == Step(send=STARTTLS)
    assert dialogue.receive_data(PROCEED) == Step(ready=True)
    assert dialogue.receive_data(b"anything") == Step()  # done: nothing more is read


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_outcome(data: st.DataObject) -> None:
    chunks: list[bytes] = []
    for part in (HEADER + b"\n" + FEATURES, PROCEED):  # <proceed/> comes after our <starttls/>
        cuts = sorted(data.draw(st.lists(st.integers(0, len(part)), max_size=8)))
        chunks += [part[a:b] for a, b in zip([0, *cuts], [*cuts, len(part)], strict=True)]
    assert outcome(run(chunks)) == (STARTTLS, True, None)


@pytest.mark.parametrize(
    ("answer", "failure"),
    [
        (HEADER + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
         b"</stream:features>", "Prosody offered no STARTTLS"),
        (HEADER + b"<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
         "Prosody sent a stream error"),
        (HEADER + FEATURES + PROCEED, "bytes before our <starttls/>"),
        (HEADER + b"</stream:stream>", "Prosody closed the stream"),
        (b"<stream:stream xmlns:stream='urn:other' xmlns='jabber:client'>",
         "invalid-namespace: not an XMPP stream header"),
        (b"HTTP/1.1 400 Bad Request\r\n", "not-well-formed: text outside the stream"),
        (HEADER + b"<!-- x -->", "restricted-xml: a character, comment or DTD not allowed here"),
        # A <proceed/> before we asked for it is not an answer to us.
        (HEADER + PROCEED, "unexpected <proceed/> from Prosody"),
        # <starttls/> in the wrong place (not a feature) is no offer.
        (HEADER + b"<stream:features><x><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></x>"
         b"</stream:features>", "Prosody offered no STARTTLS"),
    ],
)  # fmt: skip
def test_anything_but_starttls_and_proceed_fails(answer: bytes, failure: str) -> None:
    _, ready, why = outcome(run([answer]))
    assert (ready, why) == (False, failure)


def test_a_starttls_failure_fails() -> None:
    failure = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert run([HEADER + FEATURES, failure])[-1] == Step(failure="unexpected <failure/> from Prosody")


def test_nothing_may_follow_proceed() -> None:
    assert run([HEADER + FEATURES, PROCEED + b"<x/>"])[-1] == Step(failure="bytes after <proceed/>")


def test_the_answer_is_bounded() -> None:
    steps = run([HEADER, b" " * 8192])
    assert steps[-1].failure == "more than 8192 bytes before <proceed/>"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_get_ready_and_never_raise(data: bytes) -> None:
    send, ready, _ = outcome(run([data]))
    assert not ready
    assert send in (b"", STARTTLS)
