"""``bbproxy --check-config``: exit 0 for a good configuration, else non-zero and one line naming
the problem (and never a traceback)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from .support import DOMAIN, LOOPBACK, Certs, run_proxy_once, write_toml

pytestmark = pytest.mark.integration


def base_args(certs: Certs, **override: str) -> list[str]:
    options = {
        "--listen": f"{LOOPBACK}:5222",
        "--backend": f"{LOOPBACK}:5200",
        "--cert": str(certs.rsa.cert),
        "--key": str(certs.rsa.key),
        "--domain": DOMAIN,
    }
    options.update(override)
    args = ["--check-config"]
    for flag, value in options.items():
        args += [flag, value]
    return args


def check(args: list[str]) -> tuple[int, list[str], str]:
    result = run_proxy_once(args)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, [line for line in output.splitlines() if line.strip()], output


def assert_refused(args: list[str], *names: str) -> None:
    status, lines, output = check(args)
    assert status != 0, output
    assert len(lines) == 1, f"expected one line, got:\n{output}"
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"


def good_toml(certs: Certs) -> dict[str, Any]:
    return {
        "listen": [f"{LOOPBACK}:5222"],
        "backend": f"{LOOPBACK}:5200",
        "domains": [DOMAIN],
        "cert": str(certs.rsa.cert),
        "key": str(certs.rsa.key),
    }


def test_good_configuration(certs: Certs) -> None:
    status, lines, output = check(base_args(certs))
    assert status == 0, output
    assert lines[0].startswith("bbproxy: configuration OK"), output
    # Then the served chain: name, leaf, where it ends, weakest link (test_certificate_expiry.py).
    assert lines[1] == f"default certificate (rsa, {certs.rsa.cert}): 2 certificate(s)", output
    assert len(lines) == 5, output


def test_good_toml_configuration(certs: Certs, tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "bbproxy.toml",
        {
            "listen": [f"{LOOPBACK}:5222", "[::1]:5222"],
            "direct_tls_listen": [f"{LOOPBACK}:5223"],
            "backend": f"{LOOPBACK}:5200",
            "domains": [DOMAIN],
            "min_tls": "1.0",
            "cert": str(certs.ecdsa.cert),
            "key": str(certs.ecdsa.key),
            "limits": {"pre_tls_timeout": 1.0, "max_connections": 100},
        },
    )
    status, _, output = check(["--check-config", "--config", str(config)])
    assert status == 0, output


def test_good_toml_alone(certs: Certs, tmp_path: Path) -> None:
    """The base of test_bad_toml passes on its own."""
    status, _, output = check(
        ["--check-config", "--config", str(write_toml(tmp_path / "g.toml", good_toml(certs)))]
    )
    assert status == 0, output


def test_check_config_does_not_listen(certs: Certs) -> None:
    """The listen port is taken by someone else: --check-config must still pass (it never binds)."""
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        status, _, output = check(base_args(certs, **{"--listen": f"{LOOPBACK}:{port}"}))
    assert status == 0, output


def test_missing_certificate_file(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    assert_refused(base_args(certs, **{"--cert": str(missing)}), str(missing))


def test_missing_key_file(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    assert_refused(base_args(certs, **{"--key": str(missing)}), str(missing))


def test_key_does_not_match_certificate(certs: Certs) -> None:
    assert_refused(
        base_args(certs, **{"--key": str(certs.other_key)}), "does not match", str(certs.other_key)
    )


def test_key_of_another_type_does_not_match_certificate(certs: Certs) -> None:
    assert_refused(
        base_args(certs, **{"--cert": str(certs.ecdsa.cert), "--key": str(certs.rsa.key)}), "does not match"
    )


def test_certificate_is_not_pem(certs: Certs, tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    assert_refused(base_args(certs, **{"--cert": str(junk)}), str(junk))


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--listen", f"{LOOPBACK}:99999"),
        ("--listen", f"{LOOPBACK}:0"),
        ("--listen", f"{LOOPBACK}:http"),
        ("--listen", "127.0.0.1"),
        ("--backend", f"{LOOPBACK}:70000"),
        ("--direct-tls-listen", "[::1:5223"),
    ],
)
def test_bad_address(certs: Certs, flag: str, value: str) -> None:
    assert_refused(base_args(certs, **{flag: value}), flag.lstrip("-").replace("-", "_"))


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"listen_port": 5222}, ("listen_port",)),
        ({"limits": {"pre_tls_timeot": 1.0}}, ("pre_tls_timeot",)),
        ({"limits": {"pre_tls_timeout": "soon"}}, ("pre_tls_timeout",)),
        ({"limits": {"max_connections": -1}}, ("max_connections",)),
        ({"certificates": {DOMAIN: {"cert": "/x.crt", "key": "/x.key", "chain": "/y"}}}, ("chain",)),
        ({"min_tls": "1.4"}, ("min_tls",)),
        ({"loop": "twisted"}, ("loop",)),
        ({"backend": 5200}, ("backend",)),
        ({"listen": ["127.0.0.1:99999"]}, ("listen",)),
        ({"domains": []}, ("domains",)),
    ],
    ids=[
        "unknown-key",
        "unknown-limit",
        "limit-type",
        "limit-range",
        "unknown-cert-key",
        "min-tls",
        "loop",
        "backend-type",
        "listen-port",
        "no-domains",
    ],
)
def test_bad_toml(certs: Certs, tmp_path: Path, config: dict[str, Any], names: tuple[str, ...]) -> None:
    """Only --config on the command line, so every value comes from the file."""
    path = write_toml(tmp_path / "bbproxy.toml", {**good_toml(certs), **config})
    assert_refused(["--check-config", "--config", str(path)], *names)


def test_toml_syntax_error(certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("listen = [\n")
    assert_refused([*base_args(certs), "--config", str(path)], str(path))


def test_missing_config_file(certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert_refused([*base_args(certs), "--config", str(path)], str(path))
