"""Settings: TOML + flags merge, and every bad value named in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bbproxy.config import Address, ConfigError, build_parser, parse_address, settings_from_args


def settings(argv: list[str], toml: str | None = None, tmp_path: Path | None = None):  # type: ignore[no-untyped-def]
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "bbproxy.toml"
        path.write_text(toml)
        argv = [*argv, "--config", str(path)]
    return settings_from_args(build_parser().parse_args(argv))


BASE = ["--cert", "c.pem", "--key", "k.pem", "--domain", "example.test"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5222", Address("127.0.0.1", 5222)),
        ("[::]:5222", Address("::", 5222)),
        ("[::1]:5200", Address("::1", 5200)),
        ("localhost:80", Address("localhost", 80)),
    ],
)
def test_addresses(text: str, expected: Address) -> None:
    assert parse_address(text, "listen") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("127.0.0.1", "is not HOST:PORT"),
        ("::1:5222", "write IPv6 as [::1]:5222"),
        ("127.0.0.1:70000", "out of range"),
        ("127.0.0.1:http", "no valid port"),
        ("[nothex]:5222", "not an IPv6 address"),
        (":5222", "has no host"),
    ],
)
def test_bad_addresses_name_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        parse_address(text, "listen")
    assert str(info.value).startswith("listen:")


def test_defaults() -> None:
    s = settings(BASE)
    assert [str(a) for a in s.listen] == ["0.0.0.0:5222", "[::]:5222"]
    assert str(s.backend) == "127.0.0.1:5200"
    assert s.min_tls == "1.0" and s.direct_tls_listen == ()
    assert s.limits.max_connections > 0


def test_flags_override_the_file(tmp_path: Path) -> None:
    toml = """
listen = ["127.0.0.1:6222"]
backend = "127.0.0.1:6200"
domains = ["a.test", "b.test"]
min_tls = "1.2"
cert = "/file.crt"
key = "/file.key"
[certificates."b.test"]
cert = "/b.crt"
key = "/b.key"
[limits]
pre_tls_timeout = 5
max_connections = 50
"""
    s = settings(["--listen", "127.0.0.1:7222", "--min-tls", "1.0"], toml, tmp_path)
    assert [str(a) for a in s.listen] == ["127.0.0.1:7222"]
    assert str(s.backend) == "127.0.0.1:6200"
    assert s.domains == ("a.test", "b.test")
    assert s.min_tls == "1.0"
    assert s.cert.cert == Path("/file.crt")
    assert s.certificates["b.test"].key == Path("/b.key")
    assert s.limits.pre_tls_timeout == 5.0 and isinstance(s.limits.pre_tls_timeout, float)
    assert s.limits.max_connections == 50


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("lsiten = ['127.0.0.1:1']", "unknown key 'lsiten'"),
        ("[limits]\nmax_conections = 1", "limits: unknown key 'max_conections'"),
        ("[limits]\nmax_connections = 1.5", "limits.max_connections: expected a whole number"),
        ("[limits]\npre_tls_timeout = -1", "limits.pre_tls_timeout: must be greater than 0"),
        ("[limits]\npre_tls_timeout = true", "limits.pre_tls_timeout: expected a number"),
        ("min_tls = '1.4'", "min_tls: must be one of"),
        ("min_tls = 1.0", "min_tls: must be one of"),
        ("log_level = 'loud'", "log_level: must be one of"),
        ("listen = 5222", "listen: expected a list of strings"),
        ("backend = '127.0.0.1'", "backend:"),
        ("[certificates.'other.test']\ncert = 'a'\nkey = 'b'", "not one of the served domains"),
        ("[certificates.'example.test']\ncert = 'a'", "needs both cert and key"),
        ("listen = ['127.0.0.1:5222', '127.0.0.1:5222']", "listed twice"),
        ("this is not toml", "invalid TOML"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        settings(BASE, toml, tmp_path)
    assert "\n" not in str(info.value)


def test_missing_essentials() -> None:
    with pytest.raises(ConfigError, match="domains: at least one domain"):
        settings(["--cert", "c", "--key", "k"])
    with pytest.raises(ConfigError, match="cert: a certificate is needed"):
        settings(["--domain", "example.test"])
    with pytest.raises(ConfigError, match="key: a private key is needed"):
        settings(["--domain", "example.test", "--cert", "c"])


def test_domains_are_normalised_and_validated() -> None:
    s = settings(["--cert", "c", "--key", "k", "--domain", "Example.TEST.", "--domain", "example.test"])
    assert s.domains == ("example.test",)
    with pytest.raises(ConfigError, match="domains: 'bad domain' is not a valid domain name"):
        settings(["--cert", "c", "--key", "k", "--domain", "bad domain"])


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        settings([*BASE, "--config", str(tmp_path / "nope.toml")])
