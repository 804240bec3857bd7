"""The XML syntax of one pre-TLS token, for :mod:`bbproxy.framing` (sans-IO, no XML library).

A start tag with the namespaces in scope and its attribute values unescaped, the XML
declaration, and the five predefined entities and character references: nothing else is
expanded, so no entity or DTD is ever read. Every error is a :class:`Malformed` carrying the
RFC 6120 condition the stream ends with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

NAME: Final = r"[^\s/<>=\"'&]+"  # an element or attribute name, as far as the tag regexes go
_ATTR_RE: Final = re.compile(r"\s+(" + NAME + r")\s*=\s*(\"[^\"<]*\"|'[^'<]*')")
_START_TAG_RE: Final = re.compile(
    r"<(" + NAME + r")((?:\s+" + NAME + r"\s*=\s*(?:\"[^\"<]*\"|'[^'<]*'))*)\s*(/?)>\Z"
)
_XML_DECL_RE: Final = re.compile(r"<\?xml((?:\s+[A-Za-z]+\s*=\s*(?:\"[^\"<]*\"|'[^'<]*'))*)\s*\?>\Z")
_QNAME_RE: Final = re.compile(r"(?:([A-Za-z_][\w.\-]*):)?([A-Za-z_][\w.\-]*)\Z")
# Characters XML 1.0 forbids (§2.2); surrogates cannot survive strict UTF-8 decoding.
BAD_CHARS_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_REFERENCE_RE: Final = re.compile(r"&(?:(lt|gt|amp|quot|apos)|#([0-9]{1,7})|#x([0-9A-Fa-f]{1,6}));")
_PREDEFINED: Final = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


class Malformed(Exception):
    """Carries a stream error (an RFC 6120 condition and a text) out of the token handlers."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(condition, text)
        self.condition = condition
        self.text = text


@dataclass(frozen=True, slots=True)
class Tag:
    qname: str
    prefix: str | None
    local: str
    attrs: dict[str, str]
    namespaces: dict[str | None, str]
    empty: bool


def check_xml_declaration(text: str) -> None:
    """``<?xml ...?>``: version 1.x, and UTF-8 if an encoding is named."""
    match = _XML_DECL_RE.match(text)
    if match is None:
        raise Malformed("not-well-formed", "malformed XML declaration")
    attrs = parse_attributes(match.group(1))
    if "version" not in attrs or not attrs["version"].startswith("1."):
        raise Malformed("not-well-formed", "XML declaration needs version 1.x")
    encoding = attrs.get("encoding")
    if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
        raise Malformed("unsupported-encoding", "only UTF-8 is allowed")


def parse_attributes(raw: str) -> dict[str, str]:
    """The attributes of a tag, values unescaped; a duplicate is an error."""
    attrs: dict[str, str] = {}
    for match in _ATTR_RE.finditer(raw):
        name, quoted = match.group(1), match.group(2)
        if name in attrs:
            raise Malformed("not-well-formed", "duplicate attribute")
        attrs[name] = unescape(quoted[1:-1])
    return attrs


def parse_start_tag(text: str, inherited: Mapping[str | None, str]) -> Tag:
    """A start tag with the namespaces in scope: ``inherited`` plus its own declarations."""
    match = _START_TAG_RE.match(text)
    if match is None:
        raise Malformed("not-well-formed", "malformed tag")
    qname, raw_attrs, slash = match.group(1), match.group(2), match.group(3)
    attrs = parse_attributes(raw_attrs)
    namespaces = dict(inherited)
    for name, value in attrs.items():
        if name == "xmlns":
            namespaces[None] = value
        elif name.startswith("xmlns:"):
            prefix = name[6:]
            if not value or prefix in ("xml", "xmlns"):
                raise Malformed("not-well-formed", "invalid namespace declaration")
            namespaces[prefix] = value
    name_match = _QNAME_RE.match(qname)
    if name_match is None:
        raise Malformed("not-well-formed", "invalid element name")
    prefix, local = name_match.group(1), name_match.group(2)
    if prefix is not None and prefix not in namespaces:
        raise Malformed("not-well-formed", "undeclared namespace prefix")
    for name in attrs:
        attr_prefix, _, _ = name.rpartition(":")
        if attr_prefix and attr_prefix != "xmlns" and attr_prefix not in namespaces:
            raise Malformed("not-well-formed", "undeclared namespace prefix")
    return Tag(qname, prefix, local, attrs, namespaces, empty=bool(slash))


def unescape(value: str) -> str:
    """Resolve the five predefined entities and character references; refuse all others."""
    if "&" not in value:
        return value
    out: list[str] = []
    pos = 0
    for match in _REFERENCE_RE.finditer(value):
        if "&" in value[pos : match.start()]:
            break
        out.append(value[pos : match.start()])
        named, decimal, hexadecimal = match.groups()
        if named is not None:
            out.append(_PREDEFINED[named])
        else:
            code = int(decimal) if decimal is not None else int(hexadecimal, 16)
            char = chr(code) if code <= 0x10FFFF else "\x00"
            if BAD_CHARS_RE.match(char) or 0xD800 <= code <= 0xDFFF:
                raise Malformed("not-well-formed", "character reference to a forbidden character")
            out.append(char)
        pos = match.end()
    if "&" in value[pos:]:
        raise Malformed("not-well-formed", "undefined entity reference")
    out.append(value[pos:])
    return "".join(out)
