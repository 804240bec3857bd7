"""The role's controller wheel cache (roles/bbproxy/tasks/wheel_cache.yml) with no index.

Runs the task file for real (ansible-playbook on localhost, the controller side only: it never
touches a target) with PIP_INDEX_URL pointing at a closed loopback port, as on an air-gapped
controller or during a PyPI outage. The wheel is a tiny one built here and pinned by its sha256
in a lock written here, so the test needs no network; pip's hash checking is the real one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Port 9 (discard) on loopback: nothing listens, every index request is refused at once.
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"

PLAYBOOK = """\
- name: Take a wheel from the controller's wheel cache
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the role's wheel_cache.yml, then clean up as optional_wheel.yml does
      block:
        - name: Run the role's wheel_cache.yml
          ansible.builtin.include_role:
            name: bbproxy
            tasks_from: wheel_cache.yml
          vars:
            __bbproxy_cache_name: bbproxy-cache-probe
            __bbproxy_cache_lock: "{lock}"
            __bbproxy_cache_platform: []
            bbproxy_wheel_cache_dir: "{cache}"
        - name: Report the wheel taken
          ansible.builtin.debug:
            msg: "TAKEN {{{{ __bbproxy_cache_found.files[0].path | basename }}}}"
      always:
        - name: Remove the temporary directory
          ansible.builtin.file:
            path: "{{{{ __bbproxy_cache_tmp.path }}}}"
            state: absent
          when: __bbproxy_cache_tmp.path is defined
"""


@pytest.fixture(scope="module")
def probe_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pure-Python wheel nobody publishes, built offline with the venv's hatchling."""
    src = tmp_path_factory.mktemp("probe-src")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "bbproxy-cache-probe"\nversion = "1.0"\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["bbproxy_cache_probe"]\n'
    )
    (src / "bbproxy_cache_probe").mkdir()
    (src / "bbproxy_cache_probe" / "__init__.py").write_text("")
    out = tmp_path_factory.mktemp("probe-wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(out), str(src)],
        check=True,
    )
    (wheel,) = out.glob("bbproxy_cache_probe-1.0-*.whl")
    return wheel


def write_lock(path: Path, wheel: Path) -> Path:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    path.write_text(f"bbproxy-cache-probe==1.0 --hash=sha256:{digest}\n")
    return path


def run_cache_step(tmp_path: Path, cache: Path, lock: Path) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "cache.yml"
    playbook.write_text(PLAYBOOK.format(lock=lock, cache=cache))
    env = {
        **os.environ,
        "PIP_INDEX_URL": UNREACHABLE_INDEX,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "5",
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
    }
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook),
         "-e", f"ansible_python_interpreter={sys.executable}"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_warm_cache_needs_no_index(tmp_path: Path, probe_wheel: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(probe_wheel, cache)
    lock = write_lock(tmp_path / "lock.txt", probe_wheel)
    result = run_cache_step(tmp_path, cache, lock)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"TAKEN {probe_wheel.name}" in result.stdout
    # Taken from the cache, not downloaded: the download task never ran.
    assert "Download the wheel the lock pins into the cache" not in result.stdout


def test_cold_cache_without_index_names_the_air_gapped_path(tmp_path: Path, probe_wheel: Path) -> None:
    cache = tmp_path / "cache"
    lock = write_lock(tmp_path / "lock.txt", probe_wheel)
    result = run_cache_step(tmp_path, cache, lock)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Air-gapped controller: fill the cache on a connected machine" in out, out
    assert "docs/deploying.md" in out
    assert str(cache) in out


def test_cached_wheel_with_another_hash_is_refused(tmp_path: Path, probe_wheel: Path) -> None:
    """The cache is not trusted: a wheel whose sha256 is not the lock's is not taken."""
    cache = tmp_path / "cache"
    cache.mkdir()
    tampered = cache / probe_wheel.name
    tampered.write_bytes(probe_wheel.read_bytes() + b"\0")
    lock = write_lock(tmp_path / "lock.txt", probe_wheel)
    result = run_cache_step(tmp_path, cache, lock)
    assert result.returncode != 0
    assert "TAKEN" not in result.stdout
    assert "Air-gapped controller" in result.stdout + result.stderr
