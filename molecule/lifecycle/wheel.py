#!/usr/bin/env python3
"""Build a bbproxy wheel from this checkout that carries another version number.

The lifecycle scenario upgrades from an "older" build and to a "newer" one without a release
history to draw them from: each is today's source with only `__version__` changed, so what the
checks see differ in is the version the running proxy reports at start-up.

    python molecule/lifecycle/wheel.py 0.1.0.dev1 DEST_DIR     # prints the wheel's path
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "files" / "bbproxy"
VERSION_LINE = re.compile(r'^__version__ = "[^"]*"$', re.MULTILINE)


def build(version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bbproxy-wheel-") as tmp:
        tree = Path(tmp) / "bbproxy"
        shutil.copytree(SOURCE, tree, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info", ".*"))
        init = tree / "src" / "bbproxy" / "__init__.py"
        text, count = VERSION_LINE.subn(f'__version__ = "{version}"', init.read_text())
        if count != 1:
            sys.exit(f"{init}: expected one __version__ line, found {count}")
        init.write_text(text)
        out = Path(tmp) / "out"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check"]
        if importlib.util.find_spec("hatchling") is not None:  # as the role does: no build isolation if it can
            command.append("--no-build-isolation")
        subprocess.run([*command, "--wheel-dir", str(out), str(tree)], check=True, timeout=300)
        (built,) = out.glob("bbproxy-*.whl")
        target = dest / built.name
        shutil.copy2(built, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", help="PEP 440 version for the wheel, e.g. 0.1.0.dev1")
    parser.add_argument("dest", type=Path, help="directory the wheel is written to")
    args = parser.parse_args()
    print(build(args.version, args.dest))


if __name__ == "__main__":
    main()
