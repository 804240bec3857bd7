#!/usr/bin/env bash
# Build a systemd Debian image from the Debian mirror (no registry here), cached by tag.
# usage: molecule/image/build.sh [bookworm|trixie] ; prints the image name.
# The image is labelled with this script's hash: editing the script rebuilds it on the next run.
set -euo pipefail
suite=${1:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}
image="localhost/bbproxy-debian:$suite"
recipe=$(sha256sum "$0" | cut -c1-16)
if podman image exists "$image" &&
  [ "$(podman image inspect --format '{{ index .Labels "bbproxy.recipe" }}' "$image")" = "$recipe" ]; then
  echo "$image"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install debootstrap" >&2; exit 1; }
rootfs=$(mktemp -d /var/tmp/bbproxy-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "building $image with debootstrap (about a minute)..." >&2
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,python3,dbus,iproute2,procps,openssh-server,ca-certificates \
  "$suite" "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
# A container has no console to log in on and no hardware clock to sync.
rm -f "$rootfs"/etc/systemd/system/getty.target.wants/* 2>/dev/null || true
# Nor can it load kernel modules: on trixie this unit fails and leaves systemd "degraded".
ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-modules-load.service"
echo "bbproxy-test" > "$rootfs/etc/hostname"
tar -C "$rootfs" -c . | podman import \
  --change 'CMD ["/lib/systemd/systemd"]' --change 'STOPSIGNAL=SIGRTMIN+3' \
  --change "LABEL bbproxy.recipe=$recipe" - "$image" >&2
echo "$image"
