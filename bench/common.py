"""What every part of the benchmark shares: the one address, the domain, the TLS policy of every
TLS peer, the error type, certificates and free ports.

`free_port()` is the test kit's; `make_certs()` wraps the kit's into the ``Cert`` shape the peers'
config writers take (one chain file and one key per key type).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import _path  # noqa: F401  (files/bbproxy on sys.path)
from servers import LEGACY, MODERN  # bench/servers.py: bbproxy's TLS policy, shared by every TLS peer
from tests import kit
from tests.kit import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"  # every socket in this benchmark; never anything else
DOMAIN = "example.test"
CIPHERS = f"{MODERN}:{LEGACY}:@SECLEVEL=0"  # TLS <= 1.2 suites of every TLS peer; TLS 1.3 defaults

__all__ = ["free_port"]  # re-exported: the bench modules import it from here


class BenchError(Exception):
    """A set-up step failed; the message says which and where its log is."""


@dataclass
class Cert:
    kind: str  # "ecdsa" or "rsa"
    chain: Path  # leaf + intermediate, as a real deployment sends
    key: Path


def make_certs(workdir: Path) -> dict[str, Cert]:
    """ECDSA P-256 and RSA-2048 chains for example.test from the test kit (trustme: a root, an
    intermediate of each key type, a leaf), in the shape the peers take: one Cert per key type."""
    certs = kit.make_certs(workdir, DOMAIN)
    return {kind: Cert(kind, certs.pair(kind).cert, certs.pair(kind).key) for kind in ("ecdsa", "rsa")}
