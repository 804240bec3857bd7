"""Helpers for the legacy-chain checks: verifying clients, pebble's roots, the role run again."""

from __future__ import annotations

import json
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest

from support import Scenario, authenticate, file_fingerprint, fingerprint_of, open_session, run_ok

ROOT_DEFAULT = "/etc/pebble/root-0.pem"  # the default chain's root: the main certificate's
ROOT_ALTERNATE = "/etc/pebble/root-1.pem"  # pebble's alternate chain (prepare.yml)


def verifying_context(cafile: Path, *, legacy: bool) -> ssl.SSLContext:
    """A client that trusts only CAFILE and checks the name: TLS 1.0 like a BlackBerry 10, or TLS 1.3."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(cafile))
    version = ssl.TLSVersion.TLSv1 if legacy else ssl.TLSVersion.TLSv1_3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    if legacy:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def login(scenario: Scenario, cafile: Path, *, legacy: bool) -> str:
    """Log in through the proxy trusting only CAFILE; the fingerprint of the leaf it validated."""
    session = open_session(scenario, verifying_context(cafile, legacy=legacy))
    try:
        assert session.version() == ("TLSv1" if legacy else "TLSv1.3"), session.version()
        reply = authenticate(session, scenario.users[0])
        assert b"<success" in reply, reply
        return fingerprint_of(session)
    finally:
        session.close()


def refused(scenario: Scenario, cafile: Path, *, legacy: bool) -> bool:
    """Does a client trusting only CAFILE reject the chain it is served?"""
    try:
        open_session(scenario, verifying_context(cafile, legacy=legacy)).close()
    except ssl.SSLCertVerificationError:
        return True
    return False


def main_fingerprint(host: Any, domain: str) -> str:
    """The proxy's copy of DOMAIN's own certificate (not the lineage: the role copies Prosody's store,
    which test_20's last renewal, whose key went missing, left at the previous certificate)."""
    return file_fingerprint(host, f"/etc/bbproxy/certs/{domain}.crt")


def fetch(host: Any, path: str, directory: Path) -> Path:
    """A copy of the container's PEM file PATH on the host (the clients run there)."""
    copy = directory / Path(path).name
    copy.write_text(run_ok(host, f"cat {path}"))
    return copy


def common_name(host: Any, path: str) -> str:
    subject = run_ok(host, f"openssl x509 -noout -subject -nameopt multiline -in {path}")
    names = [line.split("=", 1)[1].strip() for line in subject.splitlines() if "commonName" in line]
    assert names, subject
    return names[0]


def pebble_eab(host: Any) -> tuple[str, str]:
    """The EAB key ID and HMAC key pebble requires (prepare.yml's test-only pair)."""
    config = json.loads(run_ok(host, "cat /etc/pebble/pebble-config.json"))["pebble"]
    keys = config["externalAccountMACKeys"]
    assert config["externalAccountBindingRequired"] is True and len(keys) == 1, config
    return next(iter(keys.items()))


@pytest.fixture(scope="module")
def roots(host: Any, tmp_path_factory: Any) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pebble-roots")
    return {"default": fetch(host, ROOT_DEFAULT, directory), "alternate": fetch(host, ROOT_ALTERNATE, directory)}
