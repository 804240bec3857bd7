"""The proxy's half of the pre-TLS dialogue, without sockets."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bbproxy.negotiation import Action, Negotiation

from .kit import STARTTLS, stream_header

HEADER = stream_header()


def parse_reply(data: bytes) -> ET.Element:
    """Parse what the proxy wrote as a complete XML document (closing the stream if open)."""
    text = data.decode()
    if not text.endswith("</stream:stream>"):
        text += "</stream:stream>"
    return ET.fromstring(text.replace("<?xml version='1.0'?>", ""))


def negotiation(*domains: str) -> Negotiation:
    ids = iter(f"id{i}" for i in range(100))
    return Negotiation(frozenset(domains or ("example.test",)), 8192, lambda: next(ids))


def test_header_is_answered_with_required_starttls_then_proceed() -> None:
    neg = negotiation()
    first = neg.receive_data(HEADER)
    assert first.action is Action.CONTINUE
    root = parse_reply(first.send)
    assert root.get("from") == "example.test"
    assert root.get("id") == "id0"
    assert root.get("version") == "1.0"
    features = root.find("{http://etherx.jabber.org/streams}features")
    assert features is not None
    starttls = features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls")
    assert starttls is not None and starttls.find("{urn:ietf:params:xml:ns:xmpp-tls}required") is not None
    second = neg.receive_data(STARTTLS)
    assert second.action is Action.STARTTLS
    assert second.send == b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert neg.domain == "example.test"


def test_stream_ids_are_random_by_default() -> None:
    a = parse_reply(Negotiation(frozenset({"example.test"}), 8192).receive_data(HEADER).send)
    b = parse_reply(Negotiation(frozenset({"example.test"}), 8192).receive_data(HEADER).send)
    assert a.get("id") != b.get("id")
    assert len(a.get("id") or "") >= 16


def stream_error_condition(data: bytes) -> str:
    root = parse_reply(data)
    error = root.find("{http://etherx.jabber.org/streams}error")
    assert error is not None, data
    conditions = [c.tag.split("}")[1] for c in error if c.tag.split("}")[1] != "text"]
    assert all(c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-streams}") for c in error)
    return conditions[0]


def test_unknown_domain_is_host_unknown_with_a_header_first() -> None:
    outcome = negotiation().receive_data(HEADER.replace(b"example.test", b"other.test"))
    assert outcome.action is Action.CLOSE
    assert stream_error_condition(outcome.send) == "host-unknown"
    assert outcome.send.endswith(b"</stream:stream>")


def test_domain_match_ignores_case_and_trailing_dot() -> None:
    neg = negotiation()
    assert neg.receive_data(HEADER.replace(b"example.test", b"EXAMPLE.test.")).action is Action.CONTINUE
    assert neg.domain == "example.test"


def test_missing_to_uses_the_only_domain_but_not_one_of_several() -> None:
    no_to = HEADER.replace(b" to='example.test'", b"")
    one = negotiation()
    assert one.receive_data(no_to).action is Action.CONTINUE and one.domain == "example.test"
    outcome = negotiation("a.test", "b.test").receive_data(no_to)
    assert stream_error_condition(outcome.send) == "host-unknown"


def test_auth_before_tls_is_refused_without_echoing_it() -> None:
    neg = negotiation()
    opened = neg.receive_data(HEADER)
    outcome = neg.receive_data(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHNlY3JldA==</auth>"
    )
    assert outcome.action is Action.CLOSE
    assert stream_error_condition(opened.send + outcome.send) == "policy-violation"
    assert b"AHNlY3JldA" not in outcome.send


def test_bytes_pipelined_after_starttls_are_refused() -> None:
    neg = negotiation()
    outcome = neg.receive_data(HEADER + STARTTLS + b"<auth/>")
    assert outcome.action is Action.CLOSE
    assert outcome.reason == "starttls-injection"
    assert b"<proceed " not in outcome.send
    assert stream_error_condition(outcome.send) == "policy-violation"


def test_garbage_gets_a_header_and_not_well_formed() -> None:
    outcome = negotiation().receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert outcome.action is Action.CLOSE
    assert stream_error_condition(outcome.send) == "not-well-formed"


def test_refuse_after_header_sends_no_second_header() -> None:
    neg = negotiation()
    neg.receive_data(HEADER)
    data = neg.refuse("connection-timeout", "no <starttls/> in time")
    assert not data.startswith(b"<?xml")
    assert b"<connection-timeout " in data and b"&lt;starttls/&gt;" in data
