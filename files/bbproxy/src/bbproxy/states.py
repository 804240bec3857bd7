"""The states of a client session (session.py), in one place for the session and its relay (relay.py).

Life of a STARTTLS session (a direct-TLS session starts at HELLO)::

    PRE_TLS --<starttls/>--> HELLO --legacy, or terminate-all--> HANDSHAKE --TLS up--> CONNECTING
                               |                                     ^          backend up: RELAY
                               |                                     |        backend down: UNAVAILABLE
                               |--modern, legacy-only--> SPLICING ---' Prosody's TLS port down
                               |                            `--connected--> SPLICE (raw bytes;
                               |                       handshake_timeout until Prosody answered
                               |                       the client's second flight)
                               `--legacy, address not allowed--> CLOSED (protocol_version alert)

The session moves itself up to HANDSHAKE and SPLICING; the relay moves it on from CONNECTING and
SPLICING. Every callback checks the state first: once a session is CLOSED, late callbacks (a
timer, a backend that finishes connecting) do nothing. That is the lesson of the Node.js
prototype, whose stale close handler aborted its own handshakes.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    PRE_TLS = 1
    HELLO = 2
    HANDSHAKE = 3
    CONNECTING = 4
    RELAY = 5
    UNAVAILABLE = 6
    SPLICING = 7
    SPLICE = 8
    CLOSED = 9
