"""Settings: TOML + flags merge, and every bad value named in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bbproxy.config import build_parser, settings_from_args
from bbproxy.settings import Address, ConfigError, parse_address


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
    # Per-IP limits are on (sized for carrier NAT, docs/configuration.md), IPv6 counted per /64.
    assert (s.limits.max_connections_per_ip, s.limits.connect_rate_per_ip, s.limits.ipv6_prefix) == (
        100,
        120,
        64,
    )


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
        ("[limits]\nipv6_prefix = 16", "limits.ipv6_prefix: must be from 32 to 128"),
        ("[limits]\nipv6_prefix = 129", "limits.ipv6_prefix: must be from 32 to 128"),
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


def test_tls_policy_defaults_terminate_everyone_and_allow_legacy_from_anywhere() -> None:
    tls = settings(BASE).tls
    assert tls.routing == "terminate-all" and str(tls.backend) == "127.0.0.1:5202"
    assert tls.splice == "direct-tls"
    assert [str(n) for n in tls.legacy_networks] == ["0.0.0.0/0", "::/0"]
    assert not tls.legacy_ja3 and not tls.legacy_plain_rsa
    assert tls.expiry_warning_days == 21


def test_tls_policy_from_toml_and_flags(tmp_path: Path) -> None:
    toml = """
[tls]
routing = "legacy-only"
backend = "127.0.0.1:5301"
splice = "starttls"
legacy_networks = ["192.0.2.0/24", "2001:db8::/32"]
legacy_ja3 = ["0123456789ABCDEF0123456789abcdef"]
legacy_plain_rsa = true
expiry_warning_days = 0
"""
    tls = settings(BASE, toml, tmp_path).tls
    assert tls.expiry_warning_days == 0
    assert tls.routing == "legacy-only" and str(tls.backend) == "127.0.0.1:5301"
    assert tls.splice == "starttls"
    assert [str(n) for n in tls.legacy_networks] == ["192.0.2.0/24", "2001:db8::/32"]
    assert tls.legacy_ja3 == {"0123456789abcdef0123456789abcdef"} and tls.legacy_plain_rsa
    flags = ["--tls-routing", "terminate-all", "--tls-backend", "[::1]:5202", "--tls-splice", "direct-tls"]
    flagged = settings([*BASE, *flags], toml, tmp_path)
    assert flagged.tls.routing == "terminate-all" and str(flagged.tls.backend) == "[::1]:5202"
    assert flagged.tls.splice == "direct-tls"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('routing = "all"', "tls.routing: must be one of terminate-all, legacy-only"),
        ('backend = "5202"', "tls.backend:"),
        ('splice = "proxy"', "tls.splice: must be one of direct-tls, starttls"),
        ('legacy_networks = ["10.0.0.0/33"]', "tls.legacy_networks: '10.0.0.0/33' is not"),
        ('legacy_ja3 = ["abc"]', "tls.legacy_ja3: 'abc' is not a JA3 hash"),
        ('legacy_plain_rsa = "yes"', "tls.legacy_plain_rsa: expected true or false"),
        ("legacy = true", "tls: unknown key 'legacy'"),
        ("expiry_warning_days = -1", "tls.expiry_warning_days: expected a number of days, 0-3650, got -1"),
        ("expiry_warning_days = 2.5", "tls.expiry_warning_days: expected a number of days"),
        ("expiry_warning_days = true", "tls.expiry_warning_days: expected a number of days"),
        ('routing = "legacy-only"\nbackend = "127.0.0.1:5200"', "not the plaintext backend"),
    ],
)
def test_bad_tls_policy_is_named(table: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings(BASE, f"[tls]\n{table}\n", tmp_path)


def test_the_documented_toml_example_is_valid(tmp_path: Path) -> None:
    """docs/configuration.md's example must parse: keys, tables and values as documented."""
    doc = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()
    match = re.search(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert match is not None, "no ```toml block in docs/configuration.md"
    s = settings([], match.group(1), tmp_path)
    assert s.tls.routing == "terminate-all" and str(s.tls.backend) == "127.0.0.1:5202"
    assert "chat.example.net" in s.certificates and s.limits.max_connections == 10000


def test_certificates_per_key_type_and_a_legacy_chain(tmp_path: Path) -> None:
    toml = """
cert = ["rsa.crt", "ecdsa.crt"]
key = ["rsa.key", "ecdsa.key"]
[tls]
legacy_cert = "old-root.crt"
legacy_key = "old-root.key"
[certificates."example.test"]
cert = ["a.crt", "b.crt"]
key = ["a.key", "b.key"]
"""
    s = settings(["--domain", "example.test"], toml, tmp_path)
    assert isinstance(s.cert, tuple) and [str(p.cert) for p in s.cert] == ["rsa.crt", "ecdsa.crt"]
    assert isinstance(s.certificates["example.test"], tuple)
    assert s.tls.legacy_cert is not None and not isinstance(s.tls.legacy_cert, tuple)
    assert str(s.tls.legacy_cert.key) == "old-root.key"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('cert = ["a", "b"]\nkey = ["a"]', "cert and key: one path each, or two lists of the same length"),
        ('cert = ["a", "b", "c"]\nkey = ["a", "b", "c"]', "at most two"),
        ('cert = "c"\nkey = "k"\n[tls]\nlegacy_cert = "x"', "tls.legacy_cert and tls.legacy_key: set both"),
        (
            'cert = "c"\nkey = "k"\nmin_tls = "1.2"\n[tls]\nlegacy_cert = "x"\nlegacy_key = "y"',
            "min_tls = '1.2'",
        ),
    ],
)
def test_bad_certificate_lists_are_named(toml: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings(["--domain", "example.test"], toml, tmp_path)
