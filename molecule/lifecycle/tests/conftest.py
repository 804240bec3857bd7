"""The single-host scenarios' fixtures (molecule/shared/tests/fixtures.py), for the lifecycle checks."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "tests"))

from fixtures import host, login_check, proxy_config, scenario, served_cafile

__all__ = ["host", "login_check", "proxy_config", "scenario", "served_cafile"]
