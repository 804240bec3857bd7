"""The systemd readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET.

Tiny on purpose: a dependency for five lines would be a dependency to audit and pin.
"""

from __future__ import annotations

import os
import socket


def send(state: str) -> bool:
    """Send e.g. ``READY=1``; return False when not run under systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
