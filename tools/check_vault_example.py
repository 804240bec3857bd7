#!/usr/bin/env python3
"""The example production inventory's vault pattern still works (make lint-vault).

inventory/production/group_vars/bbproxy/vault.yml is an example encrypted with the public password
in inventory/example-vault-password. This decrypts it the way an operator's run does
(`ansible-inventory --vault-password-file`) and checks, one line per problem:
  * vault.yml is encrypted (an ansible-vault file, not YAML in clear);
  * every password in bbproxy_prosody_users is a reference to a vault_* variable, and
  * each such variable comes out of the decrypted vault.yml non-empty;
  * without the password the inventory does not load (nothing is readable in clear).

    .venv/bin/python tools/check_vault_example.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INVENTORY = REPO / "inventory" / "production"
VAULT_FILE = INVENTORY / "group_vars" / "bbproxy" / "vault.yml"
PASSWORD_FILE = REPO / "inventory" / "example-vault-password"
ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")
VAULT_REFERENCE = re.compile(r"^\{\{\s*(vault_[a-z0-9_]+)\s*\}\}$")


def inventory(*extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(INVENTORY), "--list", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def problems() -> list[str]:
    found = []
    if not VAULT_FILE.read_text(encoding="utf-8").startswith("$ANSIBLE_VAULT;"):
        found.append(f"{VAULT_FILE.relative_to(REPO)} is not an ansible-vault encrypted file")
    if inventory().returncode == 0:
        found.append(f"{INVENTORY.relative_to(REPO)} loads without the vault password: a secret is in clear")
    done = inventory("--vault-password-file", str(PASSWORD_FILE))
    if done.returncode != 0:
        return [*found, f"ansible-inventory with the example vault password failed:\n{done.stderr}"]
    hostvars = json.loads(done.stdout)["_meta"]["hostvars"]
    if not hostvars:
        found.append(f"{INVENTORY.relative_to(REPO)} has no hosts")
    for host, variables in sorted(hostvars.items()):
        users = variables.get("bbproxy_prosody_users") or []
        if not users:
            found.append(f"{host}: bbproxy_prosody_users is empty: the example shows no vaulted password")
        for user in users:
            reference = VAULT_REFERENCE.match(str(user.get("password", "")))
            who = f"{host}: {user.get('name')}@{user.get('domain')}"
            if not reference:
                found.append(f"{who}: the password is not a '{{{{ vault_... }}}}' reference")
            elif not str(variables.get(reference.group(1), "")):
                found.append(f"{who}: {reference.group(1)} is not in the decrypted vault")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print("vault example: encrypted, decrypts with the example password, every account password comes from it")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
