#!/usr/bin/env bash
# Molecule's dependency step of the default and trixie scenarios: install the collection
# bbproxy.xmpp (galaxy.yml) into the scenario's own collections path, offline, the way an operator
# would, so converge runs the installed collection's playbook (bbproxy.xmpp.site) and its role builds
# the proxy from the installed files/bbproxy, not from this checkout's roles/.
#   install_collection.sh tarball DEST   ansible-galaxy collection build, then install the tarball
#   install_collection.sh git DEST       install git+file:// of a git repository holding this
#                                        checkout's working tree (tracked and new files)
set -euo pipefail

mode=${1:?usage: install_collection.sh tarball|git DEST}
dest=${2:?usage: install_collection.sh tarball|git DEST}
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/bbproxy-collection.XXXXXX")
trap 'rm -rf "$work"' EXIT

# DEST is the scenario's own: emptied, so a run starts without an earlier run's collection or
# converge_collection.yml's marker (DEST/bbproxy-converged).
rm -rf "$dest"
mkdir -p "$dest"
case $mode in
  tarball)
    ansible-galaxy collection build --output-path "$work" "$repo"
    source=$(echo "$work"/bbproxy-xmpp-*.tar.gz)
    ;;
  git)
    mkdir "$work/repo"
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
      | (cd "$repo" && tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$work/repo"
    git -C "$work/repo" init -q
    git -C "$work/repo" add -A
    git -C "$work/repo" -c user.name=molecule -c user.email=molecule@localhost commit -q -m "working tree"
    source="git+file://$work/repo"
    ;;
  *)
    echo "install_collection.sh: unknown mode '$mode' (tarball or git)" >&2
    exit 2
    ;;
esac
ansible-galaxy collection install "$source" -p "$dest" --offline --force

installed=$dest/ansible_collections/bbproxy/xmpp
# The role's package source must resolve inside the installed collection.
source_dir=$(readlink -f "$installed/roles/bbproxy/files/bbproxy")
if [ "$source_dir" != "$(readlink -f "$installed/files/bbproxy")" ] || [ ! -f "$source_dir/pyproject.toml" ]; then
  echo "install_collection.sh: $installed/roles/bbproxy/files/bbproxy does not lead to the collection's files/bbproxy" >&2
  exit 1
fi
echo "install_collection.sh: bbproxy.xmpp ($mode) installed in $installed"
