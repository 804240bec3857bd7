"""Names, not hashes: which client a ClientHello comes from (issue 20).

A ClientHello is identified by two fingerprints:

* JA3 (MD5 of version, suites, extensions, groups and point formats in the client's order),
  which the proxy has always logged, and
* JA4 (FoxIO's JA4, TLS over TCP): version, SNI present or not, counts, ALPN, then SHA-256 prefixes
  of the *sorted* suites and the *sorted* extensions with the signature algorithms. GREASE is
  left out of both, and sorting makes JA4 stable for clients that shuffle their extension order
  (Chrome since 110), where every JA3 would be new.

A family name comes from ``fingerprints.toml`` (shipped with the package, made by
``tools/fingerprint_table.py`` from testssl.sh's client simulations and our own captures) and
from the operator's file (``fingerprints`` in bbproxy.toml), whose names win. A hello that
matches no entry is ``unknown:<ja4>``: one line of the operator's file names it (docs/census.md).
Pure functions over :class:`ClientHello`; the table is read once, at start and on reload.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from .hello_message import GREASE, ClientHello

_JA4_VERSIONS: Final = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2"}
_EMPTY_HASH: Final = "000000000000"
_SNI: Final = 0x0000
_ALPN: Final = 0x0010
NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9.+_-]{0,39}\Z")
JA4_RE: Final = re.compile(r"[tqd][0-9s]{2}[di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}\Z")
JA3_RE: Final = re.compile(r"[0-9a-f]{32}\Z")


class FingerprintTableError(ValueError):
    """A fingerprint table that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What the proxy knows about a ClientHello's sender."""

    ja3: str
    ja4: str
    name: str  # a family name from a table, or "unknown:<ja4>"
    summary: str  # the log line's tail: versions, suites, SNI, ALPN, groups, ja3, ja4, family

    @property
    def known(self) -> bool:
        return not self.name.startswith("unknown:")


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else _EMPTY_HASH


def _alpn_chars(alpn: tuple[str, ...]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    first = alpn[0]
    if first[0].isascii() and first[0].isalnum() and first[-1].isascii() and first[-1].isalnum():
        return first[0] + first[-1]
    raw = first.encode("ascii", "replace").hex()
    return raw[0] + raw[-1]


def ja4(hello: ClientHello) -> str:
    """The JA4 fingerprint (TLS over TCP) of a ClientHello."""
    versions = [v for v in hello.supported_versions if v not in GREASE]
    version = max(versions) if versions else hello.legacy_version
    ciphers = [c for c in hello.ciphers if c not in GREASE]
    extensions = [e for e in hello.extensions if e not in GREASE]
    head = (
        f"t{_JA4_VERSIONS.get(version, '00')}{'d' if _SNI in extensions else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{_alpn_chars(hello.alpn)}"
    )
    suites = ",".join(sorted(f"{c:04x}" for c in ciphers))
    listed = ",".join(sorted(f"{e:04x}" for e in extensions if e not in (_SNI, _ALPN)))
    if listed and hello.sigalgs:
        listed += "_" + ",".join(f"{s:04x}" for s in hello.sigalgs if s not in GREASE)
    return f"{head}_{_hash12(suites)}_{_hash12(listed)}"


@dataclass(frozen=True, slots=True)
class Table:
    """Family names by JA4 and by JA3 (JA3 for entries that have no JA4, e.g. from logs)."""

    by_ja4: dict[str, str]
    by_ja3: dict[str, str]

    def name(self, ja4_value: str, ja3_value: str) -> str | None:
        return self.by_ja4.get(ja4_value) or self.by_ja3.get(ja3_value)


def parse_table(text: str, source: str) -> Table:
    """A fingerprint table: ``[[family]]`` entries with ``name`` and ``ja4`` and/or ``ja3`` lists."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FingerprintTableError(f"{source}: not TOML: {exc}") from None
    by_ja4: dict[str, str] = {}
    by_ja3: dict[str, str] = {}
    for index, entry in enumerate(data.get("family", ()), 1):
        where = f"{source}: family #{index}"
        if not isinstance(entry, dict):
            raise FingerprintTableError(f"{where}: not a table")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise FingerprintTableError(f"{where}: name must match {NAME_RE.pattern} (got {name!r})")
        where = f"{source}: family {name!r}"
        for key, pattern, into in (("ja4", JA4_RE, by_ja4), ("ja3", JA3_RE, by_ja3)):
            values = entry.get(key, [])
            match = pattern.match
            if not isinstance(values, list) or not all(isinstance(v, str) and match(v) for v in values):
                raise FingerprintTableError(f"{where}: {key} must be a list of {key.upper()} fingerprints")
            for value in values:
                into[value] = name
        if not entry.get("ja4") and not entry.get("ja3"):
            raise FingerprintTableError(f"{where}: needs ja4 or ja3")
    return Table(by_ja4, by_ja3)


@functools.cache
def shipped() -> Table:
    """The table that comes with the package."""
    text = resources.files("bbproxy").joinpath("fingerprints.toml").read_text(encoding="utf-8")
    return parse_table(text, "bbproxy/fingerprints.toml")


def load(operator_file: Path | None) -> Table:
    """The shipped table with the operator's entries on top (their names win)."""
    table = shipped()
    if operator_file is None:
        return table
    try:
        text = operator_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise FingerprintTableError(f"{operator_file}: {exc.strerror or exc}") from None
    extra = parse_table(text, str(operator_file))
    return Table({**table.by_ja4, **extra.by_ja4}, {**table.by_ja3, **extra.by_ja3})


_active: Table | None = None


def use(table: Table) -> None:
    """Make ``table`` the one :func:`identify` names with (at start and on reload)."""
    global _active
    _active = table
    identify.cache_clear()


@functools.lru_cache(maxsize=256)
def identify(hello: ClientHello) -> Identity:
    """JA3, JA4, family name and log summary of a ClientHello, cached by value.

    A device sends the same hello every time (random and session id are not part of
    :class:`ClientHello`), so each kind is hashed and formatted once. Bounded: a client minting
    new hellos only evicts entries.
    """
    ja3 = hello.ja3()
    ja4_value = ja4(hello)
    table = _active if _active is not None else shipped()
    name = table.name(ja4_value, ja3) or f"unknown:{ja4_value}"
    return Identity(ja3, ja4_value, name, f"{hello.summary(ja3)} ja4={ja4_value} family={name}")
