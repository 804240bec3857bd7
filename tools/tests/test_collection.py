"""The repository as the Ansible collection bbproxy.xmpp (galaxy.yml): built, installed, versioned.

Builds the collection with the venv's ansible-galaxy, checks what the tarball holds, installs it
offline from the tarball and from a git checkout (git+file:// of a temporary repository holding
the working tree), and checks that the installed role finds the proxy's source inside itself
(its files/bbproxy symlink) and that the collection's playbook runs that role. No network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GALAXY = str(BIN / "ansible-galaxy")
RELEASED = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", re.MULTILINE)


def galaxy_version() -> str:
    return str(yaml.safe_load((REPO / "galaxy.yml").read_text())["version"])


def package_version() -> str:
    init = (REPO / "files/bbproxy/src/bbproxy/__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', init, re.MULTILINE)
    assert match, "no __version__ in files/bbproxy/src/bbproxy/__init__.py"
    return match.group(1)


def ansible_env(collections: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_NOCOLOR": "1",
    }


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from the checkout itself, with its .venv, tests and molecule/ there to be left out."""
    out = tmp_path_factory.mktemp("build")
    run([GALAXY, "collection", "build", "--output-path", str(out), str(REPO)], cwd=REPO)
    (built,) = out.glob("bbproxy-xmpp-*.tar.gz")
    return built


def test_tarball_holds_the_role_playbooks_and_proxy_source_only(tarball: Path) -> None:
    assert tarball.name == f"bbproxy-xmpp-{galaxy_version()}.tar.gz"
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for needed in (
        "MANIFEST.json", "meta/runtime.yml", "LICENSE", "README.md", "CHANGELOG.md",
        "roles/bbproxy/tasks/main.yml", "roles/bbproxy/tasks/wheel_cache.yml",
        "roles/bbproxy/defaults/main.yml", "roles/bbproxy/meta/argument_specs.yml",
        "roles/bbproxy/files/requirements-uvloop.txt",
        "playbooks/site.yml", "playbooks/bbproxy.yml",
        "files/bbproxy/pyproject.toml", "files/bbproxy/README.md",
        "files/bbproxy/src/bbproxy/__init__.py", "files/bbproxy/src/bbproxy/session.py",
    ):
        assert needed in members, f"{needed} missing from {tarball.name}"
    link = members["roles/bbproxy/files/bbproxy"]
    assert link.issym() and link.linkname == "../../../files/bbproxy"
    unwanted = re.compile(
        r"(^|/)(\.git|\.venv|__pycache__|\.pytest_cache|\.mypy_cache|\.ruff_cache|\.molecule-state)(/|$)"
        r"|^(molecule|bench|tools|docs|inventory|scripts|files/bbproxy/tests|roles/bbproxy/tests)(/|$)"
        r"|\.pyc$"
    )
    leaked = sorted(name for name in members if unwanted.search(name))
    assert not leaked, f"{tarball.name} holds {leaked[:10]}"


def check_installed(collections: Path) -> None:
    """The installed role builds the proxy's wheel from its own files/bbproxy; the playbook runs it."""
    root = collections / "ansible_collections/bbproxy/xmpp"
    manifest = yaml.safe_load((root / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["version"] == galaxy_version()
    source = root / "roles/bbproxy/files/bbproxy"
    assert source.is_symlink()
    assert source.resolve() == (root / "files/bbproxy").resolve()
    # What roles/bbproxy/tasks/proxy.yml does with bbproxy_package_source, here with no index.
    wheels = collections.parent / f"wheels-{collections.name}"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(wheels), str(source)])
    assert [w.name for w in wheels.glob("*.whl")] == [f"bbproxy-{package_version()}-py3-none-any.whl"]
    # The FQCN playbook resolves, and its role is the collection's, not the checkout's roles/
    # (ansible.cfg's roles_path still points there).
    inventory = collections.parent / "inventory.ini"
    inventory.write_text("[bbproxy]\ntarget ansible_connection=local\n")
    env = ansible_env(collections)
    playbook = [str(BIN / "ansible-playbook"), "-i", str(inventory), "bbproxy.xmpp.site"]
    run([*playbook, "--syntax-check"], env=env, cwd=REPO)
    tasks = run([*playbook, "--list-tasks"], env=env, cwd=REPO).stdout
    assert f"playbook: {root}/playbooks/site.yml" in tasks
    assert "bbproxy.xmpp.bbproxy : Build the wheel from bbproxy_package_source" in tasks


def test_install_from_tarball_offline(tarball: Path, tmp_path: Path) -> None:
    collections = tmp_path / "collections"
    run([GALAXY, "collection", "install", str(tarball), "-p", str(collections), "--offline"],
        env=ansible_env(collections))
    check_installed(collections)


def test_install_from_git_checkout_offline(tmp_path: Path) -> None:
    """git+file:// of a repository holding the working tree (tracked and new files, as git sees them)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        src, dst = REPO / name, repo / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-C", str(repo)]
    run([*git, "init", "-q"])
    run([*git, "add", "-A"])
    run([*git, "commit", "-q", "-m", "working tree"])
    collections = tmp_path / "collections"
    run([GALAXY, "collection", "install", f"git+file://{repo}", "-p", str(collections), "--offline"],
        env=ansible_env(collections))
    check_installed(collections)
    assert not (collections / "ansible_collections/bbproxy/xmpp/molecule").exists()


def test_versions_agree() -> None:
    """galaxy.yml == __version__ == the newest released CHANGELOG section (CHANGELOG.md, "Versions")."""
    changelog = (REPO / "CHANGELOG.md").read_text()
    released = RELEASED.findall(changelog)
    assert released, "CHANGELOG.md has no released section"
    assert galaxy_version() == package_version() == released[0]
    assert changelog.index("## [Unreleased]") < changelog.index(f"## [{released[0]}]")


def test_a_release_tag_on_this_commit_names_its_version() -> None:
    """Release commits are tagged vX.Y.Z; any such tag on HEAD must be the version it builds."""
    tags = run(["git", "tag", "--points-at", "HEAD"], cwd=REPO).stdout.split()
    for tag in tags:
        if re.fullmatch(r"v\d+\.\d+\.\d+", tag):
            assert tag == f"v{galaxy_version()}", f"tag {tag} on a commit that builds {galaxy_version()}"
