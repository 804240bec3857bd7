"""The systemd protocols the proxy speaks: readiness (sd_notify, one datagram to $NOTIFY_SOCKET)
and socket activation (sd_listen_fds: listening sockets passed from fd 3 on).

Tiny on purpose: a dependency for five lines would be a dependency to audit and pin.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START


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


def listen_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """The descriptors systemd passed to this process (sd_listen_fds): [] when none, or when
    LISTEN_PID names another process (the variables were inherited, not meant for us).

    Like sd_listen_fds(unset_environment=1), the variables are removed, so a forked or spawned
    child never takes them for its own, and the descriptors are marked close-on-exec.
    """
    env = os.environ if environ is None else environ
    try:
        owner = int(env.get("LISTEN_PID", ""))
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if owner != (os.getpid() if pid is None else pid) or count <= 0:
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds
