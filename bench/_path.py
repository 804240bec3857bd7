"""``import _path`` first in a bench script: files/bbproxy (the test kit ``tests.kit`` and the
torture core ``tests.torture``) and files/bbproxy/src (``bbproxy``, this checkout's, before any
installed copy) go first on sys.path. The one way bench/ imports code from files/bbproxy."""

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "files" / "bbproxy"
for _entry in (PACKAGE_DIR / "src", PACKAGE_DIR):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))
