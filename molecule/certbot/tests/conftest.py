"""The single-host scenarios' fixtures (molecule/shared/tests/fixtures.py), for the certbot checks."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "tests"))

from fixtures import host, proxy_config, scenario

__all__ = ["host", "proxy_config", "scenario"]
