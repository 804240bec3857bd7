"""Fingerprint names (issue 20): JA4 as published, the shipped table, the operator's own names."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from bbproxy import fingerprints
from bbproxy.clienthello import ClientHello, ClientHelloParser
from bbproxy.fingerprints import FingerprintTableError, identify, ja4, load, parse_table

from .test_clienthello import python_hello

# A ClientHello with every JA4 input set by hand, and its JA4 worked out from FoxIO's description
# (JA4 technical details): t13 (supported_versions), d (SNI), 03 suites, 05 extensions (GREASE
# left out, SNI and ALPN counted), "h2" -> h2; b = sha256("1301,1302,c02b")[:12];
# c = sha256("000a,000d,002b_0403,0804")[:12] (SNI and ALPN left out, sorted; sigalgs in order).
HAND_MADE = ClientHello(
    legacy_version=0x0303,
    supported_versions=(0x0304, 0x0303),
    ciphers=(0x2A2A, 0x1302, 0xC02B, 0x1301),
    extensions=(0x0A0A, 0x002B, 0x0000, 0x000D, 0x0010, 0x000A),
    groups=(0x001D,),
    point_formats=(),
    sni="example.test",
    alpn=("h2", "http/1.1"),
    sigalgs=(0x0403, 0x0804),
)


def test_ja4_follows_the_published_recipe() -> None:
    import hashlib

    b = hashlib.sha256(b"1301,1302,c02b").hexdigest()[:12]
    c = hashlib.sha256(b"000a,000d,002b_0403,0804").hexdigest()[:12]
    assert ja4(HAND_MADE) == f"t13d0305h2_{b}_{c}"


def test_ja4_ignores_extension_order_and_grease_ja3_does_not() -> None:
    shuffled = ClientHello(
        **{**_fields(HAND_MADE), "extensions": (0x000A, 0x0010, 0x000D, 0x0000, 0x002B, 0x1A1A)}
    )
    assert ja4(shuffled) == ja4(HAND_MADE)
    assert shuffled.ja3() != HAND_MADE.ja3()


def test_ja4_of_a_tls10_hello_without_alpn() -> None:
    hello = ClientHelloParser().feed(python_hello(ssl.TLSVersion.TLSv1, sni=None))
    assert hello is not None
    value = ja4(hello)
    assert value.startswith("t10i") and value[8:10] == "00" and fingerprints.JA4_RE.match(value)


def test_the_shipped_table_names_known_devices() -> None:
    table = fingerprints.shipped()
    assert len(set(table.by_ja4.values())) > 50
    assert any(name.startswith("java-7") for name in table.by_ja4.values())
    assert any(name.startswith("ie-10-win-phone-8") for name in table.by_ja4.values())


def test_an_unknown_hello_is_named_by_its_ja4(monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprints.use(fingerprints.Table({}, {}))
    try:
        who = identify(HAND_MADE)
        assert who.name == f"unknown:{who.ja4}" and not who.known
        assert who.summary.endswith(f"ja4={who.ja4} family=unknown:{who.ja4}")
    finally:
        fingerprints.use(fingerprints.shipped())


def test_the_operators_names_win_and_are_used_at_once(tmp_path: Path) -> None:
    """A BlackBerry 10 has no public fingerprint: the first one that connects is logged as
    unknown:<ja4>, and one entry in the operator's file names it."""
    unknown = identify(HAND_MADE)
    assert not unknown.known
    names = tmp_path / "fingerprints.toml"
    names.write_text(f'[[family]]\nname = "bb10-native"\nja4 = ["{unknown.ja4}"]\n')
    fingerprints.use(load(names))
    try:
        assert identify(HAND_MADE).name == "bb10-native"
        assert HAND_MADE.family(identify(HAND_MADE).name) == "TLSv1.3/bb10-native"
    finally:
        fingerprints.use(fingerprints.shipped())
    assert identify(HAND_MADE).name == unknown.name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[family]]\nname = 'Bad Name'\nja4 = []\n", "name must match"),
        ("[[family]]\nname = 'x'\nja4 = ['nope']\n", "ja4 must be a list of JA4"),
        ("[[family]]\nname = 'x'\n", "needs ja4 or ja3"),
        ("[[family]\n", "not TOML"),
    ],
)
def test_a_bad_table_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(FingerprintTableError, match=message):
        parse_table(text, "mine.toml")


def test_a_missing_operator_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FingerprintTableError, match=r"nope\.toml: No such file"):
        load(tmp_path / "nope.toml")


def _fields(hello: ClientHello) -> dict[str, object]:
    return {name: getattr(hello, name) for name in hello.__dataclass_fields__}


def test_the_shipped_table_is_what_its_sources_give() -> None:
    """fingerprints.toml is generated (tools/fingerprint_table.py) from testssl.sh's hellos and our
    own captures (integration/data/own_hellos.json): a hand edit or a stale table fails here."""
    import importlib.util

    from . import testssl_data

    source = testssl_data.find()
    assert source is not None, f"apt-get install {testssl_data.PACKAGE} (make deps)"
    path = Path(__file__).resolve().parents[3] / "tools" / "fingerprint_table.py"
    spec = importlib.util.spec_from_file_location("fingerprint_table", path)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    shipped = Path(fingerprints.__file__).with_name("fingerprints.toml").read_text()
    assert shipped == generator.build(source), "run tools/fingerprint_table.py and commit the table"
