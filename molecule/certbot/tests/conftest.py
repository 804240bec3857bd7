"""The single-host scenarios' fixtures (molecule/shared/tests/fixtures.py) and pebble's roots (legacy.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "tests"))

from fixtures import host, proxy_config, scenario
from legacy import roots

__all__ = ["host", "proxy_config", "roots", "scenario"]
