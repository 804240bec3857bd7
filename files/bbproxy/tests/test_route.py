"""routing.route(): the whole decision table, as a property (sans-IO, no sockets)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from bbproxy.clienthello import ClientHello
from bbproxy.config import TlsPolicy
from bbproxy.routing import LEGACY_NOT_ALLOWED, SNI_NOT_ASCII, Route, route

VERSIONS = st.sampled_from([0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x0305, 0x7F1C])


@st.composite
def hellos(draw: st.DrawFn) -> ClientHello:
    return ClientHello(
        legacy_version=draw(st.sampled_from([0x0301, 0x0303])),
        supported_versions=tuple(draw(st.lists(VERSIONS, max_size=3))),
        ciphers=(0xC013, 0xC02F),
        extensions=(0, 10, 11),
        groups=(29,),
        point_formats=(0,),
        sni=draw(st.sampled_from([None, "example.test", "ex\u00e4mple.test"])),
        alpn=(),
    )


@given(
    hellos(),
    st.sampled_from(["terminate-all", "legacy-only"]),
    st.booleans(),
    st.booleans(),
)
def test_the_decision_table(hello: ClientHello, routing: str, allowed: bool, named: bool) -> None:
    ja3 = frozenset({hello.ja3()}) if named else frozenset()
    policy = TlsPolicy(
        routing=routing, legacy_ja3=ja3, legacy_networks=(ipaddress.ip_network("192.0.2.0/24"),)
    )
    asked: list[bool] = []

    def legacy_allowed() -> bool:
        asked.append(True)
        return allowed

    decision = route(hello, policy, legacy_allowed)
    legacy = hello.max_version < 0x0303 or named
    assert decision.legacy == legacy
    if hello.sni is not None and not hello.sni.isascii():
        assert decision.route is Route.REFUSED and decision.refusal == SNI_NOT_ASCII
    elif legacy and not allowed:
        assert decision.route is Route.REFUSED and decision.refusal == LEGACY_NOT_ALLOWED
    elif legacy or routing == "terminate-all":
        assert decision.route is Route.TERMINATE and decision.refusal is None
    else:
        assert decision.route is Route.PASSTHROUGH and decision.refusal is None
    assert bool(asked) <= legacy  # the allow-list is consulted for legacy clients only
