"""Certificate chains with chosen dates, for the expiry tests (not a test module).

trustme sets a leaf's not_after but not an intermediate's, and the case that matters is a
cross-sign that expires before the leaf; so these are made with ``cryptography`` (in the dev
venv only: the proxy itself reads certificates with the standard library, bbproxy.x509).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
ROOT_NAME = "Old Root CA"
CROSS_NAME = "Cross-Sign CA"


@dataclasses.dataclass(frozen=True)
class Chain:
    cert: Path  # leaf, then the intermediate (and the root with root_in_file)
    key: Path
    root: Path  # the root alone, for a client's trust store
    leaf_not_after: datetime
    intermediate_not_after: datetime


def new_key(key_type: str) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(key_type)


def name(common_name: str, organization: str = "bbproxy tests") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "BE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def certificate(
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    not_after: datetime,
    *,
    ca: bool,
    dns: str | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(not_after, datetime.now(UTC)) - timedelta(days=400))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_chain(
    directory: Path,
    stem: str,
    *,
    leaf_not_after: datetime,
    intermediate_not_after: datetime | None = None,
    key_type: str = "rsa",
    dns: str = "example.test",
    root_in_file: bool = False,
) -> Chain:
    """Root -> intermediate ("cross-sign") -> leaf; the files hold leaf + intermediate, as served."""
    far = datetime.now(UTC) + timedelta(days=3650)
    root_key, inter_key, leaf_key = new_key("ecdsa"), new_key("ecdsa"), new_key(key_type)
    root = certificate(name(ROOT_NAME), root_key, name(ROOT_NAME), root_key, far, ca=True)
    inter_after = intermediate_not_after or far
    inter = certificate(name(CROSS_NAME), inter_key, name(ROOT_NAME), root_key, inter_after, ca=True)
    leaf = certificate(name(dns), leaf_key, name(CROSS_NAME), inter_key, leaf_not_after, ca=False, dns=dns)
    cert_path, key_path, root_path = (directory / f"{stem}{ext}" for ext in (".crt", ".key", "-root.pem"))
    cert_path.write_bytes(pem(leaf) + pem(inter) + (pem(root) if root_in_file else b""))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    root_path.write_bytes(pem(root))
    return Chain(cert_path, key_path, root_path, leaf.not_valid_after_utc, inter.not_valid_after_utc)


def days_from_now(days: float) -> datetime:
    """A notAfter ``days`` from now, to the second (certificates carry no fractions)."""
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)
