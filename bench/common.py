"""What every part of the benchmark shares: the one address, the domain, the TLS policy of every
TLS peer, the error type, certificates and free ports.

`free_port()` and `make_certs()` are the benchmark's only copies of these (run.py's parts and
profile_session.py use them from here); the shared test kit is to replace them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from servers import LEGACY, MODERN  # bench/servers.py: bbproxy's TLS policy, shared by every TLS peer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"  # every socket in this benchmark; never anything else
DOMAIN = "example.test"
CIPHERS = f"{MODERN}:{LEGACY}:@SECLEVEL=0"  # TLS <= 1.2 suites of every TLS peer; TLS 1.3 defaults


class BenchError(Exception):
    """A set-up step failed; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Cert:
    kind: str  # "ecdsa" or "rsa"
    chain: Path  # leaf + CA, as a real deployment sends leaf + intermediate
    key: Path


def make_certs(workdir: Path) -> dict[str, Cert]:
    """ECDSA P-256 and RSA-2048 chains (CA -> leaf for example.test) with the openssl CLI."""
    if not shutil.which("openssl"):
        raise BenchError("openssl not found (apt-get install openssl)")
    certs = {}
    for kind, newkey in (
        ("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("rsa", ["-newkey", "rsa:2048"]),
    ):
        d = workdir / kind
        d.mkdir()
        common = ["openssl", "req", "-x509", "-nodes", "-days", "2", *newkey]
        subprocess.run(
            [
                *common,
                "-keyout",
                d / "ca.key",
                "-out",
                d / "ca.pem",
                "-subj",
                f"/CN=bbproxy bench {kind} CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *common,
                "-keyout",
                d / "leaf.key",
                "-out",
                d / "leaf.pem",
                "-subj",
                f"/CN={DOMAIN}",
                "-addext",
                f"subjectAltName=DNS:{DOMAIN}",
                "-addext",
                "basicConstraints=CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth",
                "-CA",
                d / "ca.pem",
                "-CAkey",
                d / "ca.key",
            ],
            check=True,
            capture_output=True,
        )
        (d / "chain.pem").write_bytes((d / "leaf.pem").read_bytes() + (d / "ca.pem").read_bytes())
        certs[kind] = Cert(kind, d / "chain.pem", d / "leaf.key")
    return certs
