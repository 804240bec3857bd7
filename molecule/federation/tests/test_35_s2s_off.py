"""With s2s off (bbproxy_prosody_s2s_enabled: false) Prosody doesn't listen on 5269 and the role
closes it in UFW again; turned back on, it is open again (and test_40 federates again).

site.yml runs against a.test only, as an operator would run it, with the switch as an extra var."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from federation import S2S_PORT, Server, connect_from, listening, run_site, ufw_allowed, wait_for


@pytest.fixture(scope="module")
def a_without_s2s(servers: tuple[Server, Server]) -> Iterator[dict[str, int]]:
    """a.test converged twice with s2s off: {"changed": tasks changed by the first run, "again": by the
    second}. Afterwards a.test is converged with the defaults again (unless test_s2s_back_on did)."""
    a, _ = servers
    state = {"restored": 0}
    try:
        state["changed"] = run_site(a.instance, {"bbproxy_prosody_s2s_enabled": False})
        state["again"] = run_site(a.instance, {"bbproxy_prosody_s2s_enabled": False})
        yield state
    finally:
        if not state["restored"]:
            run_site(a.instance, {})


def test_switching_s2s_off_converges(a_without_s2s: dict[str, int]) -> None:
    assert a_without_s2s["changed"] > 0, a_without_s2s
    assert a_without_s2s["again"] == 0, f"the second run with s2s off changed things: {a_without_s2s}"


def test_prosody_stops_listening_on_5269(servers: tuple[Server, Server], a_without_s2s: dict[str, int]) -> None:
    a, _ = servers
    assert not listening(a.host, S2S_PORT)


def test_ufw_closes_5269(servers: tuple[Server, Server], a_without_s2s: dict[str, int]) -> None:
    a, b = servers
    assert ufw_allowed(a, S2S_PORT) == [], f"{a.instance} still allows {S2S_PORT}"
    # Dropped by UFW (not refused by an empty port): the rule is gone, not just the listener.
    assert connect_from(b, a, S2S_PORT) == "timeout"
    # b.test was not part of the run.
    assert len(ufw_allowed(b, S2S_PORT)) == 2


def test_s2s_back_on_opens_5269_again(servers: tuple[Server, Server], a_without_s2s: dict[str, int]) -> None:
    # Last in this module: the run with the defaults that also leaves a.test as deployed for test_40.
    a, b = servers
    a_without_s2s["restored"] = 1
    run_site(a.instance, {})
    wait_for(lambda: listening(a.host, S2S_PORT), f"Prosody on {a.instance} to listen on {S2S_PORT} again")
    assert len(ufw_allowed(a, S2S_PORT)) == 2
    assert connect_from(b, a, S2S_PORT) == "connected"
