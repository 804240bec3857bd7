"""Certificate expiry: bbproxy.x509 read against OpenSSL's own reading, the warning and error
lines, --check-config's account of a chain, and the dates given to the metrics."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import logging
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbproxy.certificates import CertPair
from bbproxy.expiry import describe, problems, read_chains, watch
from bbproxy.expiry_metrics import CertExpiry
from bbproxy.metrics import NullMetrics
from bbproxy.settings import Address, Settings, TlsPolicy
from bbproxy.x509 import X509Error, parse_der, parse_pem_chain

from .cert_factory import CROSS_NAME, ROOT_NAME, Chain, days_from_now, make_chain

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
# The GlobalSign cross-sign of GTS Root R1 (issue 21): the date a legacy chain may break on.
CROSS_SIGN_END = datetime(2028, 1, 28, tzinfo=UTC)


def settings_for(cert: Path, key: Path, **tls: object) -> Settings:
    return Settings(
        listen=(Address("127.0.0.1", 5222),),
        direct_tls_listen=(),
        backend=Address("127.0.0.1", 5200),
        domains=("example.test",),
        min_tls="1.0",
        cert=CertPair(cert, key),
        tls=TlsPolicy(**tls),  # type: ignore[arg-type]
    )


def pem_blocks(path: Path) -> list[bytes]:
    return re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", path.read_bytes(), re.S)


def openssl_reads(block: bytes) -> dict[str, str]:
    """What ``openssl x509`` says: subject, issuer, notBefore, notAfter (OpenSSL in tests only)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    names = "sep_comma_plus_space,sname,utf8,esc_ctrl"
    result = subprocess.run(
        [openssl, "x509", "-noout", "-subject", "-issuer", "-startdate", "-enddate", "-dateopt", "iso_8601",
         "-nameopt", names],
        input=block, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return dict(line.split("=", 1) for line in result.stdout.decode().splitlines())


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa", "ed25519"])
@pytest.mark.parametrize("days", [10, -3, 30000])  # 30000: after 2049, a GeneralizedTime
def test_x509_reads_what_openssl_reads(tmp_path: Path, key_type: str, days: int) -> None:
    chain = make_chain(tmp_path, "c", leaf_not_after=days_from_now(days), key_type=key_type)
    infos = parse_pem_chain(chain.cert.read_bytes())
    assert len(infos) == 2
    for block, info in zip(pem_blocks(chain.cert), infos, strict=True):
        theirs = openssl_reads(block)
        assert info.subject == theirs["subject"]
        assert info.issuer == theirs["issuer"]
        assert f"{info.not_before:%Y-%m-%d %H:%M:%S}Z" == theirs["notBefore"]
        assert f"{info.not_after:%Y-%m-%d %H:%M:%S}Z" == theirs["notAfter"]
    assert infos[0].not_after == chain.leaf_not_after
    assert infos[0].key_type == key_type
    assert infos[1].key_type == "ecdsa"
    assert not infos[0].self_issued and not infos[1].self_issued


def test_x509_reads_the_system_roots_as_openssl_does() -> None:
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.exists():
        pytest.skip("no system CA bundle")
    infos = parse_pem_chain(bundle.read_bytes())
    blocks = pem_blocks(bundle)
    assert len(infos) == len(blocks) > 50
    for block, info in list(zip(blocks, infos, strict=True))[::10]:  # every tenth: openssl is slow
        theirs = openssl_reads(block)
        assert (info.subject, f"{info.not_after:%Y-%m-%d %H:%M:%S}Z") == (
            theirs["subject"],
            theirs["notAfter"],
        )
    assert all(info.self_issued for info in infos[:20])  # roots


def test_no_certificate_and_bad_base64_are_one_line_errors() -> None:
    with pytest.raises(X509Error, match="no PEM certificate found"):
        parse_pem_chain(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(X509Error, match="certificate 1: not valid base64"):
        parse_pem_chain(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")


def test_every_truncation_of_a_certificate_is_an_x509_error(tmp_path: Path) -> None:
    chain = make_chain(tmp_path, "c", leaf_not_after=days_from_now(10), key_type="ecdsa")
    der = base64.b64decode(b"".join(pem_blocks(chain.cert)[0].splitlines()[1:-1]))
    parse_der(der)
    for length in range(len(der)):
        with pytest.raises(X509Error):
            parse_der(der[:length])
    with pytest.raises(X509Error, match="trailing bytes"):
        parse_der(der + b"\x00")


@functools.cache
def sample_der() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        chain = make_chain(Path(directory), "c", leaf_not_after=days_from_now(10), key_type="ecdsa")
        return base64.b64decode(b"".join(pem_blocks(chain.cert)[0].splitlines()[1:-1]))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_certificates_give_only_x509_errors(data: st.DataObject) -> None:
    der = bytearray(sample_der())
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    tail = data.draw(st.binary(max_size=40))
    with contextlib.suppress(X509Error):
        parse_der(bytes(der) + tail)


# -- warnings, errors, --check-config -------------------------------------------------------


def test_a_leaf_within_the_warning_days_is_a_warning_and_an_expired_one_an_error(tmp_path: Path) -> None:
    soon = make_chain(tmp_path, "soon", leaf_not_after=NOW + 10 * DAY + timedelta(hours=1))
    chains, errors = read_chains(settings_for(soon.cert, soon.key))
    assert errors == ()
    found = problems(chains, NOW, 21)
    assert len(found) == 1
    level, line = found[0]
    assert level == logging.WARNING
    assert line.startswith(
        f"default certificate (rsa, {soon.cert}): the leaf C=BE, O=bbproxy tests, CN=example.test"
    )
    assert f"expires {soon.leaf_not_after:%Y-%m-%d %H:%M:%S} UTC (in 10 day(s))" in line
    assert problems(chains, NOW, 10) == []  # 10 days and an hour is beyond a 10-day warning
    assert problems(chains, NOW, 0) == []

    gone = make_chain(tmp_path, "gone", leaf_not_after=NOW - 3 * DAY - timedelta(hours=1))
    chains, _ = read_chains(settings_for(gone.cert, gone.key))
    for warn_days in (0, 21):
        [(level, line)] = problems(chains, NOW, warn_days)
        assert level == logging.ERROR
        assert "the leaf C=BE, O=bbproxy tests, CN=example.test expired" in line
        assert line.endswith("UTC (3 day(s) ago): clients refuse this chain")


def test_a_cross_sign_that_expires_first_is_the_weakest_link(tmp_path: Path) -> None:
    chain = make_chain(
        tmp_path,
        "legacy",
        leaf_not_after=datetime(2028, 4, 1, tzinfo=UTC),
        intermediate_not_after=CROSS_SIGN_END,
    )
    config = settings_for(chain.cert, chain.key, legacy_cert=CertPair(chain.cert, chain.key))
    chains, _ = read_chains(config)
    legacy = next(c for c in chains if c.chain == "legacy")
    assert legacy.weakest.not_after == CROSS_SIGN_END
    now = datetime(2028, 1, 10, tzinfo=UTC)  # 18 days before the cross-sign ends
    [(level, line)] = problems((legacy,), now, 21)
    assert level == logging.WARNING
    assert line == (
        f"legacy chain (rsa, {chain.cert}): certificate 2 of 2, C=BE, O=bbproxy tests, CN={CROSS_NAME} "
        f"(issued by C=BE, O=bbproxy tests, CN={ROOT_NAME}), expires 2028-01-28 00:00:00 UTC (in 18 day(s)), "
        "before the leaf (2028-04-01)"
    )
    lines = describe(legacy, now)
    assert lines[0] == f"legacy chain (rsa, {chain.cert}): 2 certificate(s)"
    assert (
        lines[1]
        == "  leaf: C=BE, O=bbproxy tests, CN=example.test, expires 2028-04-01 00:00:00 UTC (in 82 day(s))"
    )
    assert lines[2] == (
        f"  ends at: C=BE, O=bbproxy tests, CN={CROSS_NAME}, expires 2028-01-28 00:00:00 UTC (in 18 day(s)); "
        f"clients must trust its issuer C=BE, O=bbproxy tests, CN={ROOT_NAME}"
    )
    assert lines[3] == (
        f"  weakest link: C=BE, O=bbproxy tests, CN={CROSS_NAME} (issued by C=BE, O=bbproxy tests, "
        f"CN={ROOT_NAME}), expires 2028-01-28 00:00:00 UTC (in 18 day(s))"
    )
    assert legacy.expiry() == CertExpiry(
        "legacy", "", "rsa", datetime(2028, 4, 1, tzinfo=UTC).timestamp(), CROSS_SIGN_END.timestamp()
    )


def test_a_root_in_the_file_is_named_as_the_end(tmp_path: Path) -> None:
    chain = make_chain(tmp_path, "c", leaf_not_after=NOW + 90 * DAY, root_in_file=True)
    [served], _ = read_chains(settings_for(chain.cert, chain.key))
    lines = describe(served, NOW)
    assert lines[2].startswith(f"  ends at: the root C=BE, O=bbproxy tests, CN={ROOT_NAME}, sent in the file")
    assert lines[3] == "  weakest link: the leaf"


def test_one_chain_per_key_type_and_unreadable_files_are_named(tmp_path: Path) -> None:
    first = make_chain(tmp_path, "first", leaf_not_after=NOW + 50 * DAY)
    second = make_chain(tmp_path, "second", leaf_not_after=NOW + 60 * DAY)
    ecdsa = make_chain(tmp_path, "ecdsa", leaf_not_after=NOW + 70 * DAY, key_type="ecdsa")
    config = dataclasses.replace(
        settings_for(first.cert, first.key),
        cert=(
            CertPair(first.cert, first.key),
            CertPair(second.cert, second.key),
            CertPair(ecdsa.cert, ecdsa.key),
        ),
        certificates={
            "example.test": CertPair(ecdsa.cert, ecdsa.key),
            "unserved.test": CertPair(first.cert, first.key),
        },
    )
    chains, errors = read_chains(config)
    assert errors == ()
    # OpenSSL keeps the last certificate of each key type; unserved.test is not in domains.
    assert [(c.chain, c.domain, c.leaf.key_type, c.path) for c in chains] == [
        ("default", "", "rsa", second.cert),
        ("default", "", "ecdsa", ecdsa.cert),
        ("domain", "example.test", "ecdsa", ecdsa.cert),
    ]
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    config = settings_for(
        tmp_path / "garbage.crt", first.key, legacy_cert=CertPair(tmp_path / "none.crt", first.key)
    )
    assert read_chains(config) == (
        (),
        (
            f"cannot read the expiry dates of {tmp_path / 'garbage.crt'}: no PEM certificate found",
            f"cannot read the expiry dates of {tmp_path / 'none.crt'}: No such file or directory",
        ),
    )


class Recording(NullMetrics):
    __slots__ = ("given",)

    def __init__(self) -> None:
        self.given: list[tuple[CertExpiry, ...]] = []

    def certificates(self, expiries: tuple[CertExpiry, ...]) -> None:
        self.given.append(expiries)


def test_watch_logs_one_line_per_certificate_and_gives_the_dates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main = make_chain(tmp_path, "main", leaf_not_after=NOW + 5 * DAY, intermediate_not_after=NOW - DAY)
    legacy: Chain = make_chain(tmp_path, "legacy", leaf_not_after=NOW + 400 * DAY)
    config = settings_for(main.cert, main.key, legacy_cert=CertPair(legacy.cert, legacy.key))
    recorder = Recording()
    with caplog.at_level(logging.INFO, logger="bbproxy"):
        watch(config, recorder, NOW)
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in records] == [logging.WARNING, logging.ERROR]
    assert "the leaf" in records[0][1] and "certificate 2 of 2" in records[1][1]
    assert recorder.given == [
        (
            CertExpiry(
                "default", "", "rsa", main.leaf_not_after.timestamp(), main.intermediate_not_after.timestamp()
            ),
            CertExpiry(
                "legacy", "", "rsa", legacy.leaf_not_after.timestamp(), legacy.leaf_not_after.timestamp()
            ),
        )
    ]
