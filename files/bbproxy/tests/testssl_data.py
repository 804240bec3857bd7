"""testssl.sh's client simulations: the raw ClientHellos of ~160 real clients (Debian package
``testssl.sh``). Read by the device replay test (integration/test_device_hellos.py) and by the
fingerprint table generator (tools/fingerprint_table.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "testssl.sh"
# Debian 12's package (3.0.8) installs it in /etc/testssl; the second path is tried too, for other
# package layouts.
CANDIDATES = (
    Path("/etc/testssl/client-simulation.txt"),
    Path("/usr/share/testssl/etc/client-simulation.txt"),
)


def find() -> Path | None:
    """The client-simulation file, or None when testssl.sh is not installed."""
    return next((path for path in CANDIDATES if path.is_file()), None)


@dataclass(frozen=True)
class Device:
    name: str
    short: str
    hello: bytes


_ASSIGNMENT = re.compile(r'^\s*(\w+)\+=\((?:"(.*)"|(.*))\)\s*$')


def parse_client_simulation(text: str) -> list[Device]:
    """testssl.sh's client-simulation.txt: blocks of bash ``field+=("value")`` lines, one block
    per client, each starting with ``names+=``. Only name, short name and hello are kept."""
    blocks: list[dict[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            raise ValueError(f"line {number}: not a field+=(value) line: {line.strip()[:60]!r}")
        field, value = match.group(1), match.group(2) if match.group(2) is not None else match.group(3)
        if field == "names":
            blocks.append({})
        elif not blocks:
            raise ValueError(f"line {number}: {field} before the first names+=")
        blocks[-1][field] = value
    devices = []
    for block in blocks:
        if "handshakebytes" not in block or "short" not in block:
            raise ValueError(f"{block.get('names')!r}: no short name or handshakebytes")
        devices.append(Device(block["names"], block["short"], bytes.fromhex(block["handshakebytes"])))
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ValueError("a client name appears twice")
    return devices
