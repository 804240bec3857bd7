"""docs/legacy-certificates.md, option B, as written: a private CA for the legacy listener (issue 21).

The shell block under "B. A private CA for the legacy listener" is run unchanged with bash in a
temporary directory (DOMAIN set to the test domain), and the proxy serves what it makes as
``tls.legacy_cert``. Then, through a real Prosody:

* a TLS 1.0 client whose trust store holds ONLY that private CA validates the chain and logs in;
* a TLS 1.3 client trusting only the main CA logs in (modern clients keep the main chain), and
  one trusting only the private CA fails verification (they never see the private chain);
* the DER file device owners import is the CA certificate.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .support import DOMAIN, REPO_ROOT, Certs, Prosody, ProxyFactory, run_login_check

pytestmark = pytest.mark.integration

GUIDE = REPO_ROOT / "docs" / "legacy-certificates.md"


def documented_commands() -> str:
    section = GUIDE.read_text(encoding="utf-8").split("### B. A private CA for the legacy listener", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no ```sh block under option B in {GUIDE}"
    return match.group(1)


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("legacy-ca")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", documented_commands()],
        cwd=directory,
        env={"PATH": "/usr/bin:/bin", "DOMAIN": DOMAIN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"the guide's commands failed:\n{done.stdout}{done.stderr}"
    for name in ("legacy-chain.crt", "legacy.key", "legacy-ca.crt", "legacy-ca.cer"):
        assert (directory / name).is_file(), f"the guide's commands made no {name}"
    assert oct((directory / "legacy.key").stat().st_mode & 0o777) == "0o600"
    return directory


def test_a_tls10_client_trusting_only_the_private_ca_logs_in(
    private_ca: Path, prosody: Prosody, proxy_factory: ProxyFactory, certs: Certs
) -> None:
    tls = {"legacy_cert": str(private_ca / "legacy-chain.crt"), "legacy_key": str(private_ca / "legacy.key")}
    proxy = proxy_factory(backend=f"{prosody.host}:{prosody.port}", config={"tls": tls})
    ca = private_ca / "legacy-ca.crt"

    old = run_login_check(port=proxy.port, prosody=prosody, cafile=ca, tls="1.0", peer_tls="1.0")
    assert old.returncode == 0, f"TLS 1.0 with only the private CA:\n{old.output}"
    modern = run_login_check(port=proxy.port, prosody=prosody, cafile=certs.cafile, tls="1.3")
    assert modern.returncode == 0, f"TLS 1.3 with the main CA:\n{modern.output}"
    wrong = run_login_check(port=proxy.port, prosody=prosody, cafile=ca, tls="1.3", timeout=10)
    assert wrong.returncode != 0 and "certificate verify failed" in wrong.output.lower(), wrong.output


def test_the_file_devices_import_is_the_ca_certificate(private_ca: Path) -> None:
    def fingerprint(*args: str) -> str:
        out = subprocess.run(
            ["openssl", "x509", *args, "-noout", "-fingerprint", "-sha256"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    der = fingerprint("-inform", "DER", "-in", str(private_ca / "legacy-ca.cer"))
    assert der == fingerprint("-in", str(private_ca / "legacy-ca.crt"))
