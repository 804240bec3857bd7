"""The rule that keeps a renewed certificate in place (roles/bbproxy/templates/newer_copy.sh.j2).

The role's copy tasks and the certbot deploy hook both ask ``newer_copy SOURCE COPY`` before they
copy a certificate source over the proxy's copy: after a renewal whose Prosody import did not run,
Prosody's store still holds the previous certificate, and copying it would put it back. Here the
snippet runs as the hook runs it (/bin/sh, the real openssl) against certificates made here with
chosen validity periods. ``make molecule-certbot`` checks the same with certbot, pebble and the role.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import jinja2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SNIPPET = Path(__file__).resolve().parents[2] / "roles" / "bbproxy" / "templates" / "newer_copy.sh.j2"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


def newer_copy(source: Path, copy: Path) -> tuple[int, str]:
    """(exit status, output) of the snippet as rendered by the role (no variables in it)."""
    script = jinja2.Template(SNIPPET.read_text()).render() + '\nnewer_copy "$1" "$2"\n'
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(source), str(copy)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.stderr == "", done.stderr
    return done.returncode, done.stdout.strip()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Issuer:
    """A CA that signs leaves for one domain with any validity period."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name("newer_copy test CA")

    def leaf(self, file: str, not_before: datetime.datetime, not_after: datetime.datetime, *, self_signed: bool = False) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("xmpp.example.test"))
            .issuer_name(_name("xmpp.example.test") if self_signed else self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("xmpp.example.test")]), critical=False)
        )
        cert = builder.sign(key if self_signed else self.key, hashes.SHA256())
        path = self.directory / file
        # A chain file, as certbot's fullchain.pem: the leaf first, then something else.
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self._ca_pem())
        return path

    def _ca_pem(self) -> bytes:
        ca = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - 30 * DAY)
            .not_valid_after(NOW + 365 * DAY)
            .sign(self.key, hashes.SHA256())
        )
        return ca.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def test_a_copy_issued_after_its_source_is_kept(ca: Issuer) -> None:
    stale = ca.leaf("stale.crt", NOW - 60 * DAY, NOW + 30 * DAY)
    renewed = ca.leaf("renewed.crt", NOW - DAY, NOW + 89 * DAY)
    status, output = newer_copy(stale, renewed)
    assert status == 0
    assert output == f"{(NOW - 60 * DAY):%Y-%m-%d %H:%M:%S}Z;{(NOW - DAY):%Y-%m-%d %H:%M:%S}Z"


def test_a_source_issued_later_is_copied(ca: Issuer) -> None:
    older = ca.leaf("older.crt", NOW - 60 * DAY, NOW + 30 * DAY)
    renewed = ca.leaf("renewed.crt", NOW - DAY, NOW + 89 * DAY)
    assert newer_copy(renewed, older) == (1, "")


def test_the_same_certificate_is_copied(ca: Issuer) -> None:
    cert = ca.leaf("same.crt", NOW - DAY, NOW + 89 * DAY)
    assert newer_copy(cert, cert) == (1, "")


def test_issue_times_are_compared_to_the_second(ca: Issuer) -> None:
    first = ca.leaf("first.crt", NOW - DAY, NOW + 89 * DAY)
    second = ca.leaf("second.crt", NOW - DAY + datetime.timedelta(seconds=1), NOW + 89 * DAY)
    assert newer_copy(first, second)[0] == 0
    assert newer_copy(second, first)[0] == 1


def test_an_expired_copy_is_replaced(ca: Issuer) -> None:
    source = ca.leaf("source.crt", NOW - 60 * DAY, NOW + 30 * DAY)
    expired = ca.leaf("expired.crt", NOW - 10 * DAY, NOW - DAY)
    assert newer_copy(source, expired) == (1, "")


def test_a_self_signed_copy_is_replaced(ca: Issuer) -> None:
    """A demo's self-signed certificate never holds back the operator's real one."""
    real = ca.leaf("real.crt", NOW - 60 * DAY, NOW + 30 * DAY)
    demo = ca.leaf("demo.crt", NOW - DAY, NOW + 800 * DAY, self_signed=True)
    assert newer_copy(real, demo) == (1, "")


@pytest.mark.parametrize("broken", ["missing", "empty", "not a certificate"])
def test_an_unreadable_file_never_keeps_a_copy(ca: Issuer, tmp_path: Path, broken: str) -> None:
    """Whatever cannot be compared is copied as before (the copy and the proxy report real errors)."""
    good = ca.leaf("good.crt", NOW - DAY, NOW + 89 * DAY)
    bad = tmp_path / "bad.crt"
    if broken != "missing":
        bad.write_text("" if broken == "empty" else "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    assert newer_copy(bad, good) == (1, "")
    assert newer_copy(good, bad) == (1, "")
